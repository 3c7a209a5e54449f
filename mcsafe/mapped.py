"""MappedFile: read(2) semantics on a mapping of a file, surviving bad pages."""

from __future__ import annotations

import bisect
import mmap
import os
import threading
import time
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from typing_extensions import Buffer

from . import _mcsafe
from ._types import CopyResult, FaultInfo, MemoryFaultError

PAGE = mmap.PAGESIZE
SCRUB_CHUNK = 4 << 20       # measured: 1 MiB chunks cost scrub 15% in page-table churn


class MappedFile:
    """A file mapped into memory, read and written through the table-driven copy.

    A read that meets a bad byte (a poisoned page, a page past the end of a file
    that shrank after it was mapped, a protected page) returns the bytes before
    it; a read whose first byte is bad raises :class:`MemoryFaultError` (EIO).
    Bad pages, once met, are remembered for the life of the object: later
    reads stop before them without touching them again, like a bad-block list.
    Several threads may use one MappedFile at once.
    """

    def __init__(self, path: str | os.PathLike[str], mode: str = "r") -> None:
        if mode not in ("r", "r+"):
            raise ValueError(f"mode must be 'r' or 'r+', not {mode!r}")
        self.path = os.fspath(path)
        self.mode = mode
        self._fd = os.open(self.path, (os.O_RDONLY if mode == "r" else os.O_RDWR) | os.O_CLOEXEC)
        try:
            self._size = os.fstat(self._fd).st_size
            access = mmap.ACCESS_READ if mode == "r" else mmap.ACCESS_WRITE
            self._map = mmap.mmap(self._fd, self._size, access=access) if self._size else None
        except BaseException:
            os.close(self._fd)
            raise
        self._view = memoryview(self._map) if self._map is not None else memoryview(b"")
        self._starts: list[int] = []           # bad ranges, sorted and disjoint
        self._ends: list[int] = []
        self._first_fault: dict[int, FaultInfo] = {}
        self._lock = threading.Lock()        # writers of the bad-range list only
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._starts)} bad ranges"
        return f"<MappedFile {self.path!r} mode={self.mode!r} size={self._size} {state}>"

    # -- life cycle ----------------------------------------------------------

    def __enter__(self) -> MappedFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Unmap and close; waits for reads and writes under way in other threads.

        Readers take no lock: a copy under way holds a buffer export on the view,
        which cannot be released until the copy is done, so close waits for that.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        while True:
            try:
                self._view.release()
                break
            except BufferError:
                time.sleep(0.001)
        if self._map is not None:
            self._map.close()
        os.close(self._fd)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def size(self) -> int:
        """The size of the mapping: the file's size when it was opened."""
        return self._size

    @property
    def address(self) -> int:
        """Where the mapping starts in memory (0 for an empty file)."""
        return _mcsafe.buffer_address(self._view) if self._size else 0

    def _copy(self, dst: Buffer, src: Buffer, n: int | None, dst_offset: int = 0,
              src_offset: int = 0) -> int | CopyResult:
        try:
            return _mcsafe._copy_or_report(dst, src, n, dst_offset, src_offset)
        except (ValueError, TypeError):      # the view was released by close()
            if self._closed:
                raise ValueError("I/O operation on closed MappedFile") from None
            raise

    # -- the bad-range list ----------------------------------------------------

    def bad_ranges(self) -> list[tuple[int, int]]:
        """Every bad range seen so far: page-granular [start, end), merged and sorted."""
        with self._lock:
            return list(zip(self._starts, self._ends))

    def _bad_at_or_after(self, offset: int) -> tuple[int, int] | None:
        """The first bad range that ends after offset (called without the lock: the
        lists are replaced, never mutated, so a reader sees a consistent pair)."""
        starts, ends = self._starts, self._ends
        i = bisect.bisect_right(ends, offset)
        return (starts[i], ends[i]) if i < len(starts) else None

    def _remember(self, fault: FaultInfo, at: int) -> FaultInfo:
        """Record the page of a fault at file offset `at`; a fault past the file's
        current end marks everything past it bad, as poison would."""
        info = fault._replace(offset=at)
        start, end = at // PAGE * PAGE, at // PAGE * PAGE + PAGE
        try:
            now = os.fstat(self._fd).st_size
        except OSError:
            now = self._size
        eof = -(-now // PAGE) * PAGE
        if at >= eof:
            start, end = eof, self._size
        end = min(end, -(-self._size // PAGE) * PAGE)
        with self._lock:
            starts, ends = list(self._starts), list(self._ends)
            i = bisect.bisect_left(ends, start)
            j = bisect.bisect_right(starts, end)
            kept = info                # the signal and code a later EIO on the range reports
            if i < j:
                start, end = min(start, starts[i]), max(end, ends[j - 1])
                kept = self._first_fault.get(starts[i], info)
                for s in starts[i:j]:
                    self._first_fault.pop(s, None)
            starts[i:j], ends[i:j] = [start], [end]
            self._first_fault[start] = kept
            self._starts, self._ends = starts, ends
        return info

    def _known_bad(self, start: int, offset: int) -> MemoryFaultError:
        with self._lock:
            info = self._first_fault.get(start)
        if info is None:   # pragma: no cover - every range has its first fault
            info = FaultInfo(self.address + offset, offset, "src", 0, 0)
        return MemoryFaultError(info._replace(offset=offset,
                                              address=self.address + offset),
                                f"{self.path}: known bad range")

    # -- reading and writing -------------------------------------------------

    def _before_bad(self, offset: int, n: int) -> int:
        """n, cut short before the next known bad range; EIO if offset is in one."""
        bad = self._bad_at_or_after(offset)
        if bad is None:
            return n
        if bad[0] <= offset:
            raise self._known_bad(bad[0], offset)
        return min(n, bad[0] - offset)

    def _outcome(self, res: int | CopyResult, offset: int, what: str) -> int:
        """The count of a copy at file offset; a fault is remembered, and is EIO if
        nothing was copied."""
        if isinstance(res, int):
            return res
        assert res.fault is not None        # a short copy always carries its fault
        info = self._remember(res.fault, offset + res.fault.offset)
        if res.copied == 0:
            raise MemoryFaultError(info, f"{self.path}: {what}")
        return res.copied

    def readinto(self, buf: Buffer, offset: int = 0) -> int:
        """Fill buf from the file at offset; return the count (short at a bad byte,
        0 at end of file). Raises MemoryFaultError if the first byte is bad."""
        if offset < 0:
            raise ValueError(f"negative offset {offset}")
        if offset >= self._size:
            if self._closed:
                raise ValueError("I/O operation on closed MappedFile")
            return 0
        n = None
        if self._starts:
            n = self._before_bad(offset, min(memoryview(buf).nbytes, self._size - offset))
        return self._outcome(self._copy(buf, self._view, n, 0, offset), offset, "read")

    def read(self, n: int, offset: int = 0) -> bytes:
        """Up to n bytes from offset (fewer at a bad byte or the end of the file)."""
        if n < 0:
            raise ValueError(f"negative size {n}")
        buf = bytearray(max(0, min(n, self._size - offset)))
        got = self.readinto(buf, offset) if buf else 0
        return bytes(buf) if got == len(buf) else bytes(buf[:got])

    def write(self, data: Buffer, offset: int = 0) -> int:
        """Write data at offset (mode 'r+'); return the count, short at a bad byte or
        at the end of the mapping. Raises MemoryFaultError if the first byte is bad."""
        if self.mode != "r+":
            raise OSError(9, f"{self.path}: not open for writing (mode 'r+')")
        if offset < 0 or offset > self._size:
            raise ValueError(f"offset {offset} is outside the file (0..{self._size})")
        if offset == self._size:
            return 0
        n = self._before_bad(offset, min(memoryview(data).nbytes, self._size - offset))
        return self._outcome(self._copy(self._view, data, n, offset, 0), offset, "write")

    def scrub(self, progress: Callable[[int, int], object] | None = None
              ) -> list[tuple[int, int]]:
        """Read the whole file and return every bad range (page-granular, merged,
        sorted). Pages are dropped from this process as it goes, so files larger
        than memory can be scrubbed. progress(done, size) is called per chunk."""
        buf = bytearray(SCRUB_CHUNK)
        offset = 0
        if self._closed:
            raise ValueError("I/O operation on closed MappedFile")
        while offset < self._size:
            bad = self._bad_at_or_after(offset)
            if bad is not None and bad[0] <= offset:
                offset = bad[1]                     # known bad: skip, untouched
            else:
                n = min(SCRUB_CHUNK, self._size - offset)
                if bad is not None:
                    n = min(n, bad[0] - offset)
                res = self._copy(buf, self._view, n, 0, offset)
                if isinstance(res, int):
                    self._drop(offset, n)
                    offset += n
                else:
                    assert res.fault is not None
                    self._remember(res.fault, offset + res.fault.offset)
                    self._drop(offset, res.copied)
                    offset += res.copied
            if progress is not None:
                progress(min(offset, self._size), self._size)
        return self.bad_ranges()

    def _drop(self, offset: int, length: int) -> None:
        """Unmap the pages of [offset, offset + length) from this process (the page
        cache keeps them), so a scrub never holds the whole file resident."""
        start = offset // PAGE * PAGE
        end = (offset + length) // PAGE * PAGE
        if end > start and self._map is not None:
            self._map.madvise(mmap.MADV_DONTNEED, start, end - start)
