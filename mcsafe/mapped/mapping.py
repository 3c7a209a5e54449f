"""The mapping of a file and its growth: what every call copies from or into.

A `Window` holds MappedFile's descriptor and a mapping of the file, made again
larger when the file outgrows it, and publishes what calls see as one tuple
(a view of exactly the file's bytes, the size, and the probe's limit, address
and word), replaced whole when the size changes, so a copy never runs past the
size it was given."""

from __future__ import annotations

import errno
import mmap
import os
import threading
import time
TYPE_CHECKING = False      # (typing: type checkers only)
if TYPE_CHECKING:
    from typing import Callable

    from typing_extensions import Buffer

from .._mcsafe import _copy_or_report, _Published, _scan
from .._types import CopyResult
from ._sys import PAGE, Memory, advise, map_memory, oserror, pages, unmap
from .opening import HUGETLBFS_MAGIC, SIZE_FROM_ELSEWHERE, Opened
from .probe import Probe

RESERVE_MIN = 1 << 20       # a growing file is mapped with room to grow (address space only)
GROWTH_REARM = 64 << 10     # growth (at least, or an eighth of the file) that moves the probe
CLOSED = "I/O operation on closed file"

# view, size, probe limit, probe address, probe word, descriptor, and how many bytes
# are mapped from the view's start (the mapping it is a view of: a read of a file
# grown since, bounded by the size it asks, copies from there): one tuple, so the
# fast path fetches all it needs with one attribute lookup
State = tuple[memoryview, int, int, int, int, int, int]


class Mapping:
    """One mmap of the file, possibly longer than the file, and the one view of it
    that copies use; unmapped only once that view has no exports left."""

    def __init__(self, fd: int, length: int, writable: bool, name: str) -> None:
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        try:
            self.address: int = map_memory(length, prot, mmap.MAP_SHARED, fd, 0)
        except OSError as exc:
            raise oserror(exc.errno or errno.ENOMEM, name, "mmap") from None
        self.length = length
        self.view = memoryview(Memory(self.address, length))

    def close(self) -> None:
        """Release the view, waiting out copies still using it, then unmap."""
        release(self.view)
        unmap(self.address, self.length)

    def drop(self, start: int, end: int) -> None:
        if end > start:
            advise(self.address + start, end - start, mmap.MADV_DONTNEED)


def release(view: memoryview) -> None:
    """Release a view, waiting out copies in other threads that still hold it."""
    while True:
        try:
            view.release()
            return
        except BufferError:
            time.sleep(0.001)


class Window(_Published):
    """MappedFile's descriptor, the mapping of its file and what calls see of it
    (`state`, in a slot of the extension's base class, which the fast path reads)."""

    state: State

    def __init__(self, opened: Opened, writable: bool) -> None:
        self.fd, self.path, self.writable = opened.fd, opened.path, writable
        # Regular files are probed (block devices shrink without a cut: see
        # publish) and mapped with room to grow, except on hugetlbfs, where a
        # writable mapping past the end makes the file that long.
        self.probed = opened.regular
        self.room = self.probed and opened.fs != HUGETLBFS_MAGIC
        # A file whose size can change behind the kernel's back (FUSE, network and
        # cluster file systems) is cut without unmapping anything: no probe, so
        # every call asks the size before and after each copy (the careful paths).
        self.cuts_unmap = opened.fs not in SIZE_FROM_ELSEWHERE
        size = self.file_size()
        reserve = pages(max(2 * size, size + RESERVE_MIN)) if self.room else pages(max(size, 1))
        try:
            self.map = Mapping(self.fd, reserve, writable, self.path)
        except OSError as exc:
            if exc.errno != errno.ENOMEM or reserve == pages(max(size, 1)):
                raise
            # no address space for room to grow (a sparse file of tens of TiB):
            # map just the file, as mmap.mmap would
            self.map = Mapping(self.fd, pages(max(size, 1)), writable, self.path)
        self.probe = Probe()
        self.exported = -1               # fileno()'s descriptor, opened on first use
        self.lock = threading.Lock()     # writers of the state, the mapping and `closed`
        self.closed = False
        self.retired: list[Mapping] = []     # outgrown mappings, unmapped by close()
        self.stale: list[memoryview] = []    # size views still exported when replaced
        self.leaked: list[memoryview] = []   # views exported by threads a fork left behind
        self.publish(self.map.view[:size], size)

    # -- the size ------------------------------------------------------------

    def file_size(self) -> int:
        # lseek(SEEK_END) is the cheapest question about the size (fstat builds a
        # stat_result: three times the cost) and works for block devices too.
        # The file offset it moves is MappedFile's own: nothing reads through it.
        return os.lseek(self.fd, 0, os.SEEK_END)

    def refresh(self) -> int:
        """Ask the file its size; follow it, remapping if it outgrew the mapping."""
        size = self.file_size()
        if size != self.state[1]:
            with self.lock:
                if not self.closed and size != self.state[1]:
                    self._resize(size)
        return size

    def _resize(self, size: int) -> None:
        if size > self.map.length:
            new = None
            try:
                new = Mapping(self.fd, pages(2 * size if self.room else size), self.writable,
                              self.path)
            except OSError as exc:
                if exc.errno != errno.ENOMEM:
                    raise
                # no address space for room to grow: map just the file; and if even
                # that fails (vm.max_map_count), serve what is mapped: past it a
                # read or write is ENOMEM (the careful path), never read(2)
                try:
                    new = Mapping(self.fd, pages(size), self.writable, self.path)
                except OSError as again:
                    if again.errno != errno.ENOMEM:
                        raise
            if new is not None:
                self.retired.append(self.map)
                self.map = new
        old = self.state[0]
        seen = min(size, self.map.length)
        self.publish(self.map.view[:seen], seen)
        try:
            old.release()   # a thread that fetched it before the swap retries (copy)
        except BufferError:
            self.stale.append(old)

    def publish(self, view: memoryview, size: int, rearm: bool = False) -> None:
        """Make (view, size) what calls see, with the probe armed on the file's
        last page. If the page cannot be read (a bad page, or the file cut under
        us), every call takes the careful path until the size changes.

        A file that grew a little keeps its probe (still the proof for every copy
        that ends before the probe's page; reads past it ask the size, writes
        take the careful path):
        a log appended to in small writes is not re-armed on every write."""
        # A block device that shrinks (a loop device's backing file cut, then
        # losetup -c) keeps its page cache: no cut unmaps the probe, so a device
        # is never probed.
        limit = (size - 1) // PAGE * PAGE if size and self.probed and self.cuts_unmap else -1
        room = self.map.length          # the view is a slice of self.map, from its start
        if limit <= 0:
            # no probe; or none needed: every read of a file of one page reaches
            # its last page, bounded by the size it asks
            self.state = (view, size, limit, 0, 0, self.fd, room)
            return
        _, _, kept, address, word, _, _ = self.state or (None, 0, -1, 0, 0, 0, 0)  # None: first
        if not rearm and address and 0 <= kept <= limit < kept + max(kept // 8, GROWTH_REARM):
            self.state = (view, size, kept, address, word, self.fd, room)
            return
        armed = self.probe.arm(self.fd, limit)
        if armed is None:
            self.state = (view, size, -1, 0, 0, self.fd, room)
        else:
            self.state = (view, size, limit, *armed, self.fd, room)

    def probe_failed(self, word: int) -> None:
        """The probe armed with word faulted or read another word: the file was cut
        since it was armed (or the probe armed again). Follow the size and arm
        the probe again, unless another thread has."""
        self.refresh()
        with self.lock:
            view, size, limit, _, now, _, _ = self.state
            if limit >= 0 and now == word and not self.closed:
                self.publish(view, size, rearm=True)

    # -- copies ----------------------------------------------------------------

    def check_open(self) -> None:
        if self.closed:
            raise ValueError(CLOSED)

    def export(self) -> int:
        """A descriptor of the file for the caller: an open file of its own, so that
        its offset is the caller's alone (the size is asked here with lseek, which
        moves the offset of the descriptor it is asked on)."""
        with self.lock:
            self.check_open()
            if self.exported < 0:
                flags = (os.O_RDWR if self.writable else os.O_RDONLY) | os.O_CLOEXEC
                self.exported = os.open(f"/proc/self/fd/{self.fd}", flags)
            return self.exported

    def copy(self, buf: Buffer, done: int, pos: int, n: int, reading: bool
             ) -> int | CopyResult:
        """Copy n bytes between buf (from `done`) and the file (from `pos`), never
        past the view now published: the count, or the CopyResult of a fault."""
        def copy(data: memoryview) -> int | CopyResult:
            # Another thread may have followed the file down since the caller
            # asked its size: the file ends where the view does.
            m = min(n, len(data) - pos)
            if m <= 0:
                return 0
            if reading:
                return _copy_or_report(buf, data, m, done, pos)
            return _copy_or_report(data, buf, m, pos, done)
        return self._on_view(copy)

    def scan(self, offset: int, n: int) -> int | CopyResult:
        """Load every byte of [offset, offset + n), storing nothing: the count,
        short if the file shrank, or the CopyResult of a fault."""
        def scan(data: memoryview) -> int | CopyResult:
            m = min(n, len(data) - offset)
            return _scan(data, offset, m) if m > 0 else 0
        return self._on_view(scan)

    def _on_view(self, call: Callable[[memoryview], int | CopyResult]) -> int | CopyResult:
        """call(the view now published), again if another thread replaced it (the
        file changed size) after this one fetched it."""
        while True:
            data = self.state[0]
            try:
                return call(data)
            except (ValueError, TypeError):
                self.check_open()
                if data is self.state[0]:
                    raise

    def drop(self, offset: int, length: int) -> None:
        """Unmap the pages of [offset, offset + length) from this process (the page
        cache keeps them), so a scrub never holds the whole file resident."""
        with self.lock:
            if not self.closed:
                self.map.drop(offset // PAGE * PAGE, (offset + length) // PAGE * PAGE)

    # -- life cycle ------------------------------------------------------------

    def shut(self) -> memoryview | None:
        """Mark closed (every call now takes the careful path, which refuses): the
        view to release once other threads' calls are done, None if it was."""
        with self.lock:
            if self.closed:
                return None
            self.closed = True
            view = self.state[0]
            self.state = (view, 0, -1, 0, 0, self.fd, 0)
            return view

    def unmap(self, view: memoryview) -> None:
        """Release every view, unmap every mapping, close the descriptor."""
        release(view)
        for v in self.stale:
            release(v)
        for m in self.retired + [self.map]:
            m.close()
        self.probe.close()
        try:
            if self.exported >= 0:
                os.close(self.exported)
        finally:
            os.close(self.fd)

    def after_fork(self) -> None:
        """In a forked child only the forking thread lives on: the lock another
        thread held and the views its copies exported are gone with it."""
        self.lock = threading.Lock()
        if self.closed:
            return
        view, size, limit, probe, word, fd, room = self.state
        self.leaked += [view] + self.stale       # never released: left mapped, unused
        self.stale = []
        self.state = (self.map.view[:size], size, limit, probe, word, fd, room)
