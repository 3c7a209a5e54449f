"""MappedFile: pread(2)/pwrite(2) semantics on a mapping of a file, surviving bad pages."""

from __future__ import annotations

import bisect
import contextlib
import ctypes
import errno
import fcntl
import mmap
import os
import signal
import stat
import threading
import time
import warnings
import weakref
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from typing_extensions import Buffer

from ._mcsafe import (_copy_bracketed, _copy_or_report, _copy_through, _file_stamp,
                      _read_split)
from ._types import CopyResult, FaultInfo, MemoryFaultError
from .pagecache import Restorer, readahead, sees_cache

PAGE = mmap.PAGESIZE
SCRUB_CHUNK = 16 << 20      # pages dropped per madvise: measured 8-13% faster than 4 MiB
                            # (fewer TLB shootdowns), 32 MiB no better; 1 MiB costs 15%
SCRUB_BUF = 256 << 10       # the pieces a scrub hands to its sink: fits L2, so the copy
                            # in and the sink's pwrite out are both cached (1 GiB through
                            # pwrite: 793 ms against 950 with 1 MiB, 859 with 128 KiB)
SCRUB_SINK = 16 << 10       # where a scrub without a sink copies to, a piece at a time (C
                            # loop): fits L1; measured 20% faster than 1 MiB (1 GiB in
                            # 256 MiB files: 108 vs 135 ms, best of 9), 4 KiB no better
RETRIES = 2                 # copies again of a page that faulted inside the file
CHURN_RETRIES = 4           # copies again of a file that changed during the copy
RESERVE_MIN = 1 << 20       # a growing file is mapped with room to grow (address space only)
GROWTH_REARM = 64 << 10     # growth (at least, or an eighth of the file) that moves the probe
CLOSED = "I/O operation on closed file"
RETRY, STOP, CUT = range(3)  # verdicts on a fault (MappedFile._judge)

# Python's mmap refuses to map past the end of a file, and a file that can grow
# has to be mapped past its end: the four calls, through ctypes.
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.msync.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.fstatfs.argtypes = [ctypes.c_int, ctypes.c_void_p]
MAP_FAILED = ctypes.c_void_p(-1).value
MAP_FIXED = 0x10
PROT_NONE = 0
MS_SYNC = 4

HUGETLBFS_MAGIC = 0x958458F6
# File systems whose files have no pages to map, by statfs f_type.
_PSEUDO_FS = {0x9FA0: "procfs", 0x62656572: "sysfs", 0x64626720: "debugfs",
              0x74726163: "tracefs", 0x27E0EB: "cgroup", 0x63677270: "cgroup2",
              0x73636673: "securityfs", 0x6E736673: "nsfs", 0xCAFE4A11: "bpf"}
_KINDS = {stat.S_IFDIR: "a directory", stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device",
          stat.S_IFSOCK: "a socket", stat.S_IFLNK: "a symbolic link"}


def _pages(n: int) -> int:
    return -(-n // PAGE) * PAGE


def _oserror(err: int, name: str, what: str) -> OSError:
    return OSError(err, f"{what}: {os.strerror(err)}", name)


class _Mapping:
    """One mmap of the file, possibly longer than the file, and the one view of it
    that copies use; unmapped only once that view has no exports left."""

    def __init__(self, fd: int, length: int, writable: bool, name: str) -> None:
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        address = _libc.mmap(None, length, prot, mmap.MAP_SHARED, fd, 0)
        if address in (None, MAP_FAILED):
            err = ctypes.get_errno()
            raise _oserror(err, name, "mmap")
        self.address: int = address
        self.length = length
        self.view = memoryview((ctypes.c_ubyte * length).from_address(address)).cast("B")

    def close(self) -> None:
        """Release the view, waiting out copies still using it, then unmap."""
        while True:
            try:
                self.view.release()
                break
            except BufferError:
                time.sleep(0.001)
        _libc.munmap(self.address, self.length)

    def drop(self, start: int, end: int) -> None:
        if end > start:
            _libc.madvise(self.address + start, end - start, mmap.MADV_DONTNEED)


class _ProbePage:
    """One page of address space that holds, privately mapped, the file's last
    page with a random word of ours written over its start (a copy-on-write
    page: the file never sees it).

    Cutting a file to or below a page's start unmaps that page from every
    mapping of the file, private copies included (truncate_pagecache(): POSIX
    says such a page must fault), and only cutting does so. So while the word
    reads back as written, the file has not been cut to the page's start since
    it was written, and held every byte before it: the fast path's proof
    (MappedFile.readinto). After a cut the word reads as the file's own bytes
    (the page faulted in again from a file written long again) or faults (it
    was not). The word is random so that no file's bytes are expected to equal
    it: 2**-64 per cut."""

    def __init__(self) -> None:
        self.address: int | None = self._reserve(None)
        self._word = memoryview((ctypes.c_ubyte * 8).from_address(self.address)).cast("B") \
            if self.address else None

    @staticmethod
    def _reserve(at: int | None) -> int | None:
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | (MAP_FIXED if at else 0)
        address = _libc.mmap(at, PAGE, PROT_NONE, flags, -1, 0)
        return None if address in (None, MAP_FAILED) else address

    def arm(self, fd: int, offset: int) -> int | None:
        """Map the file's page at offset here and write a fresh word over its start:
        the word, or None if the page could not be mapped or read."""
        if self.address is None or self._word is None:
            return None
        prot = mmap.PROT_READ | mmap.PROT_WRITE
        at = _libc.mmap(self.address, PAGE, prot, mmap.MAP_PRIVATE | MAP_FIXED, fd, offset)
        if at != self.address:
            # A failed MAP_FIXED may have unmapped the page: reserve it again, or
            # give it up (never probed, never unmapped by us: it may be another's).
            if self._reserve(self.address) != self.address:
                self.address = None
            return None
        word = int.from_bytes(os.urandom(8), "little")
        if _copy_or_report(self._word, word.to_bytes(8, "little"), 8) != 8:
            return None         # the page faults: cut under us, or unreadable
        return word

    def read(self) -> int | None:
        """The word the page holds now, or None if reading it faults."""
        if self._word is None:
            return None
        got = bytearray(8)
        if _copy_or_report(got, self._word, 8) != 8:
            return None
        return int.from_bytes(got, "little")

    def close(self) -> None:
        if self._word is not None:
            self._word.release()
        if self.address is not None:
            _libc.munmap(self.address, PAGE)


class _Probe:
    """Two probe pages, armed in turn, so that arming one (the file changed
    size) never fails the calls in flight that check the other."""

    def __init__(self) -> None:
        self._pages = [p for p in (_ProbePage(), _ProbePage()) if p.address is not None]
        self._turn = 0

    def arm(self, fd: int, offset: int) -> tuple[int, int] | None:
        """Arm the next page on the file's page at offset: (its address, its word),
        or None if the page could not be mapped or read."""
        if not self._pages:
            return None
        page = self._pages[self._turn % len(self._pages)]
        self._turn += 1
        word = page.arm(fd, offset)
        return None if word is None or page.address is None else (page.address, word)

    def close(self) -> None:
        for page in self._pages:
            page.close()


class MappedFile:
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
    """

    def __init__(self, file: str | os.PathLike[str] | int, mode: str = "r") -> None:
        if mode not in ("r", "r+"):
            raise ValueError(f"mode must be 'r' or 'r+', not {mode!r}")
        self.mode = mode
        self.name: str | int = file if isinstance(file, int) else os.fspath(file)
        self._fd, self.path = _open(file, mode)
        try:
            st = os.fstat(self._fd)
            # Regular files are probed (block devices shrink without a cut: see
            # _publish) and mapped with room to grow, except on hugetlbfs, where a
            # writable mapping past the end makes the file that long.
            self._probed = stat.S_ISREG(st.st_mode)
            self._room = self._probed and _fs_type(self._fd) != HUGETLBFS_MAGIC
            size = self._file_size()
            reserve = _pages(max(2 * size, size + RESERVE_MIN)) if self._room else \
                _pages(max(size, 1))
            try:
                self._map = _Mapping(self._fd, reserve, mode == "r+", self.path)
            except OSError as exc:
                if exc.errno != errno.ENOMEM or reserve == _pages(max(size, 1)):
                    raise
                # no address space for room to grow (a sparse file of tens of
                # TiB): map just the file, as mmap.mmap would
                self._map = _Mapping(self._fd, _pages(max(size, 1)), mode == "r+", self.path)
            self._probe = _Probe()
        except OSError as exc:
            os.close(self._fd)
            if exc.errno == errno.ENODEV:     # the file system has no pages to map
                raise _oserror(errno.ENODEV, self.path, "its file system cannot map it"
                               ) from None
            raise
        except BaseException:
            os.close(self._fd)
            raise
        self._retired: list[_Mapping] = []   # outgrown mappings, unmapped by close()
        self._stale: list[memoryview] = []   # size views still exported when replaced
        # (a view of the file's bytes, its size, the probe's limit, address and word)
        self._state: tuple[memoryview, int, int, int, int]
        self._publish(self._map.view[:size], size)
        self._starts: list[int] = []         # bad ranges, sorted and disjoint
        self._ends: list[int] = []
        self._first_fault: dict[int, FaultInfo] = {}
        self._lock = threading.Lock()        # writers of the bad-range list and the size
        self._closed = False
        self._users: dict[int, int] = {}     # calls using the descriptor, per thread
        self._leaked: list[memoryview] = []  # views exported by threads a fork left behind
        _open_files.add(self)

    def __repr__(self) -> str:
        if self._closed:
            return f"<MappedFile {self.path!r} mode={self.mode!r} closed>"
        return (f"<MappedFile {self.path!r} mode={self.mode!r} size={self._state[1]} "
                f"{len(self._starts)} bad ranges>")

    def __del__(self) -> None:
        # Dropped without close(): close it, as io's files do, and say so.
        if getattr(self, "_closed", True) or not hasattr(self, "_lock"):
            return
        message = f"unclosed {self!r}"
        try:
            self.close()
        finally:            # an error here (-W error) is reported as unraisable
            warnings.warn(message, ResourceWarning, source=self)

    def __reduce__(self) -> Any:
        raise TypeError(f"cannot pickle a MappedFile ({self.path!r}): a mapping and a "
                        "descriptor belong to one process; send its path and open it again")

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
        with self._lock:
            if self._closed:
                return
            self._closed = True
            view = self._state[0]
            self._state = (view, 0, -1, 0, 0)   # every call now takes the careful path
        me = threading.get_ident()
        while True:                              # other threads' calls under way
            with self._lock:
                if all(t == me for t in self._users):
                    break
            time.sleep(0.001)
        self._release(view)
        for v in self._stale:
            self._release(v)
        for m in self._retired + [self._map]:
            m.close()
        self._probe.close()
        os.close(self._fd)

    @staticmethod
    def _release(view: memoryview) -> None:
        while True:
            try:
                view.release()
                return
            except BufferError:         # a copy in another thread still holds it
                time.sleep(0.001)

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(CLOSED)

    def _enter(self) -> None:
        """Start a call that uses the descriptor; close() waits for it to _leave().
        (Copies alone need no such count: the export of the view they hold keeps
        close() waiting.)"""
        with self._lock:
            if self._closed:
                raise ValueError(CLOSED)
            me = threading.get_ident()
            self._users[me] = self._users.get(me, 0) + 1

    def _leave(self) -> None:
        with self._lock:
            me = threading.get_ident()
            n = self._users.pop(me) - 1
            if n:
                self._users[me] = n

    def _after_fork(self) -> None:
        """In a forked child only the forking thread lives on: the lock another
        thread held, its calls and the views its copies exported are gone with it."""
        self._lock = threading.Lock()
        me = threading.get_ident()
        self._users = {me: self._users[me]} if me in self._users else {}
        if self._closed:
            return
        view, size, limit, probe, word = self._state
        self._leaked += [view] + self._stale       # never released: left mapped, unused
        self._stale = []
        self._state = (self._map.view[:size], size, limit, probe, word)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def size(self) -> int:
        """The file's size now (it follows the file as it grows or shrinks)."""
        self._enter()
        try:
            return self._refresh()
        finally:
            self._leave()

    @property
    def address(self) -> int:
        """Where the mapping starts in memory (it moves when the file outgrows it)."""
        self._check_open()
        return self._map.address

    def fileno(self) -> int:
        """The file descriptor of MappedFile's own open file."""
        self._check_open()
        return self._fd

    def _file_size(self) -> int:
        # lseek(SEEK_END) is the cheapest question about the size (fstat builds a
        # stat_result: three times the cost) and works for block devices too.
        # The file offset it moves is MappedFile's own: nothing reads through it.
        return os.lseek(self._fd, 0, os.SEEK_END)

    def _refresh(self) -> int:
        """Ask the file its size; follow it, remapping if it outgrew the mapping."""
        size = self._file_size()
        if size != self._state[1]:
            with self._lock:
                if not self._closed and size != self._state[1]:
                    self._resize(size)
        return size

    def _resize(self, size: int) -> None:
        if size > self._map.length:
            new = None
            try:
                new = _Mapping(self._fd, _pages(2 * size if self._room else size),
                               self.mode == "r+", self.path)
            except OSError as exc:
                if exc.errno != errno.ENOMEM:
                    raise
                # no address space for room to grow: map just the file; and if even
                # that fails (vm.max_map_count), serve what is mapped (_careful says
                # why it cannot go past it)
                try:
                    new = _Mapping(self._fd, _pages(size), self.mode == "r+", self.path)
                except OSError as again:
                    if again.errno != errno.ENOMEM:
                        raise
            if new is not None:
                self._retired.append(self._map)
                self._map = new
        old = self._state[0]
        seen = min(size, self._map.length)
        self._publish(self._map.view[:seen], seen)
        try:
            old.release()   # a thread that fetched it before the swap retries (_copy)
        except BufferError:
            self._stale.append(old)

    def _publish(self, view: memoryview, size: int, rearm: bool = False) -> None:
        """Make (view, size) what calls see, with the probe armed on the file's
        last page. If the page cannot be read (a bad page, or the file cut under
        us), every call takes the careful path until the size changes.

        A file that grew a little keeps its probe (still the proof for every copy
        that ends before the probe's page; copies past it take the careful path):
        a log appended to in small writes is not re-armed on every write."""
        # A block device that shrinks (a loop device's backing file cut, then
        # losetup -c) keeps its page cache: no cut unmaps the probe, so a device
        # is always read the careful way, which asks its size.
        limit = (size - 1) // PAGE * PAGE if size and self._probed else -1
        if limit < 0:
            self._state = (view, size, -1, 0, 0)
            return
        _, _, kept, address, word = getattr(self, "_state", (None, 0, -1, 0, 0))
        if not rearm and 0 <= kept <= limit < kept + max(kept // 8, GROWTH_REARM):
            self._state = (view, size, kept, address, word)
            return
        armed = self._probe.arm(self._fd, limit)
        if armed is None:
            self._state = (view, size, -1, 0, 0)
        else:
            self._state = (view, size, limit, *armed)

    def _probe_failed(self, word: int) -> None:
        """The probe armed with word faulted or read another word: the file was cut
        since it was armed (or the probe armed again). Follow the size and arm
        the probe again, unless another thread has."""
        self._refresh()
        with self._lock:
            view, size, limit, _, now = self._state
            if limit >= 0 and now == word and not self._closed:
                self._publish(view, size, rearm=True)

    # -- the bad-range list ----------------------------------------------------

    def bad_ranges(self) -> list[tuple[int, int]]:
        """Every bad range seen so far: page-granular [start, end), merged and sorted."""
        self._check_open()
        with self._lock:
            return list(zip(self._starts, self._ends))

    def bad_range_faults(self) -> list[tuple[int, int, FaultInfo]]:
        """bad_ranges(), each with the first fault met in it: its ``cause`` (poison,
        io, protection, ...), signal and code say why the range is bad; its
        ``offset`` is the file offset of that fault."""
        self._check_open()
        with self._lock:
            return [(s, e, self._first_fault[s]) for s, e in zip(self._starts, self._ends)]

    def _bad_at_or_after(self, offset: int) -> tuple[int, int] | None:
        """The first bad range that ends after offset (called without the lock: the
        lists are replaced, never mutated, so a reader sees a consistent pair)."""
        starts, ends = self._starts, self._ends
        i = bisect.bisect_right(ends, offset)
        return (starts[i], ends[i]) if i < len(starts) else None

    def _remember(self, info: FaultInfo) -> None:
        """Record the page of a fault at file offset info.offset."""
        start = info.offset // PAGE * PAGE
        end = start + PAGE
        with self._lock:
            starts, ends = list(self._starts), list(self._ends)
            i = bisect.bisect_left(ends, start)
            j = bisect.bisect_right(starts, end)
            kept = info                # the fault a later EIO on the range reports
            if i < j:
                start, end = min(start, starts[i]), max(end, ends[j - 1])
                kept = self._first_fault.get(starts[i], info)
                for s in starts[i:j]:
                    self._first_fault.pop(s, None)
            starts[i:j], ends[i:j] = [start], [end]
            self._first_fault[start] = kept
            self._starts, self._ends = starts, ends

    def _known_bad(self, start: int, offset: int, what: str) -> MemoryFaultError:
        with self._lock:
            info = self._first_fault.get(start)
        if info is None:   # pragma: no cover - merged away under us: any fault of the range
            info = FaultInfo(self._map.address + offset, offset, "src", signal.SIGBUS, 0)
        return MemoryFaultError(info._replace(offset=offset, address=self._map.address + offset,
                                              side="src" if what == "read" else "dst"),
                                f"{what} (known bad range)", self.path)

    # -- reading and writing -------------------------------------------------

    def readinto(self, buf: Buffer, offset: int = 0) -> int:
        """Fill buf from the file at offset, as pread(2): the count, short at a bad
        byte or the end of the file, 0 at or past the end. Raises MemoryFaultError
        if the first byte is bad."""
        data, size, limit, probe, word = self._state
        if 0 <= offset < size and not self._starts:
            try:
                got = _read_split(buf, data, offset, limit, probe, word, self._fd)
            except (ValueError, TypeError):      # closed, or resized by another thread
                got = -2
            if type(got) is int:
                if got >= 0:
                    return got
                return self._checked(buf, offset, True, 0, None, word if got == -1 else None)
            assert isinstance(got, CopyResult)
            return self._checked(buf, offset, True, got.copied, got.fault)
        if offset < 0:
            raise ValueError(f"negative offset {offset}")
        return self._checked(buf, offset, True, 0, None)

    # The fast path of readinto(): the bytes before the file's last page (as last
    # seen) are copied from the mapping, proved by the probe (_ProbePage) to have
    # been in the file during the copy; the rest is read with pread(2), which is
    # exact at the end of a file, where a mapping shows zeros without a fault.
    # write() has no such pread half (pwrite(2) would extend a file cut under it):
    # a write that reaches the last page takes _careful(), which asks the size
    # around every copy. Faults and failed probes take the careful paths.

    def read(self, n: int, offset: int = 0) -> bytes:
        """Up to n bytes from offset (fewer at a bad byte or the end of the file)."""
        if n < 0:
            raise ValueError(f"negative size {n}")
        buf = bytearray(max(0, min(n, self.size - offset)))
        got = self.readinto(buf, offset) if buf else 0
        return bytes(buf) if got == len(buf) else bytes(buf[:got])

    def write(self, buf: Buffer, offset: int = 0) -> int:
        """Write data at offset (mode 'r+'), as pwrite(2) but never extending the
        file: the count of bytes now in the file, short at a bad byte or the end
        of the file, 0 at or past the end. Raises MemoryFaultError if the first
        byte is bad (ENOSPC for a hole the full file system cannot fill)."""
        if self.mode != "r+":
            raise OSError(errno.EBADF, "not open for writing (mode 'r+')", self.path)
        # readinto's fast path, mirrored (written out twice: a shared helper costs
        # a call, a fifth of a 4 KiB read)
        data, size, limit, probe, word = self._state
        if 0 <= offset < size and not self._starts:
            try:
                got = _copy_bracketed(data, buf, offset, 0, False, limit, probe, word)
            except (ValueError, TypeError):
                got = -3
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
        met `fault`, or found the probe armed with `failed_probe` failed): the size
        asked after every copy, growth followed, the bad-range list obeyed and
        kept. Returns the count that was in the file."""
        self._enter()
        try:
            if failed_probe is not None:
                self._probe_failed(failed_probe)
            if reading:
                return self._careful_read(buf, offset, done, fault)
            if not self._probed and done == 0 and fault is None and not self._starts:
                return self._device_copy(buf, offset, reading)
            return self._careful(buf, offset, reading, done, fault)
        finally:
            self._leave()

    def _careful_read(self, buf: Buffer, offset: int, done: int, fault: FaultInfo | None
                      ) -> int:
        """readinto() after a fault, a failed probe, past the size last seen or with
        bad ranges known: the fast path's split copy again, from where the call
        stopped, with the bad-range list obeyed and kept, growth followed and each
        fault judged; pread(2) alone where there is no probe to prove a copy."""
        out = memoryview(buf).cast("B")
        want = out.nbytes
        retries, probes = RETRIES, CHURN_RETRIES
        stamp: tuple[int, int, int] | None = None   # the file's, at the first fault
        while True:
            if fault is not None:
                if stamp is None:
                    stamp = self._stamp()
                verdict = self._judge(fault, offset, done, True, retries == 0, stamp)
                # The file was shorter when the page faulted: the page before it may
                # have been copied past the end then (zeros). Copy it again, or (when
                # the file ends before the fault now) do not count it.
                done = _before_page_before(offset, done) if verdict != STOP else done
                if verdict != RETRY:
                    return done
                fault, retries = None, retries - 1
            pos = offset + done
            if done >= want or pos >= self._refresh():
                return done
            n = want - done
            bad = self._bad_at_or_after(pos)
            if bad is not None and bad[0] <= pos:
                if done:
                    return done
                raise self._known_bad(bad[0], pos, "read")
            if bad is not None and bad[0] < pos + n:
                n = bad[0] - pos
            data, _, limit, probe, word = self._state
            try:
                got = _read_split(out[done:done + n], data, pos, limit, probe, word,
                                  self._fd) if probes else -2
            except (ValueError, TypeError):
                self._check_open()
                continue            # the file changed size after the view was fetched
            if isinstance(got, CopyResult):
                done += got.copied
                fault = got.fault
                continue
            if got == -1:           # cut during the copy, perhaps: count none of it
                self._probe_failed(word)
                probes -= 1
                continue
            if got < 0:
                got = self._pread(out[done:done + n], pos, done)
                if got == 0:        # the end of the file, or a bad page after done bytes
                    return done
            done += got

    def _pread(self, out: memoryview, pos: int, done: int) -> int:
        """pread(2) into out at file offset pos: the count (short at the end of the
        file or before a page it cannot read, 0 at the end). A page it cannot read
        at pos is bad: remembered (EIO), and raised if the call has nothing yet."""
        try:
            return os.preadv(self._fd, [out], pos)
        except OSError as exc:
            err = exc.errno or errno.EIO
            if err == errno.EFAULT:
                # The caller's buffer, at its first byte (pread(2) counts the bytes
                # before): the table-driven copy says what the fault was.
                res = _copy_or_report(out[:1], b"\0")
                if not isinstance(res, CopyResult) or res.fault is None:
                    raise
                raise MemoryFaultError(res.fault._replace(offset=done),
                                       "read: the caller's buffer (dst)", self.path,
                                       errno.EFAULT) from None
            info = FaultInfo(self._map.address + pos, pos, "src", 0, 0, "io")
            if err == errno.EIO:
                self._remember(info)
            if done:
                return 0
            raise MemoryFaultError(info, "read", self.path, err) from None

    def _careful(self, buf: Buffer, offset: int, reading: bool, done: int,
                 fault: FaultInfo | None) -> int:
        want = memoryview(buf).nbytes
        size: int | None = None        # the size, if asked after the last copy
        retries, churn, probes = RETRIES, CHURN_RETRIES, CHURN_RETRIES
        stamp: tuple[int, int, int] | None = None   # the file's, at the first fault
        while True:
            if fault is not None:
                size = None
                if stamp is None:
                    stamp = self._stamp()
                verdict = self._judge(fault, offset, done, reading, retries == 0, stamp)
                # The file was shorter when the page faulted: the page before it may
                # have been copied past the end then (zeros). Copy it again, or (when
                # the file ends before the fault now) do not count it.
                if verdict != RETRY:
                    if verdict == CUT:
                        done = _before_page_before(offset, done)
                    break
                done = _before_page_before(offset, done)
                fault, retries = None, retries - 1
            pos = offset + done
            size = self._refresh()
            if done >= want or pos >= size:
                break
            if pos >= self._map.length:     # the file outgrew a mapping made again in vain
                if done:
                    break
                raise _oserror(errno.ENOMEM, self.path, "mmap of the file's new length")
            n = min(want - done, size - pos)
            bad = self._bad_at_or_after(pos)
            if bad is not None and bad[0] <= pos:
                if done:
                    break
                raise self._known_bad(bad[0], pos, "read" if reading else "write")
            if bad is not None and bad[0] < pos + n:
                n = bad[0] - pos
            # The last try of a file that changed during every copy (a log
            # appended to, a file written in place) has a probe of its own.
            proof = self._probe_past(pos + n) if churn == 0 else None
            try:
                before = self._stamp()
                # cut since the size was asked? (st_size is 0 for a block device)
                n = min(n, (before[0] if self._probed else self._file_size()) - pos)
                res = self._copy(buf, done, pos, n, reading) if n > 0 else 0
                proven = proof is not None and proof[0].read() == proof[1]
            finally:
                if proof is not None:
                    proof[0].close()
            if n <= 0:
                size = None
                break
            if isinstance(res, int):
                changed = self._stamp() != before
                if changed and not proven:
                    # Cut and written again during the copy, perhaps: the tail of the
                    # page a cut fell in reads as zeros, and the size after cannot
                    # tell. Copy it again, the last time with a probe on the page
                    # past the copy's end, which no cut below that page spares.
                    if churn > 0:
                        churn -= 1
                        continue
                    if proof is not None:
                        # The probe saw a cut, below the copy's end or above it:
                        # again, and if the file is cut under every probe, count
                        # none of it (the file may have been that short).
                        if probes > 0:
                            probes -= 1
                            continue
                        size = None
                        break
                    # The file ends in the copy's last page (no page past it to
                    # probe): count the copy as pread(2) would, by the size asked
                    # just before it.
                done += res
                if bad is not None and pos + n == bad[0]:
                    size = None
                    break
                if done >= want and self._probed and not changed:
                    size = before[0]    # the size after the copy: the stamp is unchanged
                    break
            else:
                done += res.copied
                fault = res.fault
        if size is None:
            size = self._refresh()
        return max(0, min(done, size - offset))

    def _copy(self, buf: Buffer, done: int, pos: int, n: int, reading: bool
              ) -> int | CopyResult:
        while True:
            data = self._state[0]
            try:
                # Another thread may have followed the file down since the caller
                # asked its size: the file ends where the view does.
                n = min(n, len(data) - pos)
                if n <= 0:
                    return 0
                if reading:
                    return _copy_or_report(buf, data, n, done, pos)
                return _copy_or_report(data, buf, n, pos, done)
            except (ValueError, TypeError):
                self._check_open()
                if data is self._state[0]:
                    raise
                # the file changed size after this thread fetched its view: again

    def _device_copy(self, buf: Buffer, offset: int, reading: bool) -> int:
        """A block device's fast path: nothing cuts it (so no probe, no stamps), but
        it may shrink: the count is bounded by its size asked before and after."""
        size = self._refresh()
        want = memoryview(buf).nbytes
        if offset >= size or want == 0:
            return 0
        res = self._copy(buf, 0, offset, min(want, size - offset), reading)
        if not isinstance(res, int):
            return self._careful(buf, offset, reading, res.copied, res.fault)
        return max(0, min(res, self._file_size() - offset))

    def _probe_past(self, end: int) -> tuple[_ProbePage, int] | None:
        """A probe (see _ProbePage) armed for one copy on the first page at or after
        file offset `end`: (the page, its word), or None if the file does not
        reach past that page's start."""
        page = _ProbePage()
        word = page.arm(self._fd, -(-end // PAGE) * PAGE)
        if word is None:
            page.close()
            return None
        return page, word

    def _stamp(self) -> tuple[int, int, int]:
        """What changes when anyone cuts or writes the file. (Asking for ctime also
        makes the kernel's next change of it fine-grained, on multigrain file
        systems, so two changes within a clock tick still differ.)"""
        return _file_stamp(self._fd)

    def _judge(self, fault: FaultInfo, offset: int, done: int, reading: bool,
               last: bool, stamp: tuple[int, int, int]) -> int:
        """Judge a fault met `done` bytes into a call at file offset `offset`: STOP
        if the call stops there (raising if nothing was done, remembering the page
        if it is bad), RETRY if it should copy again from there, CUT if it stops
        before the page before it (the file was cut under it).

        A SIGBUS that says nothing of its cause (BUS_ADRERR) is a page past the end
        of the file or a page the kernel could not read. read(2) of the byte
        tells them apart, now: 0 bytes is the end of the file (a cut), EIO a bad
        page, whatever else the file did meanwhile (a log appended to, a page
        rewritten); bytes mean the page is readable now (the file was cut and
        written again since the fault), so the copy is tried again. A page that
        faults on every try while read(2) reads it is bad in this mapping (poison
        the kernel did not name) and remembered, unless the file changed since
        the first fault (`stamp`): then it was cut under every copy, and the call
        fails there as at a bad byte, but nothing is remembered."""
        what = "read" if reading else "write"
        if fault.side != ("src" if reading else "dst"):
            # The caller's buffer is bad, not the file: EFAULT, nothing remembered.
            raise MemoryFaultError(fault, f"{what}: the caller's buffer ({fault.side})",
                                   self.path, errno.EFAULT)
        at = offset + done
        info = fault._replace(offset=at)
        err = errno.EIO
        if info.signal == signal.SIGBUS and info.cause == "io":
            readable = self._readable(at)
            if readable is None:
                return CUT              # at or past the end of the file now
            if readable == 0 and not last:
                return RETRY
            if readable == 0 and not reading and self._fs_full():
                # A hole the full file system could not fill: not a bad page.
                info, err = info._replace(cause="no space"), errno.ENOSPC
            elif readable == 0 and self._stamp() != stamp:
                pass                    # cut under every copy: fail this call only
            else:
                # read(2) fails there too (readable is its errno), or the mapping
                # faults on every try while read(2) reads it (poison in our mapping)
                err = readable or errno.EIO
                self._remember(info)
        else:
            self._remember(info)           # poison and protection say so themselves
        if done == 0:
            raise MemoryFaultError(info, what, self.path, err)
        return STOP

    def _readable(self, at: int) -> int | None:
        """Ask read(2) for the byte at file offset `at`: None if it is at or past the
        end of the file, 0 if it reads, else the errno it fails with."""
        try:
            return 0 if os.pread(self._fd, 1, at) else None
        except OSError as exc:
            return exc.errno or errno.EIO

    def _fs_full(self) -> bool:
        """Whether the file system has no blocks left: a write fault into a hole
        then means the kernel could not allocate it (ENOSPC, not a bad page)."""
        st = os.fstatvfs(self._fd)
        # No blocks at all (a memfd, a tmpfs without a size limit) is "unknown".
        return st.f_blocks > 0 and (st.f_bavail == 0 or st.f_bfree == 0)

    # -- durability ----------------------------------------------------------

    def sync(self, offset: int = 0, length: int | None = None) -> None:
        """Write the dirty pages of [offset, offset + length) back to the file and
        wait (msync MS_SYNC); a write-back error (EIO, ENOSPC) is an OSError."""
        if offset < 0 or (length is not None and length < 0):
            raise ValueError(f"negative offset or length ({offset}, {length})")
        self._enter()
        try:
            self._sync(offset, length)
        finally:
            self._leave()

    def _sync(self, offset: int, length: int | None) -> None:
        size = self._refresh()
        end = size if length is None else min(size, offset + length)
        start = offset // PAGE * PAGE
        if end <= start:
            return
        with self._lock:
            m = self._map
            if _libc.msync(m.address + start, _pages(end) - start, MS_SYNC) != 0:
                raise _oserror(ctypes.get_errno(), self.path, "msync")

    def flush(self) -> None:
        """sync() the whole file in mode 'r+'; nothing to do in mode 'r'."""
        self._check_open()
        if self.mode == "r+":
            self.sync()

    # -- scrubbing -----------------------------------------------------------

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
        or, for a hole skipped, its length (an int). The bytes are those readinto() would
        count: only bytes in the file during the read, none of a bad page. A range
        the file was cut and written again under at every try is passed over
        without reaching sink.

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
        if start < 0 or (end is not None and end < start):
            raise ValueError(f"bad range to scrub: start {start}, end {end}")
        self._enter()
        try:
            return self._scrub(progress, start, end, sink, skip_holes, restore_cache)
        finally:
            self._leave()

    def _scrub(self, progress: Callable[[int, int], object] | None, start: int,
               end: int | None, sink: Callable[[int, memoryview | int], object] | None,
               skip_holes: bool, restore_cache: bool) -> list[tuple[int, int]]:
        buf = bytearray(SCRUB_BUF if sink is not None else SCRUB_SINK)
        offset = start
        stop = self._refresh()
        if end is not None:
            stop = min(stop, end)
        keeper = Restorer(self._fd, max(SCRUB_CHUNK, readahead(self._fd))) \
            if restore_cache and sees_cache(self._fd) else None
        while offset < stop:
            self._check_open()                      # close() in another thread: stop
            bad = self._bad_at_or_after(offset)
            if bad is not None and bad[0] <= offset:
                offset = bad[1]                     # known bad: skip, untouched
            else:
                data, data_end = self._next_data(offset, stop) if skip_holes else \
                    (offset, stop)
                if data > offset:                   # a hole, or the file cut short
                    stop = min(stop, self._refresh())
                    if sink is not None and min(data, stop) > offset:
                        sink(offset, min(data, stop) - offset)
                    offset = max(offset, min(data, stop))
                else:
                    n = min(SCRUB_CHUNK, data_end - offset)
                    if bad is not None:
                        n = min(n, bad[0] - offset)
                    first = offset
                    if keeper is not None:
                        keeper.before(self._map.address, offset, n, stop)
                    if sink is None:
                        offset, stop = self._scrub_chunk(buf, offset, n, stop)
                    else:
                        offset, stop = self._scrub_chunk_into(buf, offset, n, stop, sink)
                    if keeper is not None:
                        keeper.after(first, offset - first)
            if progress is not None:
                progress(min(offset, stop), stop)
        return self.bad_ranges()

    def _next_data(self, offset: int, stop: int) -> tuple[int, int]:
        """Where the file's next data at or after offset starts and ends (SEEK_DATA,
        SEEK_HOLE), within stop: (stop, stop) if only a hole (or the end of the
        file) is left, (offset, stop) where the file system cannot tell."""
        try:
            data = os.lseek(self._fd, offset, os.SEEK_DATA)
            hole = os.lseek(self._fd, data, os.SEEK_HOLE) if data < stop else stop
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                return offset, stop
            data = hole = stop
        return min(data, stop), min(max(hole, data + PAGE), stop)

    def _scrub_chunk(self, buf: bytearray, offset: int, n: int, stop: int) -> tuple[int, int]:
        """Read [offset, offset + n) through buf: the offset reached (past a page
        that faulted) and where the scrub stops now."""
        res = self._scrub_copy(buf, offset, n)
        if isinstance(res, int):
            self._drop(offset, res)
            if res < n:                             # the file shrank under us
                stop = min(stop, self._refresh())
            return offset + res, stop
        assert res.fault is not None
        self._drop(offset, res.copied)
        offset += res.copied
        rest_of_page = memoryview(buf)[:PAGE - offset % PAGE]
        with contextlib.suppress(MemoryFaultError):     # remembers a bad page
            self._checked(rest_of_page, offset, True, 0, res.fault)
        stop = min(stop, self._refresh())
        bad = self._bad_at_or_after(offset)
        if offset < stop and (bad is None or bad[0] > offset):
            offset = offset // PAGE * PAGE + PAGE       # always move on
        return offset, stop

    def _scrub_chunk_into(self, buf: bytearray, offset: int, n: int, stop: int,
                          sink: Callable[[int, memoryview | int], object]) -> tuple[int, int]:
        """Read [offset, offset + n) a buffer at a time with readinto() (exact
        counts) and hand the bytes to sink; stop early at a bad page (which
        readinto() remembers: the scrub skips it next) or the end of the file."""
        view = memoryview(buf)
        first, end = offset, offset + n
        try:
            while offset < end:
                piece = view[:min(len(view), end - offset)]
                try:
                    got = self.readinto(piece, offset)
                except MemoryFaultError:
                    bad = self._bad_at_or_after(offset)
                    if bad is None or bad[0] > offset:
                        raise                   # not the file's (EFAULT): not ours to skip
                    break
                if got:
                    sink(offset, piece[:got])
                offset += got
                if got < len(piece):
                    stop = min(stop, self._refresh())
                    bad = self._bad_at_or_after(offset)
                    if got == 0 and offset < stop and (bad is None or bad[0] > offset):
                        # cut and written again under every try: pass the page over
                        offset = offset // PAGE * PAGE + PAGE
                    break
        finally:
            self._drop(first, offset - first)
        return offset, stop

    def _scrub_copy(self, buf: bytearray, offset: int, n: int) -> int | CopyResult:
        """Read [offset, offset + n) through buf (one call: the pieces are looped in
        C): the count, short if the file shrank, or the CopyResult of a fault."""
        while True:
            data = self._state[0]
            try:
                n = min(n, len(data) - offset)
                if n <= 0:
                    return 0
                return _copy_through(buf, data, offset, n)
            except (ValueError, TypeError):
                self._check_open()
                if data is self._state[0]:
                    raise
                # the file changed size after this thread fetched its view: again

    def _drop(self, offset: int, length: int) -> None:
        """Unmap the pages of [offset, offset + length) from this process (the page
        cache keeps them), so a scrub never holds the whole file resident."""
        with self._lock:
            if not self._closed:
                self._map.drop(offset // PAGE * PAGE, (offset + length) // PAGE * PAGE)

    # -- clients ---------------------------------------------------------------

    def read_array(self, dtype: Any, count: int = -1, offset: int = 0) -> Any:
        """A new numpy array of count items of dtype (-1: to the end of the file),
        filled from offset; see :func:`mcsafe.arrays.read_array`."""
        from .arrays import read_array
        return read_array(self, dtype, count, offset)


_open_files: weakref.WeakSet[MappedFile] = weakref.WeakSet()


def _reinit_after_fork() -> None:
    for mf in list(_open_files):
        mf._after_fork()


os.register_at_fork(after_in_child=_reinit_after_fork)


def _before_page_before(offset: int, done: int) -> int:
    """The count of a call at offset that stops before the page before the one
    where it is now."""
    return max(0, min(done, ((offset + done) // PAGE - 1) * PAGE - offset))


def _open(file: str | os.PathLike[str] | int, mode: str) -> tuple[int, str]:
    """Open without blocking (a FIFO would), and refuse what is not a file."""
    flags = (os.O_RDONLY if mode == "r" else os.O_RDWR) | os.O_CLOEXEC | os.O_NONBLOCK | \
        os.O_NOCTTY
    if isinstance(file, int):
        path = _fd_path(file, mode)
        _check_kind(os.fstat(file), path)
        fd = os.open(f"/proc/self/fd/{file}", flags)
    else:
        path = os.fspath(file)
        fd = os.open(path, flags)
    try:
        _check_kind(os.fstat(fd), path)
        _check_fs(fd, path)
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd, path


def _fd_path(fd: int, mode: str) -> str:
    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    except OSError as exc:
        raise _oserror(exc.errno or errno.EBADF, f"fd {fd}", "fcntl") from None
    if mode == "r+" and flags & os.O_ACCMODE != os.O_RDWR:
        raise _oserror(errno.EBADF, f"fd {fd}", "mode 'r+' needs a descriptor open O_RDWR")
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return f"fd {fd}"


def _check_kind(st: os.stat_result, path: str) -> None:
    if stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode):
        return
    kind = _KINDS.get(stat.S_IFMT(st.st_mode), "not a regular file")
    raise OSError(errno.ENODEV if stat.S_ISCHR(st.st_mode) else errno.EINVAL,
                  f"{kind}, not a regular file or a block device: cannot be mapped", path)


def _fs_type(fd: int) -> int:
    """The statfs f_type of fd's file system (0 if unknown)."""
    buf = ctypes.create_string_buffer(256)       # struct statfs; f_type comes first
    if _libc.fstatfs(fd, buf) != 0:
        return 0
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


def _check_fs(fd: int, path: str) -> None:
    """Refuse a file of procfs, sysfs and the like: its size is not its contents,
    and mapping it fails or shows nothing."""
    fs = _PSEUDO_FS.get(_fs_type(fd))
    if fs:
        raise OSError(errno.ENODEV, f"a {fs} file, whose size is not its contents: "
                                    "cannot be mapped", path)
