"""Buffers that stall a copy at chosen pages (userfaultfd, missing mode), so a test
can change a file at an exact point in the middle of one copy.

A copy that touches a stalled page sleeps in the kernel until a helper thread
has run that page's action and filled the page; the copy must run without the
GIL (a copy of at least mcsafe's GIL_RELEASE_BYTES) for the thread to run.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import mmap
import os
import select
import struct
import threading
from typing import Callable, Iterator

from mcsafe import inject

PAGE = mmap.PAGESIZE
UFFD_EVENT_PAGEFAULT = 0x12
UFFDIO_COPY = inject._iowr(0x03, 40)   # { u64 dst, src, len, mode; s64 copy; }


def unavailable() -> str | None:
    """Why stalled buffers cannot be made here (userfaultfd refused), or None."""
    fd = inject._libc.syscall(inject.SYS_userfaultfd, os.O_CLOEXEC)
    if fd < 0:
        return f"userfaultfd() refused here: {os.strerror(ctypes.get_errno())}"
    os.close(fd)
    return None


@contextlib.contextmanager
def stalled_buffer(npages: int, contents: bytes, stalls: dict[int, Callable[[], object]]
                   ) -> Iterator[memoryview]:
    """A writable buffer of npages holding contents; the first touch of page p (a
    key of stalls) waits for stalls[p]() to run, then sees its bytes of contents."""
    assert len(contents) == npages * PAGE
    address = inject._map(npages)
    view = inject._view(address, npages * PAGE)
    fd = inject._libc.syscall(inject.SYS_userfaultfd, os.O_CLOEXEC | os.O_NONBLOCK)
    assert fd >= 0, f"userfaultfd: {os.strerror(ctypes.get_errno())}"
    source = ctypes.create_string_buffer(contents, len(contents))
    errors: list[BaseException] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            if not select.select([fd], [], [], 0.05)[0]:
                continue
            try:
                msg = os.read(fd, 32)
            except BlockingIOError:
                continue
            event, = struct.unpack_from("<B", msg)
            page = (struct.unpack_from("<Q", msg, 16)[0] - address) // PAGE
            try:
                assert event == UFFD_EVENT_PAGEFAULT and page in stalls, (event, page)
                stalls[page]()
            except BaseException as exc:        # report it; the copy must not hang
                errors.append(exc)
            at = page * PAGE
            fcntl.ioctl(fd, UFFDIO_COPY, bytearray(struct.pack(
                "<QQQQq", address + at, ctypes.addressof(source) + at, PAGE, 0, 0)))

    try:
        for p in range(npages):                 # populated now: never stalls
            if p not in stalls:
                view[p * PAGE:(p + 1) * PAGE] = contents[p * PAGE:(p + 1) * PAGE]
        fcntl.ioctl(fd, inject.UFFDIO_API, bytearray(struct.pack("<QQQ", inject.UFFD_API,
                                                                 0, 0)))
        fcntl.ioctl(fd, inject.UFFDIO_REGISTER, bytearray(struct.pack(
            "<QQQQ", address, npages * PAGE, inject.UFFDIO_REGISTER_MODE_MISSING, 0)))
        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            yield view
        finally:
            stop.set()
            thread.join()
        if errors:
            raise errors[0]
    finally:
        view.release()
        os.close(fd)
        inject._libc.munmap(address, npages * PAGE)
