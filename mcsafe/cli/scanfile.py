"""One file of ``mcsafe scan``: opened, read whole through the exception table,
and reported with its bad ranges and their cause, or with what happened to it.

A small file (up to 1 MiB) is mapped and copied in one call of
:func:`mcsafe.copy_report`: per-file cost decides a tree of small files. A
copy that faults, and every larger file or block device, goes to
:meth:`mcsafe.MappedFile.scrub`, which tells a bad page from a file cut
short under it and remembers each bad page with the fault's cause. A file
that changes while it is read (grows, shrinks, is written, replaced or
deleted) is reported as changed, never as bad for that.
"""

from __future__ import annotations

import errno
import mmap
import os
import signal
import stat

from .._mcsafe import _ensure_front, _read_mapped, _scan_small
from ..pagecache import Snapshot, evict_cold, sees_cache, sees_every_cache
from .stop import Stopped
from .walk import Target, _kind_name

TYPE_CHECKING = False
if TYPE_CHECKING:       # typing, and MappedFile (for large files only): loaded where used
    from typing import Any, Callable

    from .._types import CopyResult
    from .walk import Files

SMALL = 1 << 20          # files up to this size are read by one mapped copy
SINK = 16 << 10          # where their bytes are copied to, a piece at a time (in L1)
BATCH = 256              # files of a folder read per call of the C reader, at most
BUDGET = 16 << 20        # and bytes, about: a stop is honoured within as much reading as
                         # between a large file's chunks (scrub.SCRUB_CHUNK)
PAGE = mmap.PAGESIZE
_OPEN = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC

#: Every status a file can end with.
STATUSES = ("clean", "bad", "changed", "interrupted", "vanished", "skipped", "error")


class FileReport:
    """What the scan of one path found (the JSON object of ``--json``)."""

    __slots__ = ("path", "status", "kind", "size", "done", "bad", "change", "size_now",
                 "message", "link")

    def __init__(self, path: str, status: str, kind: str | None = None,
                 size: int | None = None, done: int = 0,
                 bad: list[tuple[int, int, str]] | None = None, change: str | None = None,
                 size_now: int | None = None, message: str | None = None,
                 link: tuple[int, int] | None = None) -> None:
        self.path = path
        self.status = status            #: one of STATUSES
        self.kind = kind                #: "file", "block device", or what was skipped
        self.size = size                #: bytes when opened
        self.done = done                #: how far the scan got (== size when whole)
        self.bad = bad if bad is not None else []   #: (start, end, cause)
        self.change = change            #: grew, shrank, modified, replaced, deleted
        self.size_now = size_now        #: bytes when the scan ended, if it changed
        self.message = message          #: why: for every status but clean (and bad, unless it changed)
        self.link = link                #: (st_dev, st_ino) of a file with several links

    def __repr__(self) -> str:
        return f"FileReport({self.as_json()!r})"

    def fields(self) -> tuple[Any, ...]:
        """Every field, in __init__'s order: FileReport(*r.fields()) is r again."""
        return (self.path, self.status, self.kind, self.size, self.done, self.bad,
                self.change, self.size_now, self.message, self.link)

    @property
    def bad_bytes(self) -> int:
        return sum(e - s for s, e, _ in self.bad)

    def as_json(self) -> dict[str, Any]:
        return {"type": "file", "path": self.path, "status": self.status, "kind": self.kind,
                "size": self.size, "done": self.done,
                "bad": [{"start": s, "end": e, "cause": c} for s, e, c in self.bad],
                "bad_bytes": self.bad_bytes, "change": self.change, "size_now": self.size_now,
                "message": self.message}


class Scanner:
    """Scans targets one after the other in this process.

    progress(n) is told of every n bytes passed (read, or skipped as holes or
    bad); stopped() is asked between chunks and files, and a True stops the
    file being read (its report says interrupted). restore_cache: give back
    the page cache pages the scan brought in (see mcsafe.pagecache)."""

    def __init__(self, progress: Callable[[int], object], stopped: Callable[[], bool],
                 restore_cache: bool = True) -> None:
        self.progress = progress
        self.stopped = stopped
        self.restore_cache = restore_cache
        self.sink = bytearray(SINK)
        self.residency = bytearray(SMALL // PAGE)      # mincore(2) of a small file
        self.seen: set[tuple[int, int]] = set()     # files with several links, scanned
        _ensure_front()         # small files are read without a MappedFile, which checks it

    def scan(self, target: Target, faulted: CopyResult | None = None) -> FileReport | None:
        """The report on target; None for a second link to a file already scanned.
        faulted: the batch reader's read of it as a small file, which faulted: it
        goes straight to the scrub, not read that way again (and, stopped before
        the scrub, counts the bytes that read read)."""
        path = target.path
        try:
            fd = os.open(target.name, _OPEN | (0 if target.named else os.O_NOFOLLOW),
                         dir_fd=target.dir_fd)
        except OSError as exc:
            return _open_failed(target, exc)
        try:
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode):
                kind, size = "file", st.st_size
            elif stat.S_ISBLK(st.st_mode) and target.named:
                kind, size = "block device", os.lseek(fd, 0, os.SEEK_END)
            else:       # it was something else when walked, or is not a file to scan
                what = _kind_name(st.st_mode)
                if target.named:
                    return FileReport(path, "error", what,
                                      message="not a regular file or block device")
                return FileReport(path, "changed", what, change="replaced",
                                  message=f"replaced by a {what} before it could be scanned")
            if target.root_dev is not None and st.st_dev != target.root_dev:
                return None                        # mounted over from another file system
            link = None
            if st.st_nlink > 1 and kind == "file":
                link = (st.st_dev, st.st_ino)
                if link in self.seen:
                    return None
                self.seen.add(link)
            report = FileReport(path, "clean", kind, size, link=link)
            if self.stopped():
                if faulted is not None:
                    report.done = faulted.copied
                return self._interrupted(report)
            try:
                self._read(fd, st, report, faulted is not None)
            except Stopped:
                self._interrupted(report)
            except OSError as exc:
                report.status, report.message = "error", _strerror(exc)
            except Exception as exc:        # one file's surprise must not end a long scan
                report.status, report.message = "error", f"{type(exc).__name__}: {exc}"
            if report.status == "interrupted" or kind != "file":
                return report
            # a file read in one call is only asked whether it changed; a longer
            # read also whether its path still names it
            _changed(fd, st, target, report, by_name=size > SMALL)
            return report
        finally:
            os.close(fd)

    def scan_files(self, files: Files, emit: Callable[[FileReport], object],
                   clean: Callable[[str, list[str], list[int]], object]) -> None:
        """Scan a folder's files (a batch of the walk), in its order: a small file
        that reads clean is read by the C reader (_scan_small), many per call, the
        GIL released; every other file (large, faulted, changed, special, of
        several links, an error) is read again by scan(), which judges it (a
        faulted one by the scrub alone). clean(prefix, names, sizes) is told of
        each run of files that read clean (each name's size beside it), emit()
        gets every other report, in the folder's order. A stop ends it before the
        next file scan() would read: only a file being read (by scan(), or by the
        batch reader when its read faulted) is reported interrupted, and nothing
        after it."""
        euid, fowner = sees_every_cache()
        vec = self.residency if self.restore_cache else None
        names, prefix = files.names, files.prefix
        first = 0
        while first < len(names):
            if self.stopped():
                return
            part = names[first:first + BATCH]
            got: list[Any] = _scan_small(
                files.dir_fd, part, False, self.sink, SMALL,
                -1 if files.root_dev is None else files.root_dev, vec, euid, fowner, BUDGET)
            first += len(got)
            # per file, only a look at what came back: runs of clean ones are told at once
            others = [i for i, result in enumerate(got) if type(result) is not int]
            others.append(len(got))
            start = 0
            for i in others:
                if start < i:
                    sizes = got[start:i]
                    self.progress(sum(sizes))
                    clean(prefix, part[start:i], sizes)
                if i == len(got):
                    break
                start = i + 1
                stopped = self.stopped()
                if stopped and got[i] is None:
                    return
                # (one whose read faulted was being read when a stop came: interrupted)
                report = self.scan(Target(prefix + part[i], part[i], files.dir_fd, False,
                                          files.root_dev), faulted=got[i])
                if report is not None:
                    emit(report)
                if stopped or (report is not None and report.status == "interrupted"):
                    return              # nothing after the file being read is reported

    def _interrupted(self, report: FileReport) -> FileReport:
        signum = getattr(self.stopped, "signum", 0)
        by = signal.Signals(signum).name if signum else "a stop"
        report.status = "interrupted"
        report.message = f"stopped by {by} after {report.done} of {report.size} bytes"
        return report

    def _read(self, fd: int, st: os.stat_result, report: FileReport, faulted: bool) -> None:
        size = report.size or 0
        if report.kind == "file" and size <= SMALL:
            if size == 0 or (not faulted and self._small(fd, st, size)):
                report.done = size
                self.progress(size)
                return
        passed = 0

        def progress(done: int, total: int) -> None:
            nonlocal passed
            self.progress(done - passed)
            passed = done
            report.done = done
            if self.stopped():
                raise Stopped
        restore = self.restore_cache and report.kind == "file" and sees_cache(fd, st)
        # Opening a MappedFile reads the file's last page (and the kernel reads around
        # it) before scrub can look: that part is given back after it is closed.
        tail = Snapshot.tail(fd, size) if restore else None
        from ..mapped import MappedFile

        stopped = False
        with MappedFile(fd) as mf:
            try:
                mf.scrub(progress, skip_holes=True, restore_cache=restore)
            except Stopped:
                stopped = True
            finally:                             # stopped: what was found until then
                report.bad = [(s, e, fault.cause) for s, e, fault in mf.bad_range_faults()]
                for s, e, _ in report.bad:       # a bad page met is judged: passed
                    if s <= report.done < e:
                        report.done = e
        if tail is not None:
            tail.evict()
        if stopped and report.done < size:      # else every byte was passed: not interrupted
            if not (report.kind == "file" and _no_data_after(fd, report.done)):
                raise Stopped
            report.done = size                  # only a hole was left, which is not read
        if report.bad:
            report.status = "bad"
        if passed < size:                        # the file shrank: the rest passes too
            self.progress(size - passed)

    def _small(self, fd: int, st: os.stat_result, size: int) -> bool:
        """Read a small file with one mapped copy: True if no byte faulted."""
        vec = self.residency if self.restore_cache and sees_cache(fd, st) else None
        clean = type(_read_mapped(fd, size, self.sink, vec)) is int
        if vec is not None:
            pages = -(-size // PAGE)
            if vec.find(0, 0, pages) >= 0:
                evict_cold(fd, 0, memoryview(vec)[:pages])
        return clean


def _changed(fd: int, st: os.stat_result, target: Target, report: FileReport,
             by_name: bool) -> None:
    """Say how the file changed during its scan, if it did: its size or its
    modification time moved, or (by_name) its path now names another file or none."""
    now = os.fstat(fd)
    if now.st_size != st.st_size:
        report.change = "grew" if now.st_size > st.st_size else "shrank"
        report.size_now = now.st_size
        # Cut where the mapping could not see it (FUSE, a network file system:
        # the pages past the cut stay mapped, and read on without a fault):
        # nothing past the cut counts as scanned.
        report.done = min(report.done, now.st_size)
    elif now.st_mtime_ns != st.st_mtime_ns:
        report.change = "modified"
    if by_name:
        try:
            there = os.stat(target.name, dir_fd=target.dir_fd, follow_symlinks=target.named)
            if (there.st_dev, there.st_ino) != (st.st_dev, st.st_ino):
                report.change = "replaced"
        except FileNotFoundError:
            report.change = "deleted"
        except OSError:
            pass
    if report.change is None:
        report.size_now = None
        return
    report.message = {
        "grew": f"grew from {st.st_size} to {now.st_size} bytes during the scan "
                f"(the first {st.st_size} scanned)",
        "shrank": f"shrank from {st.st_size} to {now.st_size} bytes during the scan",
        "modified": "written to during the scan",
        "replaced": "replaced by another file during the scan (the one opened was scanned)",
        "deleted": "deleted during the scan (the one opened was scanned)"}[report.change]
    if report.status == "clean":
        report.status = "changed"


def _no_data_after(fd: int, offset: int) -> bool:
    """Whether fd's file holds no data past offset: SEEK_DATA finds none (a hole,
    or the end of the file); False where the file system cannot say."""
    try:
        os.lseek(fd, offset, os.SEEK_DATA)
    except OSError as exc:
        return exc.errno == errno.ENXIO
    return False


def _open_failed(target: Target, exc: OSError) -> FileReport:
    if exc.errno == errno.ENOENT and not target.named:
        return FileReport(target.path, "vanished", message="removed before it could be scanned")
    if exc.errno == errno.ELOOP and not target.named:
        return FileReport(target.path, "changed", change="replaced",
                          message="replaced by a symbolic link before it could be scanned")
    if exc.errno == errno.ENXIO:            # a socket, found where a file was
        return FileReport(target.path, "changed" if not target.named else "error",
                          "socket", message="a socket: not a regular file",
                          change="replaced" if not target.named else None)
    return FileReport(target.path, "error", message=_strerror(exc))


def _strerror(exc: OSError) -> str:
    return exc.strerror or str(exc)
