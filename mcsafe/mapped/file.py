"""MappedFile, the public class: its calls, its life cycle, and the parts it uses
(mapping, probe, careful, badranges, scrub, arrays, opening), none of which uses
it back."""

from __future__ import annotations

import errno
import operator
import os
import threading
import time
import warnings
import weakref
# typing costs a large file's scan more than the rest of this module (4-5 ms): its
# names are for type checkers only, a name mypy knows
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, TypeVar, overload

    import numpy as np
    import numpy.typing as npt
    from typing_extensions import Buffer

    #: A numpy scalar type: read_array(np.float32) is an array of np.float32.
    Scalar = TypeVar("Scalar", bound="np.generic")
else:
    def overload(function):     # typing.overload for checkers: the last definition runs
        return function

from .._mcsafe import _copy_bracketed, _ensure_front, _FastPath
from .._types import CopyResult, FaultInfo
from ._sys import MS_SYNC, PAGE, oserror, pages, sync
from .badranges import BadRanges
from .careful import Careful
from .mapping import CLOSED, Mapping, State, Window
from .opening import open_file


class MappedFile(_FastPath):
    """A file mapped into memory, read and written through the table-driven copy.

    Reads and writes behave as pread(2) and pwrite(2) would, except that they
    never extend the file: they count only bytes that were in the file during
    the call, stop at its current end (which follows the file as it grows or
    shrinks), and stop short at a bad byte (a poisoned page, a page the kernel
    could not read, a protected page). A call whose first byte is bad raises
    :class:`MemoryFaultError`, whose ``cause`` says why. Bad pages, once met, are
    remembered for the life of the object: later calls stop before them without
    touching them again, like a bad-block list. Several threads may use one
    MappedFile at once.

    ``file`` is a path or an open file descriptor (which stays the caller's: the
    file is opened again through /proc/self/fd). Regular files and block devices
    are accepted; anything else is refused with an OSError naming it.

    MappedFile's base is in C (readinto()'s fast path reads its parts from
    slots): a subclass may not also derive from another class with a layout of
    its own (``io.RawIOBase``, ``dict``, ``Exception``: "instance lay-out
    conflict"). :class:`mcsafe.fileio.MappedFileIO` wraps one as a raw file.
    """

    _window: Window
    _bad: BadRanges

    def __init__(self, file: str | os.PathLike[str] | int, mode: str = "r") -> None:
        if mode not in ("r", "r+"):
            raise ValueError(f"mode must be 'r' or 'r+', not {mode!r}")
        _ensure_front(2)          # a handler installed over mcsafe: in front again, warned
        self.mode = mode
        self.name: str | int = file if isinstance(file, int) else os.fspath(file)
        opened = open_file(file, mode)
        self.path = opened.path
        try:
            self._window = Window(opened, mode == "r+")
        except OSError as exc:
            os.close(opened.fd)
            if exc.errno == errno.ENODEV:     # the file system has no pages to map
                raise oserror(errno.ENODEV, self.path, "its file system cannot map it"
                              ) from None
            raise
        except BaseException:
            os.close(opened.fd)
            raise
        self._bad = BadRanges()
        self._careful = Careful(self._window, self._bad)
        self._users: dict[int, int] = {}     # calls using the descriptor, per thread
        _open_files.add(self)

    def __repr__(self) -> str:
        if self.closed:
            return f"<MappedFile {self.path!r} mode={self.mode!r} closed>"
        return (f"<MappedFile {self.path!r} mode={self.mode!r} size={self._window.state[1]} "
                f"{len(self._bad)} bad ranges>")

    def __del__(self) -> None:
        # Dropped without close(): close it, as io's files do, and say so.
        if not hasattr(self, "_users") or self.closed:
            return
        message = f"unclosed {self!r}"
        try:
            self.close()
        finally:            # an error here (-W error) is reported as unraisable
            warnings.warn(message, ResourceWarning, source=self)

    def __reduce__(self) -> Any:
        raise TypeError(f"cannot pickle a MappedFile ({self.path!r}): a mapping and a "
                        "descriptor belong to one process; send its path and open it again")

    # The parts' state, for tests that look inside.
    _state: State = property(lambda self: self._window.state)         # type: ignore
    _fd: int = property(lambda self: self._window.fd)                  # type: ignore
    _map: Mapping = property(lambda self: self._window.map)            # type: ignore
    _lock: threading.Lock = property(lambda self: self._window.lock)   # type: ignore

    # -- life cycle ----------------------------------------------------------

    def __enter__(self) -> MappedFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Unmap and close; waits for reads and writes under way in other threads.

        close() does not sync, as close(2) does not: the kernel writes dirty pages
        back later, and an error it meets then is not reported here. Call sync()
        first when the writes must be durable.
        """
        view = self._window.shut()              # every call now takes the careful path
        if view is None:
            return
        me = threading.get_ident()
        while True:                              # other threads' calls under way
            with self._window.lock:
                if all(t == me for t in self._users):
                    break
            time.sleep(0.001)
        self._window.unmap(view)

    def _enter(self) -> None:
        """Start a call that uses the descriptor; close() waits for it to _leave().
        (Copies alone need no such count: the export of the view they hold keeps
        close() waiting.)"""
        with self._window.lock:
            if self._window.closed:
                raise ValueError(CLOSED)
            me = threading.get_ident()
            self._users[me] = self._users.get(me, 0) + 1

    def _leave(self) -> None:
        with self._window.lock:
            me = threading.get_ident()
            n = self._users.pop(me) - 1
            if n:
                self._users[me] = n

    def _after_fork(self) -> None:
        """In a forked child only the forking thread lives on: the locks another
        thread held, its calls and the views its copies exported are gone with it."""
        self._window.after_fork()
        self._bad.after_fork()
        me = threading.get_ident()
        self._users = {me: self._users[me]} if me in self._users else {}

    @property
    def closed(self) -> bool:
        return self._window.closed

    @property
    def size(self) -> int:
        """The file's size now (it follows the file as it grows or shrinks)."""
        self._enter()
        try:
            return self._window.refresh()
        finally:
            self._leave()

    @property
    def address(self) -> int:
        """Where the mapping starts in memory (it moves when the file outgrows it)."""
        self._window.check_open()
        return self._window.map.address

    def fileno(self) -> int:
        """A descriptor of the file (for fstat, locks, fsync, or reads of the
        caller's own): an open file of its own, opened on first use and closed
        with the MappedFile, whose offset only the caller moves."""
        return self._window.export()

    def bad_ranges(self) -> list[tuple[int, int]]:
        """Every bad range seen so far: page-granular [start, end), merged and sorted."""
        self._window.check_open()
        return self._bad.ranges()

    def bad_range_faults(self) -> list[tuple[int, int, FaultInfo]]:
        """bad_ranges(), each with the first fault met in it: its ``cause`` (poison,
        io, protection, ...), signal and code say why the range is bad; its
        ``offset`` is the file offset of that fault."""
        self._window.check_open()
        return self._bad.faults()

    # -- reading and writing -------------------------------------------------

    readinto = _FastPath.readinto     # in C (mcsafe._mcsafe): here for the reference

    def _readinto_slow(self, buf: Buffer, offset: int, state: State,
                          got: int | CopyResult) -> int:
        """readinto() where its fast path stopped: `got` is -1 if the probe armed
        in `state` failed, -2 if the fast path did nothing (the read touches a
        known bad range, the file grown past the mapping, a closed file, an offset
        past Py_ssize_t), or the CopyResult of a fault. offset is an int."""
        if isinstance(got, CopyResult):
            return self._checked(buf, offset, True, got.copied, got.fault)
        if got == -1:       # the probe failed: cut since it was armed
            return self._checked(buf, offset, True, 0, None, state[4])
        if offset < 0:
            raise ValueError(f"negative offset {offset}")
        return self._checked(buf, offset, True, 0, None)

    # The fast path of readinto() is one C call (_FastPath.readinto): every byte
    # comes from the mapping through the table-driven copy, never from read(2)
    # (docs/ARCHITECTURE.md, "Machine checks"). A copy that ends before the file's last page (as last
    # seen) is proved by the probe to have read only the file's bytes; one that
    # reaches that page is bounded by the size asked just before it, where the
    # mapping shows zeros past the end without a fault. write() mirrors it without
    # the last page: a write that reaches it takes the careful path, which asks
    # the size around every copy. Faults and failed probes take the careful paths.

    def read(self, n: int | None = -1, offset: int = 0) -> bytes:
        """Up to n bytes from offset (fewer at a bad byte or the end of the file); with
        n -1 (or any negative, or None), everything from offset to the end of the file,
        as a file's ``read(-1)``."""
        offset = operator.index(offset)        # as os.pread takes it, before anything else
        n = -1 if n is None else operator.index(n)
        size = self.size
        want = size - offset if n < 0 else n
        buf = bytearray(max(0, min(want, size - offset)))
        got = self.readinto(buf, offset) if buf else 0
        return bytes(buf) if got == len(buf) else bytes(buf[:got])

    def write(self, buf: Buffer, offset: int = 0) -> int:
        """Write data at offset (mode 'r+'), as pwrite(2) but never extending the
        file: the count of bytes now in the file, short at a bad byte or the end
        of the file, 0 at or past the end. Raises MemoryFaultError if the first
        byte is bad (ENOSPC for a hole the full file system cannot fill)."""
        offset = operator.index(offset)        # as os.pwrite takes it, before anything else
        if self.mode != "r+":
            raise OSError(errno.EBADF, "not open for writing (mode 'r+')", self.path)
        # readinto's fast path, mirrored without the last page (the comment above)
        data, size, limit, probe, word, _, _ = self._window.state
        if 0 <= offset < size and not self._bad.starts:
            got = _copy_bracketed(data, buf, offset, 0, False, limit, probe, word)
            if type(got) is int:
                if got >= 0:
                    return got
                return self._checked(buf, offset, False, 0, None, word if got == -1 else None)
            assert isinstance(got, CopyResult)
            return self._checked(buf, offset, False, got.copied, got.fault)
        if offset < 0:
            raise ValueError(f"negative offset {offset}")
        return self._checked(buf, offset, False, 0, None)

    def _checked(self, buf: Buffer, offset: int, reading: bool, done: int,
                 fault: FaultInfo | None, failed_probe: int | None = None) -> int:
        """The careful path of a read or a write that has copied `done` bytes (and
        met `fault`, or found the probe armed with `failed_probe` failed)."""
        self._enter()
        try:
            if failed_probe is not None:
                self._window.probe_failed(failed_probe)
            if reading:
                return self._careful.read(buf, offset, done, fault)
            if not self._window.probed and done == 0 and fault is None and not self._bad:
                return self._careful.device_write(buf, offset)
            return self._careful.write(buf, offset, done, fault)
        finally:
            self._leave()

    # -- durability ----------------------------------------------------------

    def sync(self, offset: int = 0, length: int | None = None) -> None:
        """Write the dirty pages of [offset, offset + length) back to the file and
        wait (msync MS_SYNC); a write-back error (EIO, ENOSPC) is an OSError."""
        if offset < 0 or (length is not None and length < 0):
            raise ValueError(f"negative offset or length ({offset}, {length})")
        self._enter()
        try:
            w = self._window
            size = w.refresh()
            end = size if length is None else min(size, offset + length)
            start = offset // PAGE * PAGE
            if end <= start:
                return
            with w.lock:
                try:
                    sync(w.map.address + start, pages(end) - start, MS_SYNC)
                except OSError as exc:
                    raise oserror(exc.errno or errno.EIO, self.path, "msync") from None
        finally:
            self._leave()

    def flush(self) -> None:
        """sync() the whole file in mode 'r+'; nothing to do in mode 'r'."""
        self._window.check_open()
        if self.mode == "r+":
            self.sync()

    # -- whole files and arrays ---------------------------------------------------

    def scrub(self, progress: Callable[[int, int], object] | None = None, *, start: int = 0,
              end: int | None = None, sink: Callable[[int, memoryview | int], object] | None = None,
              skip_holes: bool = False, restore_cache: bool = False) -> list[tuple[int, int]]:
        """Read the file's data from start to end (default: its size now) and return
        every bad range seen (page-granular, merged, sorted: bad_ranges()).

        Pages are dropped from this process as it goes, so files larger than
        memory can be scrubbed. skip_holes=True skips the holes, which the file
        system stores no data for (SEEK_HOLE): they read as zeros and no storage
        under them can fail (only a fault injected into this mapping could).

        progress(done, end) is called per chunk (16 MiB at most), done the offset
        reached. sink(offset, data), if given, receives what was read, in order:
        data is a memoryview of the bytes at offset (valid during the call only),
        or, for a hole skipped, its length (an int). The bytes are those readinto()
        would count: only bytes in the file during the read, none of a bad page.
        A range the file was cut and written again under at every try is passed
        over without reaching sink.

        restore_cache=True leaves the page cache as the scrub found it: the pages
        it brought in are evicted once read (posix_fadvise DONTNEED), the pages
        that were cached before stay. Where the kernel will not say which pages
        were cached (see mcsafe.pagecache), nothing is evicted. (Opening the
        MappedFile read its last page, and the kernel what is around it, before
        the scrub could look: mcsafe.pagecache.Snapshot.tail, taken before the
        open and evicted after close(), gives that back too.)

        An exception raised by progress or sink stops the scrub and propagates;
        bad_ranges() keeps what was found until then.
        """
        from .scrub import scrub

        if start < 0 or (end is not None and end < start):
            raise ValueError(f"bad range to scrub: start {start}, end {end}")
        _ensure_front(2)
        self._enter()
        try:
            return scrub(self._window, self._bad, self._careful, self.readinto, progress,
                         start, end, sink, skip_holes, restore_cache)
        finally:
            self._leave()

    @overload
    def read_array(self, dtype: type[Scalar] | np.dtype[Scalar], count: int = -1,
                   offset: int = 0) -> np.ndarray[Any, np.dtype[Scalar]]: ...
    @overload
    def read_array(self, dtype: npt.DTypeLike, count: int = -1, offset: int = 0
                   ) -> np.ndarray[Any, np.dtype[Any]]: ...
    def read_array(self, dtype: npt.DTypeLike, count: int = -1, offset: int = 0
                   ) -> np.ndarray[Any, np.dtype[Any]]:
        """A new numpy array of count items of dtype (-1: to the end of the file),
        filled from offset; see :func:`mcsafe.arrays.read_array`."""
        from .arrays import read_array

        return read_array(self, dtype, count, offset)


_open_files: weakref.WeakSet[MappedFile] = weakref.WeakSet()


def _reinit_after_fork() -> None:
    for mf in list(_open_files):
        mf._after_fork()


os.register_at_fork(after_in_child=_reinit_after_fork)
