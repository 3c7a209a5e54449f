"""Page-cache residency, so that a reader of a whole file gives back only what it
brought in: pages that were cached before it read them stay cached.

mincore(2) on a mapping of a file says which of its pages are in the page cache,
but only to a caller the kernel lets see it (can_do_mincore(): the file's owner,
CAP_FOWNER, or write permission); to anyone else it says every page is
resident, so nothing would be evicted. :func:`sees_cache` applies the same rule
first, so that such a reader does not even ask.
"""

from __future__ import annotations

import mmap
import os
import stat

PAGE = mmap.PAGESIZE
CAP_FOWNER = 3



def _has_fowner() -> bool:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_FOWNER & 1)
    except OSError:
        pass
    return False


_FOWNER = _has_fowner()
_EUID = os.geteuid()


def sees_cache(fd: int, st: os.stat_result | None = None) -> bool:
    """Whether mincore(2) on a mapping of fd's file reports the page cache (the
    kernel's rule); st: fd's fstat, if the caller has it."""
    if st is None:
        st = os.fstat(fd)
    if _FOWNER or st.st_uid == _EUID:
        return True
    try:
        return os.access(f"/proc/self/fd/{fd}", os.W_OK, effective_ids=True)
    except (OSError, NotImplementedError):
        return False


def sees_every_cache() -> tuple[int, bool]:
    """(euid, CAP_FOWNER): mincore(2) reports the page cache of files this euid owns,
    and of every file with CAP_FOWNER (the rest of sees_cache() is per file)."""
    return _EUID, _FOWNER


def evict_cold(fd: int, offset: int, residency: bytes | bytearray | memoryview) -> None:
    """Evict the pages of fd's file from offset (page-aligned) on whose residency
    byte is 0 (posix_fadvise DONTNEED, a run of pages a call)."""
    if 0 not in residency:
        return
    import re

    for run in re.finditer(rb"\x00+", residency):       # runs of pages not resident
        os.posix_fadvise(fd, offset + run.start() * PAGE, (run.end() - run.start()) * PAGE,
                         os.POSIX_FADV_DONTNEED)


def readahead(fd: int) -> int:
    """The kernel's readahead window for fd's file, in bytes: its backing device's
    read_ahead_kb (a fault in a mapping reads up to half of it before the page
    and half after); 8 MiB where it cannot be told."""
    st = os.fstat(fd)
    dev = st.st_rdev if stat.S_ISBLK(st.st_mode) else st.st_dev
    try:
        with open(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb") as f:
            return max(int(f.read()), 4) << 10
    except (OSError, ValueError):
        return 8 << 20


class Snapshot:
    """Which pages of [offset, offset + length) of fd's file are cached now, asked
    through a mapping of its own that touches nothing; evict() later evicts
    the ones that were not."""

    def __init__(self, fd: int, offset: int, length: int) -> None:
        self.fd = fd
        self.offset = offset // PAGE * PAGE
        self.residency = b""            # (nothing to evict if the file is shorter now)
        length = min(length + offset - self.offset, os.fstat(fd).st_size - self.offset)
        if length <= 0:
            return
        if all_cached(fd, self.offset, length):     # nothing to evict, nothing to map
            self.residency = b"\1" * -(-length // PAGE)
            return
        try:
            m = mmap.mmap(fd, length, mmap.MAP_SHARED, mmap.PROT_READ, offset=self.offset)
        except ValueError:              # cut since the fstat
            return
        except OSError:                 # not mappable (hugetlbfs with no huge page free):
            return                      # nothing known, nothing evicted
        try:
            from ._mcsafe import buffer_address
            self.residency = resident(buffer_address(m), length)
        finally:
            m.close()

    @classmethod
    def tail(cls, fd: int, size: int) -> Snapshot | None:
        """The last readahead window and page of a file of size bytes: what opening a
        MappedFile (which reads the last page) and its last reads bring in."""
        if size == 0:
            return None
        start = max(0, size - readahead(fd) - PAGE) // PAGE * PAGE
        return cls(fd, start, size - start)

    def evict(self) -> None:
        evict_cold(self.fd, self.offset, self.residency)


def all_cached(fd: int, offset: int, length: int) -> bool:
    """Whether every page of fd's [offset, offset + length) is in the page cache
    now, by one cachestat(2) (which counts a large folio in one step): the common
    case, where a mincore(2) walk of every page (and ctypes, imported for it) can
    be spared. True for an empty range; False where the kernel cannot say (before
    Linux 6.5, or a page cache not ours to see).

    cachestat counts folios the page cache holds, where mincore counts only those
    whose data is read (uptodate): a folio left by a read that failed counts here and
    not there. A reader that then fills it leaves it cached: the page cache holds no
    more memory than before, which is what "gives back what it brought in" guards.
    (Found by review: a flaky FUSE page failed once, then read by a scan, stays.)"""
    if length <= 0:
        return True
    from ._mcsafe import _cached

    first = offset // PAGE * PAGE               # the C call counts whole pages from first
    return _cached(fd, first, offset + length - first)


def resident(address: int, length: int) -> bytes:
    """One byte per page of [address, address + length) (page-aligned address):
    nonzero where the page is resident."""
    import ctypes       # (not at start-up: a scan of small files never asks)

    from ._libc import libc

    npages = -(-length // PAGE)
    vec = ctypes.create_string_buffer(npages)
    if libc.mincore(address, length, vec) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mincore: {os.strerror(err)}")
    return vec.raw


class Restorer:
    """Follows one reader going forward through a mapping of a file: before the
    reader reaches a range it asks (once, ahead of the kernel's readahead)
    which pages were cached, and after the reader has passed it evicts
    (posix_fadvise DONTNEED) the pages that were not.

    Its memory is a byte per page of the window it looks ahead and behind (a
    few chunks), whatever the file's size. Evicting again the chunk behind
    catches pages the kernel's read-around fetched before the reader's
    position."""

    def __init__(self, fd: int, chunk: int) -> None:
        self._fd = fd
        self._chunk = -(-chunk // PAGE) * PAGE
        self._base = 0                # file offset of _known[0]
        self._known = bytearray()     # residency before we read, from _base on

    def before(self, address: int, offset: int, length: int, size: int) -> None:
        """The reader is about to read [offset, offset + length) of a file of size
        bytes, mapped (whole, from offset 0) at address: make sure residency is
        known for it and the chunk after."""
        start = offset // PAGE * PAGE
        have = self._base + len(self._known) * PAGE
        if not self._known or start < self._base or start > have:
            # a fresh start, also where the reader jumped past what is known (a hole
            # between): nothing of the gap is asked about or kept
            self._base, self._known = start, bytearray()
            have = start
        want = min(-(-size // PAGE) * PAGE, -(-(offset + length) // PAGE) * PAGE + self._chunk)
        if want > have:
            self._known += b"\1" * ((want - have) // PAGE) if all_cached(
                self._fd, have, want - have) else resident(address + have, want - have)

    def brought_in(self, offset: int, length: int) -> bool:
        """Whether a page of [offset, offset + length) that it has looked at was not
        cached then (the reader may have brought it in since, reading ahead)."""
        lo = max(offset, self._base) // PAGE * PAGE
        hi = min(offset + length, self._base + len(self._known) * PAGE)
        return lo < hi and 0 in self._known[(lo - self._base) // PAGE:
                                            -(-(hi - self._base) // PAGE)]

    def after(self, offset: int, length: int) -> None:
        """The reader has read up to offset + length (from offset): evict what it
        brought in from the chunk behind offset up to there, then forget it."""
        end = -(-(offset + length) // PAGE) * PAGE
        start = max(self._base, (offset - self._chunk) // PAGE * PAGE)
        first = (start - self._base) // PAGE
        evict_cold(self._fd, start, self._known[first:(end - self._base) // PAGE])
        keep = max(self._base, (offset + length - self._chunk) // PAGE * PAGE)
        if keep > self._base:
            del self._known[:(keep - self._base) // PAGE]
            self._base = keep
