"""``mcsafe rescue``'s one-copy path: pwrite(2) to DST straight from SRC's mapping.

The kernel then copies SRC's bytes *from user memory* (copy_from_user), once,
where the table-covered path copies them into a buffer and pwrite(2) copies that
buffer again. A page of SRC that cannot be read makes the write come back short
(or fail with EFAULT when it is the first), never a signal: an I/O error of a
file system (a FUSE page that fails with EIO) or a cut file faults inside the
kernel's copy, whose exception table fixes it up; a machine check there (latent
poison) is recovered the same way on x86-64 since Linux 5.17 (see
docs/ARCHITECTURE.md, "Machine checks"). At a short write, rescue hands the rest
of the range to MappedFile.scrub, today's path, which finds the exact bad range
and its cause: the bytes and the mapfile come out the same either way.
"""

from __future__ import annotations

import _thread
import errno
import mmap
import os
import signal

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, Literal

from .._mcsafe import _advise as advise
from .._mcsafe import _map as map_memory
from .._mcsafe import _read_in as read_in
from .._mcsafe import _Memory as Memory
from .._mcsafe import _unmap as unmap
from ..mapped._sys import next_data
from ..pagecache import PAGE, Restorer, all_cached, readahead

MADV_DONTNEED = 4
MADV_POPULATE_READ = 22      # Linux 5.14
MAP_FIXED, PROT_NONE = 0x10, 0
#: Where SRC's mapping starts in memory: a multiple of the PMD size (x86-64's huge
#: page), as its file offset 0 is, so that a page-cache folio of that size (ext4
#: and XFS read ahead in them) maps with one page-table entry, not 512.
PMD_SIZE = 2 << 20
#: Bytes mapped in, written and dropped at a time (as MappedFile.scrub's chunk:
#: fewer TLB shootdowns than smaller ones).
CHUNK = 16 << 20

#: A machine check in copy_from_user is recovered *and* the process sent no SIGBUS
#: for it (kill_me_never: the write just comes back short) since a6e3cf70b772, in
#: 5.16; one release of margin.
KERNEL_FLOOR = (5, 17)
#: Set to 0 in the environment to always take the two-copy path (the table-covered
#: read into a buffer, then pwrite).
SWITCH = "MCSAFE_RESCUE_ONE_COPY"


def unavailable(machine: str | None = None, release: str | None = None) -> str | None:
    """Why the one-copy path is not taken here, or None where it is: only on x86-64
    from KERNEL_FLOOR, where the kernel's copy from user memory survives poison."""
    if os.environ.get(SWITCH, "1") == "0":
        return f"{SWITCH}=0"
    machine = machine or os.uname().machine
    if machine not in ("x86_64", "AMD64"):
        return f"{machine}: no machine-check recovery in the kernel's copy from user memory"
    release = release or os.uname().release
    try:
        version = tuple(int(x) for x in release.split("-")[0].split(".")[:2])
    except ValueError:
        return f"kernel {release}: version not understood"
    if version < KERNEL_FLOOR:
        return f"kernel {release}: older than {'.'.join(map(str, KERNEL_FLOOR))}"
    return None


class SourceMap:
    """SRC mapped whole, read only and shared, at a PMD_SIZE-aligned address where it
    spans one: only the kernel reads through it (MADV_POPULATE_READ and pwrite(2)),
    so no page of it ever faults in this process. OSError where SRC cannot be
    mapped."""

    def __init__(self, fd: int, length: int) -> None:
        self.length = length
        self.address = 0
        if length == 0:
            return
        # The kernel aligns a mapping of a file system with large folios itself
        # (thp_get_unmapped_area: ext4, XFS); elsewhere (tmpfs, FUSE) it is placed by hand.
        address = map_memory(length, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if length >= PMD_SIZE and address % PMD_SIZE:
            unmap(address, length)
            address = map_aligned(fd, length)
        self.address = address

    def close(self) -> None:
        if self.address:
            unmap(self.address, self.length)
            self.address = 0


def map_aligned(fd: int, length: int) -> int:
    """Map fd's file as SourceMap does, at a PMD_SIZE-aligned address: PMD_SIZE more
    than needed is reserved, the file put at the first aligned address inside, and
    the rest given back on either side. (ctypes, for mmap at a given address: only
    where the kernel did not align the mapping.)"""
    import ctypes

    from .._libc import MAP_FAILED, libc

    def error() -> OSError:
        err = ctypes.get_errno()
        return OSError(err, os.strerror(err))

    span = length + PMD_SIZE
    base = libc.mmap(None, span, PROT_NONE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
    if base == MAP_FAILED:
        raise error()
    address = -(-base // PMD_SIZE) * PMD_SIZE
    if libc.mmap(address, length, mmap.PROT_READ, mmap.MAP_SHARED | MAP_FIXED, fd,
                 0) == MAP_FAILED:
        failed = error()
        libc.munmap(base, span)
        raise failed
    if address > base:
        libc.munmap(base, address - base)
    end = -(-(address + length) // PAGE) * PAGE
    if base + span > end:
        libc.munmap(end, base + span - end)
    return address


class Stop(Exception):
    """The one-copy path cannot go on here (DST failed: the message says why)."""


def copy(src_fd: int, address: int, dst_fd: int, start: int, end: int,
         written: Callable[[int, int], object], hole: Callable[[int, int], object],
         progress: Callable[[int, int], object], size_now: Callable[[], int],
         restore_cache: bool) -> tuple[int, int]:
    """Copy [start, end) of SRC (mapped whole at address) to the same offsets of DST
    with pwrite(2) from the mapping, chunk by chunk, holes skipped (hole(offset,
    n)); written(offset, n) after each write, progress(offset, end) after each
    chunk. Each chunk is first mapped in whole (MADV_POPULATE_READ), which fails
    where a page of SRC cannot be read, before DST is touched: the write into
    DST starts only once SRC's pages are there, so it is not cut short half way
    through a file system's folio (a short write can leave the folio's blocks
    past it allocated as zeros, where the rescue leaves a hole).

    While a chunk is written, a second thread (Ahead) maps in the next one of the
    same extent and drops the one written before, where the Restorer need not
    follow them; it has ended, and no chunk is left mapped, once copy() returns
    or raises.

    Returns (offset, upto): [offset, upto) is where it stopped and what the
    caller's careful path must read next (a chunk that did not map in, the rest
    of one whose write came back short, or SRC cut); offset == upto == end when
    all was copied. Stop (with errno's message) if DST could not be written,
    after written() of what was."""
    offset, stop = start, end
    keeper: Restorer | None = None
    ahead = max(CHUNK, readahead(src_fd)) if restore_cache else 0
    helper: Ahead | Literal[False] | None = None    # False: no thread to be had
    pending: tuple[int, int] | None = None      # what the helper maps in: [first, end)
    behind: tuple[int, int] | None = None       # written, still mapped: [first, end)
    current: tuple[int, int] | None = None      # mapped in, being written: [first, end)
    try:
        while offset < stop:
            data, data_end = next_data(src_fd, offset, stop)
            if data > offset:                           # a hole, or SRC cut short
                stop = min(stop, size_now())
                if min(data, stop) > offset:
                    hole(offset, min(data, stop) - offset)
                offset = max(offset, min(data, stop))
                progress(min(offset, stop), stop)
                continue
            n = min(CHUNK, data_end - offset)
            first = offset // PAGE * PAGE
            follow = None           # the Restorer, where it must follow this chunk
            mapped = None           # whether this chunk is mapped in (None: not tried)
            if pending is not None:
                assert helper
                outcome = helper.result()
                if outcome != SKIPPED:
                    if pending == (first, offset + n):
                        mapped = outcome == MAPPED
                    else:                               # SRC changed: not this chunk
                        _drop(address, *pending)
                pending = None
            if mapped is None:
                if restore_cache and _brings_in(src_fd, keeper, offset,
                                                min(n + ahead, stop - offset)):
                    keeper = follow = keeper or Restorer(src_fd, ahead)
                    follow.before(address, offset, n, stop)
                mapped = advise(address + first, offset + n - first,
                                MADV_POPULATE_READ) == 0
            if not mapped:
                if behind is not None:
                    _drop(address, *behind)
                    behind = None
                _drop(address, first, offset + n)
                if follow is not None:              # what it brought in goes back first
                    follow.after(offset, n)
                return offset, offset + n           # a page that fails: the careful path's
            current = (first, offset + n)
            following = offset + n
            if follow is None and following < data_end:
                if helper is None:
                    helper = Ahead.started()
                if helper:      # the next chunk of this extent mapped in meanwhile
                    pending = (following // PAGE * PAGE,
                               following + min(CHUNK, data_end - following))
                    check = (following, min(pending[1] - following + ahead,
                                            stop - following)) if restore_cache else None
                    helper.start(_map_in(src_fd, address, keeper, behind, pending, check))
            if pending is None and behind is not None:
                _drop(address, *behind)
            behind = None
            got, err = _write(dst_fd, address + offset, n, offset)
            if got:
                written(offset, got)
            if pending is not None:     # the helper drops it (its last page: pending's)
                behind = (first, pending[0])
            else:
                _drop(address, first, offset + n)
            current = None
            if follow is not None:
                follow.after(offset, got)
            offset += got
            if err:
                raise Stop(os.strerror(err))
            if got < n:     # (no progress first: a stop asked now comes after scrub's verdict)
                return offset, offset - got + n
            progress(min(offset, stop), stop)
        return (offset, offset) if offset >= end else (offset, end)
    finally:
        if helper:
            helper.close()
        for left in (pending, behind, current):     # (written() or a handler raised)
            if left is not None:
                _drop(address, *left)


#: What Ahead's job says of the chunk it was given.
MAPPED, FAILED, SKIPPED = "mapped", "failed", "skipped"


def _map_in(fd: int, address: int, keeper: Restorer | None, behind: tuple[int, int] | None,
            chunk: tuple[int, int], check: tuple[int, int] | None) -> Callable[[], str]:
    """The helper's job: drop the chunk behind (written), then map in chunk ([first,
    end) of SRC): MAPPED, or FAILED where a page of it cannot be read; SKIPPED (and
    nothing mapped) where the chunk would be read from SRC's storage (some page of it
    not in the page cache with its data read), or where check, the chunk and the
    readahead after it, may bring pages into the page cache: the writing thread
    then maps it in itself, with the Restorer following where it must, as it does
    every chunk when there is no helper."""
    def job() -> str:
        if behind is not None:
            _drop(address, *behind)
        first, end = chunk
        if not _read_already(address + first, end - first) or \
                (check is not None and _brings_in(fd, keeper, *check)):
            return SKIPPED
        return MAPPED if advise(address + first, end - first, MADV_POPULATE_READ) == 0 \
            else FAILED
    return job


def _read_already(address: int, length: int) -> bool:
    """Whether every page of [address, address + length) of SRC's mapping is in the
    page cache with its data read (mincore(2); cachestat would count a folio a failed
    read left): mapping them in then reads nothing from SRC's storage, so a stop
    never waits for a read only the helper asked for (a slow or failing page, a FUSE
    server that does not answer), and a bad page is asked of the disk as often as
    without the helper. False where the page cache is not ours to see. (A page
    evicted between this and the map-in is read: a window of microseconds.)"""
    return read_in(address, length)


class Ahead:
    """A second thread for copy(), that runs one job at a time while the calling
    thread writes: it maps in the chunk to write next, and drops the one written
    last, so that the writing thread only writes (MADV_POPULATE_READ and
    MADV_DONTNEED of a 16 MiB chunk take about a tenth of its pwrite(2)).

    Every signal is blocked on it, so that those sent to the process reach the
    calling thread, as they did when there was only one: SIGINT asks a stop
    between chunks. (_thread and its locks, not threading: the command's start
    imports no more than it must.)"""

    def __init__(self) -> None:
        self._go = _thread.allocate_lock()
        self._go.acquire()
        self._job: Callable[[], str] | None = None
        # Each job has a lock of its own, released once the job is over, and
        # _over set just before: see _wait for why.
        self._done = _thread.allocate_lock()
        self._over = False
        self._busy = False
        self._outcome: tuple[str, BaseException | None] = ("", None)
        self._ended: _thread.LockType | None = None     # (before 3.13: see _serve)
        self._leaving = False
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        try:
            if hasattr(_thread, "start_joinable_thread"):   # Python 3.13
                join = _thread.start_joinable_thread(self._serve).join
                self._join = lambda: _retried(join)
            else:
                _thread.start_new_thread(self._serve, ())
                self._join = lambda: _wait(self._ended, lambda: self._leaving)  # type: ignore[arg-type]
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)

    @classmethod
    def started(cls) -> Ahead | Literal[False]:
        """A new Ahead; False where no thread can be started (RLIMIT_NPROC): copy()
        then goes on alone."""
        try:
            return cls()
        except RuntimeError:
            return False

    def _serve(self) -> None:
        if not hasattr(_thread, "start_joinable_thread"):
            # released once this thread's state is gone, as threading joins (set
            # before the first job: close() waits for one)
            self._ended = _thread._set_sentinel()  # type: ignore[attr-defined]
        while True:
            self._go.acquire()
            job, done = self._job, self._done
            if job is None:                 # close(): the thread ends
                self._leaving = self._over = True
                done.release()
                return
            try:
                self._outcome = (job(), None)
            except BaseException as exc:    # handed to result()
                self._outcome = ("", exc)
            self._over = True
            done.release()

    def _run(self, job: Callable[[], str] | None) -> None:
        self._job, self._busy, self._over = job, True, False
        self._done = _thread.allocate_lock()
        self._done.acquire()
        self._go.release()

    def start(self, job: Callable[[], str]) -> None:
        """Run job on the thread (the last one's result() was taken)."""
        assert not self._busy
        self._run(job)

    def result(self) -> str:
        """Wait for the job started last to end: what it returned; what it raised is
        raised here."""
        if not self._busy:
            return ""
        try:
            _wait(self._done, lambda: self._over)
        finally:                            # (_wait raises only once the job is over)
            self._busy = False
        (value, exc), self._outcome = self._outcome, ("", None)
        if exc is not None:
            raise exc
        return value

    def close(self) -> None:
        """Wait for the job, then end the thread: once this returns (or raises what
        the job raised), it runs no job and touches no mapping."""
        try:
            self.result()
        finally:
            self._run(None)
            try:
                _wait(self._done, lambda: self._over)
            finally:
                self._busy = False
                self._join()


def _wait(lock: _thread.LockType, over: Callable[[], bool]) -> None:
    """Wait until lock, released once by the thread whose end over() tells, is, or
    over() is true, whatever a signal handler raises meanwhile (a
    KeyboardInterrupt): the wait goes on, and what was raised is raised once it is
    over. (A handler may raise after acquire() took the lock: asking for it again
    would wait for ever. over(), set before the release, tells the wait is over,
    whether acquire() took it or not; the lock is not used again.)"""
    raised: BaseException | None = None
    while True:
        try:
            lock.acquire()
            break
        except BaseException as exc:
            raised = exc
            if over():
                break
    if raised is not None:
        raise raised


def _retried(wait: Callable[[], object]) -> None:
    """Call wait() (a join, which may be called again once it has returned) until it
    returns, whatever a signal handler raises meanwhile: what was raised is raised
    once the wait is over."""
    raised: BaseException | None = None
    while True:
        try:
            wait()
            break
        except BaseException as exc:
            raised = exc
    if raised is not None:
        raise raised


def _brings_in(fd: int, keeper: Restorer | None, offset: int, length: int) -> bool:
    """Whether reading [offset, offset + length) of SRC (a chunk and the readahead
    after it) may bring pages into the page cache, so that the Restorer must
    follow it: some are not cached now, or were not before this run read them.
    Asked per chunk, as memory pressure or another process may evict SRC's pages
    mid-run; where all are cached, nothing is read (or read ahead), and the
    Restorer's mincore(2) of every page (3% of a rescue of a cached file) is saved."""
    return not all_cached(fd, offset, length) or \
        (keeper is not None and keeper.brought_in(offset, length))


def _drop(address: int, start: int, end: int) -> None:
    """Unmap [start, end) of SRC's mapping from this process's page tables (the page
    cache keeps the pages): memory stays bounded whatever SRC's size."""
    advise(address + start, end - start, MADV_DONTNEED)


def _write(fd: int, address: int, n: int, offset: int) -> tuple[int, int]:
    """pwrite(2) n bytes from address to fd at offset: (how many were written, 0 or
    the errno of an error of DST's); fewer than n without an error where SRC's
    page faulted (EFAULT). (os.pwrite goes on after EINTR itself.)"""
    done = 0
    while done < n:
        try:
            k = os.pwrite(fd, Memory(address + done, n - done), offset + done)
        except OSError as exc:
            if exc.errno == errno.EFAULT:           # SRC's page: the careful path's
                return done, 0
            return done, exc.errno or errno.EIO
        if k == 0:
            return done, 0
        done += k
    return done, 0
