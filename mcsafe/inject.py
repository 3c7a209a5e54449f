"""Fault injection through real kernel paths, for tests, benchmarks and demos.

Each method gives a :class:`Region`: a writable mapping of ``npages`` pages in
which the chosen pages fault when touched, cleaned up when the ``with`` block
ends. The good pages hold a known pattern (:func:`pattern`).

============  =========================================================  ============
method        how                                                        signal
============  =========================================================  ============
``uffd``      userfaultfd ``UFFDIO_POISON`` on anonymous memory: the      SIGBUS
              kernel's hwpoison path (``BUS_MCEERR_AR`` with
              ``CONFIG_MEMORY_FAILURE``, else ``BUS_ADRERR``)
``madvise``   ``madvise(MADV_HWPOISON)``: really poisons the page          SIGBUS
              (root, ``CONFIG_MEMORY_FAILURE``; the page frame is lost)
``truncate``  a shared file mapping, the file cut short after mapping:     SIGBUS
              every page past the new end faults (a suffix only)
``mprotect``  ``mprotect(PROT_NONE)``                                      SIGSEGV
============  =========================================================  ============

:func:`available` says which work on this machine, and why the others do not,
from a plain read of a bad page in a child process (never mcsafe's copy).
Nothing else here touches a bad page: only :func:`mcsafe.copy` may.

Those poison one mapping in one process. :func:`failing_file` makes a *file*
whose chosen byte ranges fail for every reader and every path, as a failing
disk's do (FUSE: ``read(2)`` gives EIO, a mapped read SIGBUS, in any process),
and that can grow, shrink and be rewritten while it is in use.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import mmap
import os
import signal
import struct
import tempfile
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

from ._libc import MAP_FAILED
from ._libc import libc as _libc

if TYPE_CHECKING:
    from ._failfs import FailingFile

PAGE = mmap.PAGESIZE
METHODS = ("uffd", "madvise", "truncate", "mprotect")

BUS_ADRERR, BUS_MCEERR_AR = 2, 4
SEGV_ACCERR = 2

MAP_SHARED, MAP_PRIVATE, MAP_ANONYMOUS = 0x01, 0x02, 0x20
MADV_HWPOISON = 100
SYS_userfaultfd = 323            # x86-64
if os.uname().machine == "aarch64":
    SYS_userfaultfd = 282

# Debian's headers predate UFFDIO_POISON (Linux 6.6): the ABI, spelled out.
UFFD_API = 0xAA
UFFD_FEATURE_SIGBUS = 1 << 7     # a missing page raises SIGBUS instead of waiting: no hang
UFFD_FEATURE_POISON = 1 << 14
UFFDIO_REGISTER_MODE_MISSING = 1


def _iowr(nr: int, size: int) -> int:
    return (3 << 30) | (size << 16) | (UFFD_API << 8) | nr


UFFDIO_API = _iowr(0x3F, 24)        # struct uffdio_api { u64 api, features, ioctls; }
UFFDIO_REGISTER = _iowr(0x00, 32)   # { struct uffdio_range range; u64 mode, ioctls; }
UFFDIO_POISON = _iowr(0x08, 32)     # { struct uffdio_range range; u64 mode; s64 updated; }


def page_ranges(pages: Sequence[int]) -> list[tuple[int, int]]:
    """Byte ranges [start, end) covering the given page numbers, merged and sorted."""
    out: list[tuple[int, int]] = []
    for p in sorted(set(pages)):
        if out and out[-1][1] == p * PAGE:
            out[-1] = (out[-1][0], (p + 1) * PAGE)
        else:
            out.append((p * PAGE, (p + 1) * PAGE))
    return out


class InjectionUnavailable(OSError):
    """This machine cannot inject faults that way; the message says why."""


def pattern(size: int, seed: int = 0) -> bytes:
    """The bytes a region's good pages hold: a 251-periodic ramp, never page-periodic."""
    ramp = bytes((i * 7 + seed) % 251 for i in range(251))
    return (ramp * (size // 251 + 1))[:size]


@dataclass
class Region:
    """A mapping whose ``bad_pages`` fault when touched."""

    method: str
    address: int
    npages: int
    bad_pages: list[int]
    signal: int                       #: the signal a touch of a bad page raises
    codes: tuple[int, ...]            #: the si_code values it may carry
    buffer: memoryview = field(repr=False)
    _cleanup: list[Callable[[], None]] = field(default_factory=list, repr=False)

    @property
    def size(self) -> int:
        return self.npages * PAGE

    def bad_ranges(self) -> list[tuple[int, int]]:
        """Bad byte ranges [start, end), merged and sorted."""
        return page_ranges(self.bad_pages)

    def first_bad(self, offset: int) -> int | None:
        """Offset of the first bad byte at or after offset."""
        for start, end in self.bad_ranges():
            if end > offset:
                return max(start, offset)
        return None

    def close(self) -> None:
        self.buffer.release()
        while self._cleanup:
            self._cleanup.pop()()


def _check(result: int, what: str) -> int:
    if result == -1 or (what == "mmap" and result == MAP_FAILED):
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def _map(npages: int, flags: int = MAP_PRIVATE | MAP_ANONYMOUS, fd: int = -1) -> int:
    return _check(_libc.mmap(None, npages * PAGE, mmap.PROT_READ | mmap.PROT_WRITE, flags, fd,
                             0), "mmap")


def _view(address: int, size: int) -> memoryview:
    return memoryview((ctypes.c_ubyte * size).from_address(address)).cast("B")


def _fill_good(address: int, npages: int, bad: set[int], seed: int) -> None:
    data = pattern(npages * PAGE, seed)
    for p in range(npages):
        if p not in bad:
            ctypes.memmove(address + p * PAGE, data[p * PAGE:(p + 1) * PAGE], PAGE)


def _pages(npages: int, bad_pages: Sequence[int]) -> list[int]:
    bad = sorted(set(bad_pages))
    if npages <= 0 or any(not 0 <= p < npages for p in bad):
        raise ValueError(f"bad pages {bad} must lie in 0..{npages - 1}")
    return bad


def _anonymous(method: str, npages: int, bad: list[int], seed: int) -> Region:
    address = _map(npages)
    region = Region(method, address, npages, bad, signal.SIGBUS, (BUS_ADRERR, BUS_MCEERR_AR),
                    _view(address, npages * PAGE))
    region._cleanup.append(lambda: _libc.munmap(address, npages * PAGE))
    try:
        _fill_good(address, npages, set(bad), seed)
        if method == "uffd":
            _uffd_poison(region)
        elif method == "mprotect":
            region.signal, region.codes = signal.SIGSEGV, (SEGV_ACCERR,)
            for p in bad:
                _check(_libc.mprotect(address + p * PAGE, PAGE, 0), "mprotect")   # PROT_NONE
        elif method == "madvise":
            region.codes = (BUS_MCEERR_AR,)
            for p in bad:
                if _libc.madvise(address + p * PAGE, PAGE, MADV_HWPOISON) != 0:
                    err = ctypes.get_errno()
                    why = {errno.EINVAL: "the kernel has no CONFIG_MEMORY_FAILURE",
                           errno.EPERM: "it needs CAP_SYS_ADMIN"}.get(err, os.strerror(err))
                    raise InjectionUnavailable(err, f"madvise(MADV_HWPOISON) failed with "
                                                    f"{errno.errorcode.get(err, err)}: {why}")
    except BaseException:
        region.close()
        raise
    return region


def _uffd_poison(region: Region) -> None:
    fd = _libc.syscall(SYS_userfaultfd, os.O_CLOEXEC | os.O_NONBLOCK)
    if fd < 0:
        err = ctypes.get_errno()
        raise InjectionUnavailable(err, f"userfaultfd() failed: {os.strerror(err)}")
    region._cleanup.append(lambda: os.close(fd))
    api = bytearray(struct.pack("<QQQ", UFFD_API, UFFD_FEATURE_POISON | UFFD_FEATURE_SIGBUS, 0))
    try:
        fcntl.ioctl(fd, UFFDIO_API, api)
    except OSError as exc:
        raise InjectionUnavailable(exc.errno, "UFFDIO_API refused UFFD_FEATURE_POISON "
                                              f"(needs Linux 6.6+): {exc.strerror}") from None
    reg = bytearray(struct.pack("<QQQQ", region.address, region.size,
                                UFFDIO_REGISTER_MODE_MISSING, 0))
    fcntl.ioctl(fd, UFFDIO_REGISTER, reg)
    for p in region.bad_pages:
        poison = bytearray(struct.pack("<QQQq", region.address + p * PAGE, PAGE, 0, 0))
        fcntl.ioctl(fd, UFFDIO_POISON, poison)


@contextlib.contextmanager
def poison_range(address: int, npages: int, bad_pages: Sequence[int]) -> Iterator[None]:
    """Poison pages of an existing mapping with UFFDIO_POISON (they must not be
    populated yet: holes of a memfd, untouched anonymous pages)."""
    region = Region("uffd", address, npages, _pages(npages, bad_pages), signal.SIGBUS,
                    (BUS_ADRERR, BUS_MCEERR_AR), memoryview(b""))
    try:
        _uffd_poison(region)
        yield
    finally:
        region.close()


def memfd_file(npages: int, holes: Sequence[int], seed: int = 0) -> tuple[int, str]:
    """A memfd of npages pages holding pattern() except at the hole pages, and a
    path that opens it (/proc/self/fd/N). Close the fd when done."""
    fd = os.memfd_create("mcsafe-inject", os.MFD_CLOEXEC)
    os.ftruncate(fd, npages * PAGE)
    data = pattern(npages * PAGE, seed)
    skip = set(holes)
    for p in range(npages):
        if p not in skip:
            os.pwrite(fd, data[p * PAGE:(p + 1) * PAGE], p * PAGE)
    return fd, f"/proc/self/fd/{fd}"


def _truncated(npages: int, bad: list[int], seed: int) -> Region:
    if bad and bad != list(range(bad[0], npages)):
        raise ValueError("truncation makes only a suffix of pages bad")
    fd, path = tempfile.mkstemp(prefix="mcsafe-inject-")
    os.unlink(path)
    try:
        os.write(fd, pattern(npages * PAGE, seed))
        address = _map(npages, MAP_SHARED, fd)
    except BaseException:
        os.close(fd)
        raise
    region = Region("truncate", address, npages, bad, signal.SIGBUS, (BUS_ADRERR,),
                    _view(address, npages * PAGE))
    region._cleanup += [lambda: os.close(fd), lambda: _libc.munmap(address, npages * PAGE)]
    os.ftruncate(fd, (bad[0] if bad else npages) * PAGE)
    return region


@contextlib.contextmanager
def region(method: str, npages: int, bad_pages: Sequence[int], seed: int = 0
           ) -> Iterator[Region]:
    """A mapping of npages pages whose bad_pages fault, unmapped afterwards."""
    bad = _pages(npages, bad_pages)
    if method in ("uffd", "madvise", "mprotect"):
        r = _anonymous(method, npages, bad, seed)
    elif method == "truncate":
        r = _truncated(npages, bad, seed)
    else:
        raise ValueError(f"unknown method {method!r} (one of {', '.join(METHODS)})")
    try:
        yield r
    finally:
        r.close()


# Which methods work is decided without mcsafe: in a forked child that makes a
# region and touches its bad page with libc's memmove, under a handler of the
# child's own that reports the signal, its si_code and address, then exits. So a
# copy or handler that miscounts cannot make a method look unavailable (and the
# tests parametrized on it skip); it fails them.

SA_SIGINFO = 4


class _Sigaction(ctypes.Structure):
    # glibc's struct sigaction, the same on x86-64 and aarch64
    _fields_ = [("handler", ctypes.c_void_p), ("mask", ctypes.c_ulong * 16),
                ("flags", ctypes.c_int), ("restorer", ctypes.c_void_p)]


_HANDLER = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)


@dataclass(frozen=True)
class Touch:
    """A plain read of a bad page: the signal it raised, its si_code and si_addr."""

    signal: int
    code: int
    address: int


_report_to = -1     # (in a probing child) the pipe _say writes to


def _say(**what: object) -> None:
    os.write(_report_to, (json.dumps(what) + "\n").encode())


def _report_fault(sig: int, info: int, _context: int) -> None:
    # (in a probing child) only os.write and _exit: the fault repeats if this returns
    code = ctypes.c_int.from_address(info + 8).value            # si_code
    address = ctypes.c_void_p.from_address(info + 16).value     # si_addr
    _say(signal=sig, code=code, address=address or 0)
    os._exit(0)


# Made here, in the parent, once: libffi allocates (and locks) to make a callback,
# which a forked child of a threaded process must not.
_on_fault = _HANDLER(_report_fault)


def _touch_in_child(method: str, out: int) -> None:
    """(In a forked child.) Make a 2-page region with page 1 bad, touch page 1 with
    libc's memmove, and write to `out` what happened, one JSON object a line."""
    global _report_to
    _report_to = out
    action = _Sigaction(ctypes.cast(_on_fault, ctypes.c_void_p), (ctypes.c_ulong * 16)(),
                        SA_SIGINFO, None)
    try:
        with region(method, 2, [1]) as r:
            _say(bad=r.address + PAGE, signal=r.signal, codes=list(r.codes))
            for sig in (signal.SIGBUS, signal.SIGSEGV):
                _check(_libc.sigaction(sig, ctypes.addressof(action), None), "sigaction")
            ctypes.memmove(ctypes.create_string_buffer(1), r.address + PAGE, 1)
            _say(touched="no fault")
    except OSError as exc:
        _say(unavailable=exc.strerror or str(exc))


def _probe(method: str) -> tuple[str | None, Touch | None]:
    """(None, what a touch did) if the method works here, else (why not, None)."""
    read, write = os.pipe()
    with warnings.catch_warnings():     # 3.12+ warns of fork() with threads running:
        warnings.simplefilter("ignore", DeprecationWarning)   # the child only maps and reads
        pid = os.fork()
    if pid == 0:
        try:
            os.close(read)
            _touch_in_child(method, write)
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        said = [json.loads(line) for line in f.read().decode().splitlines()]
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return f"the probe died of {signal.Signals(os.WTERMSIG(status)).name}", None
    if said and "unavailable" in said[-1]:
        return said[-1]["unavailable"], None
    if len(said) != 2:
        return f"the probe said {said}", None
    want, got = said
    if "touched" in got:
        return f"{method} made a bad page that a plain read does not fault on", None
    touch = Touch(got["signal"], got["code"], got["address"])
    if (touch.signal, touch.address) != (want["signal"], want["bad"]) or \
            touch.code not in want["codes"]:
        return (f"a plain read of its bad page raised {signal.Signals(touch.signal).name} "
                f"code {touch.code} at {touch.address:#x}, not "
                f"{signal.Signals(want['signal']).name} code {want['codes']} at "
                f"{want['bad']:#x}"), None
    return None, touch


_probed: dict[str, tuple[str | None, Touch | None]] = {}


def _probed_once(method: str) -> tuple[str | None, Touch | None]:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r} (one of {', '.join(METHODS)})")
    if method not in _probed:
        _probed[method] = _probe(method)
    return _probed[method]


def available() -> dict[str, str | None]:
    """Each method → None if it works here, else the reason it does not.

    Decided by a plain read of a bad page in a child process, never by mcsafe."""
    return {m: _probed_once(m)[0] for m in METHODS}


def touch(method: str) -> Touch | None:
    """What a plain read of a bad page made by `method` raised here (the reference
    a copy's fault record is held to); None if the method is unavailable."""
    return _probed_once(method)[1]


def uffd_poison_code() -> int | None:
    """The si_code UFFDIO_POISON raises here: BUS_MCEERR_AR, or BUS_ADRERR without
    CONFIG_MEMORY_FAILURE; None if userfaultfd poisoning is unavailable."""
    t = touch("uffd")
    return t.code if t else None


def failing_file(data: bytes | int, bad: Sequence[tuple[int, int]] = (), *,
                 name: str = "data", dir: str | None = None) -> FailingFile:
    """A file holding `data` (or pattern(data) bytes for an int) whose byte ranges
    `bad` fail with EIO for every reader, on a FUSE mount of its own in a
    temporary directory (under `dir`): see :class:`mcsafe._failfs.FailingFile`
    for what it can do (``.path``, ``.resize()``, ``.write()``, ``.set_bad()``,
    ``.on_failed_read()``, ``.stats()``, ``.contents()``).

    Use it in a ``with`` block, or close() it. The server runs in a process of
    its own; the mount is taken away on close(), when the block ends or raises,
    when the object is collected, and when this process dies (even of SIGKILL:
    the server sees its control socket close, and a fusermount3 watchdog
    unmounts if the server itself is killed). Raises InjectionUnavailable,
    with the reason, where FUSE cannot be used."""
    from ._failfs import FailingFile

    return FailingFile(data, bad, name=name, dir=dir)


def fuse_unavailable() -> str | None:
    """Why :func:`failing_file` cannot work here (no /dev/fuse, no fusermount3, no
    mfusepy or libfuse3), or None if nothing is known to be missing."""
    from ._failfs import unavailable

    return unavailable()
