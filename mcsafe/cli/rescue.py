"""``mcsafe rescue``: copy everything readable from SRC to DST, and keep a GNU ddrescue
mapfile of what was rescued and what could not be read.

SRC is copied to DST by pwrite(2) from a mapping of SRC (onecopy.py), and a
range that path cannot read is read through :meth:`mcsafe.MappedFile.scrub`
(the bytes handed to its sink are exactly those read(2) would count; a page
that fails is remembered with its cause), whose MappedFile is opened then: a
clean file never needs it. One run is one pass over every
block of the mapfile that is not finished; a bad page is tried by MappedFile a
few times before it counts as bad, and a later run tries it again.

The mapfile is written before anything is copied (one that cannot be is refused
up front), with room reserved for the saves that follow (see mapfile.py). DST,
when the run starts afresh, is a temporary file in DST's folder, renamed over
DST at the end (or when stopped, or when DST cannot be written: the mapfile
then says how far it got). A run that resumes from a mapfile, and
``--in-place``, write into DST itself: only ranges not yet rescued change,
and the mapfile is saved every --save-every seconds (30), DST synced first, so a
crash loses at most that much work. Holes of SRC stay holes; bad ranges are
holes (punched, where DST held something), or zeros with ``--zero-fill``;
DST never extends past the last byte read.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import stat
import sys
import time

from .._mcsafe import _fallocate as fallocate
from ..mapped.opening import HUGETLBFS_MAGIC, open_file
from ..pagecache import Snapshot, sees_cache
from . import onecopy
from .mapfile import (BAD, FINISHED, INT_MAX, NON_TRIED, Mapfile, MapfileError, sync_dir,
                      temporary, umask)
from .output import size_text, write_out
from .stop import StopFlag, Stopped

TYPE_CHECKING = False           # typing: milliseconds a rescue need not pay
if TYPE_CHECKING:
    from typing import Any, Callable

    from .._types import FaultInfo
    from ..mapped import MappedFile
    from ..mapped.opening import Opened

ZEROS = bytes(1 << 20)
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 1, 2


class RescueError(Exception):
    """What makes the rescue impossible, said in one line (exit status 2)."""


class WriteFailed(Exception):
    """DST or the mapfile could not be written (ENOSPC, EIO), or SRC not opened again
    for a failing range: the run stops where it is; the message names the file."""


class Source:
    """SRC, open: its size, its mapping for the one-copy path, and the MappedFile
    that reads what that path could not: opened when first needed, or from the
    start where SRC is not mapped for that path (a hugetlbfs file, whose pages
    MappedFile knows how to map; no one-copy path on this machine). SRC is mapped
    once at a time: MappedFile's mapping replaces SourceMap, and the one-copy
    path goes on from it."""

    def __init__(self, opened: Opened, one_copy: bool) -> None:
        self.fd = opened.fd
        self.name = opened.path
        self.one_copy = one_copy
        self.map: onecopy.SourceMap | None = None
        self._file: MappedFile | None = None
        if one_copy and opened.fs != HUGETLBFS_MAGIC:
            try:
                self.map = onecopy.SourceMap(self.fd, os.lseek(self.fd, 0, os.SEEK_END))
            except OSError:
                pass                    # MappedFile says why, below
        if self.map is None:
            self._file = self._open()

    def _open(self) -> MappedFile:
        from ..mapped import MappedFile

        return MappedFile(self.fd)

    @property
    def size(self) -> int:
        """SRC's size now."""
        return self._file.size if self._file is not None else \
            os.lseek(self.fd, 0, os.SEEK_END)

    @property
    def address(self) -> int:
        """Where the one-copy path finds SRC's bytes in memory."""
        return self.map.address if self.map is not None else self.careful().address

    def careful(self) -> MappedFile:
        """The MappedFile that reads a range the one-copy path could not."""
        if self._file is None:
            # Unmapped first: holding both would need twice SRC's size in address
            # space, which a file of more than half of it, or RLIMIT_AS, refuses.
            if self.map is not None:
                self.map.close()
                self.map = None
            try:
                self._file = self._open()
            except OSError as exc:
                raise WriteFailed(f"{self.name}: {exc.strerror}") from None
        return self._file

    def bad_range_faults(self) -> list[tuple[int, int, FaultInfo]]:
        return self._file.bad_range_faults() if self._file is not None else []

    def close(self) -> None:
        if self.map is not None:
            self.map.close()
        if self._file is not None:
            self._file.close()


class Destination:
    """DST as this run writes it: a fresh temporary file renamed over DST at the end,
    or DST itself (in place). fresh: it held nothing before (so holes need no
    writing)."""

    def __init__(self, path: str, in_place: bool, resume: bool) -> None:
        self.path = path
        self.temp: str | None = None
        self.lost = False       # a sync or close failed: what was written may not be there
        self.fd = -1
        try:
            st: os.stat_result | None = os.stat(path)
        except FileNotFoundError:
            st = None
        except OSError as exc:
            raise RescueError(f"{path}: {exc.strerror}") from None
        self.device = st is not None and stat.S_ISBLK(st.st_mode)
        if st is not None and not (stat.S_ISREG(st.st_mode) or self.device):
            raise RescueError(f"{path}: not a regular file or a block device")
        if self.device and not in_place:
            raise RescueError(f"{path}: a block device is written in place only (--in-place)")
        self.mode = stat.S_IMODE(st.st_mode) if st is not None else 0o666 & ~umask()
        try:
            if in_place or resume:
                self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if in_place
                                                                    else 0), 0o666)
                self.fresh = st is None or (not self.device and st.st_size == 0)
            else:
                folder = os.path.dirname(os.path.abspath(path))
                self.fd, self.temp = temporary(folder, f".{os.path.basename(path)}.", ".part")
                self.fresh = True
        except OSError as exc:
            raise RescueError(f"{path}: {exc.strerror}") from None

    def write(self, offset: int, data: memoryview | bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.pwrite(self.fd, view, offset)
            except OSError as exc:
                raise WriteFailed(f"{self.path}: {exc.strerror}") from None
            view, offset = view[n:], offset + n

    def zero(self, offset: int, length: int) -> None:
        """Make [offset, offset + length) read as zeros: a hole where it can be punched,
        else written zeros."""
        if self.fresh and not self.device:
            return
        if not self.device:
            try:
                fallocate(self.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)
                return
            except OSError:
                pass
        self.fill(offset, length)

    def fill(self, offset: int, length: int) -> None:
        """Write zeros over [offset, offset + length)."""
        end = offset + length
        while offset < end:
            n = min(len(ZEROS), end - offset)
            self.write(offset, memoryview(ZEROS)[:n])
            offset += n

    def finish(self, size: int, sync: bool) -> None:
        """Make DST end at size (never shorter than it was, in place), synced when
        sync, and put it in place; WriteFailed (and DST not put in place) if it
        cannot be."""
        try:
            if not self.device:
                if self.temp is not None or os.fstat(self.fd).st_size < size:
                    os.ftruncate(self.fd, size)
            if sync:
                self.sync(os.fsync)
            if self.temp is not None:
                os.fchmod(self.fd, self.mode)
                os.replace(self.temp, self.path)
                self.temp = None
                if sync:
                    sync_dir(os.path.dirname(os.path.abspath(self.path)))
        except OSError as exc:
            raise WriteFailed(f"{self.path}: {exc.strerror}") from None

    def sync(self, how: Callable[[int], None] = os.fdatasync) -> None:
        try:
            how(self.fd)
        except OSError as exc:
            self.lost = True    # a later fsync may succeed though the pages were dropped
            raise WriteFailed(f"{self.path}: {exc.strerror} syncing it to disk (what was "
                              "copied since the mapfile was last saved is not counted)"
                              ) from None

    def close(self) -> None:
        """Close DST; WriteFailed if close(2) fails (NFS, FUSE: a write lost)."""
        fd, self.fd = self.fd, -1
        try:
            os.close(fd)
        except OSError as exc:
            self.lost = True
            raise WriteFailed(f"{self.path}: {exc.strerror} closing it (what was copied "
                              "since the mapfile was last saved is not counted)") from None

    def discard(self) -> None:
        """Close DST if still open and remove the temporary file if never put in
        place; WriteFailed, once both were tried, if either failed."""
        failed: WriteFailed | None = None
        if self.fd >= 0:
            try:
                self.close()
            except WriteFailed as exc:
                failed = exc
        if self.temp is not None:
            temp, self.temp = self.temp, None
            try:
                os.unlink(temp)
            except FileNotFoundError:
                pass
            except OSError as exc:
                failed = failed or WriteFailed(f"{temp}: {exc.strerror} removing it")
        if failed is not None:
            raise failed


def run(args: argparse.Namespace) -> int:
    stop = StopFlag()
    stop.install()
    try:
        return Rescue(args, stop).run()
    except RescueError as exc:
        print(f"mcsafe rescue: {exc}", file=sys.stderr)
        return 2


class Rescue:
    def __init__(self, args: argparse.Namespace, stop: StopFlag) -> None:
        self.args = args
        self.stop = stop
        self.mappath = args.map or args.dst + ".map"
        if args.map is None and os.path.exists(args.dst) and \
                stat.S_ISBLK(os.stat(args.dst).st_mode):
            raise RescueError(f"{args.dst} is a block device: say where the mapfile goes "
                              "(--map MAPFILE)")
        self.sync = not args.no_sync
        self.started = time.time()
        self.command = shlex.join(["mcsafe", "rescue", *sys.argv[2:]]) \
            if os.path.basename(sys.argv[0]) in ("mcsafe", "__main__.py") else \
            shlex.join(["mcsafe", "rescue", args.src, args.dst])
        self.causes: dict[tuple[int, int], str] = {}
        self.error: str | None = None
        self.restore = False            # give back the page cache pages read from SRC
        self.pass_done = False          # the pass went over every block it had to
        self.last_save = time.monotonic()
        self.saved = Mapfile(0)         # the mapfile as last saved

    def run(self) -> int:
        args = self.args
        self._check_paths()
        try:
            opened = open_file(args.src, "r")
        except OSError as exc:
            raise RescueError(f"{args.src}: {exc.strerror}") from None
        tail = None
        fd = opened.fd
        try:
            st = os.fstat(fd)
            self.restore = sees_cache(fd, st)
            # Opening a MappedFile reads SRC's last page (and the kernel reads around
            # it) before scrub can look: that part is given back at the end.
            if self.restore and opened.regular:
                tail = Snapshot.tail(fd, st.st_size)
            try:
                src = Source(opened, onecopy.unavailable() is None)
            except OSError as exc:
                raise RescueError(f"{args.src}: {exc.strerror}") from None
            try:
                # (never past the mapping, should SRC have grown since it was made)
                size = src.map.length if src.map is not None else src.size
                mapfile = self._rescue(src, size)
            finally:
                src.close()
            if opened.regular:
                self._cut(size, os.fstat(fd).st_size, mapfile)
        finally:
            if tail is not None:
                tail.evict()
            try:
                os.close(fd)
            except OSError:             # read only: nothing of ours to lose
                pass
        return self._report(mapfile)

    def _rescue(self, src: Source, size: int) -> Mapfile:
        """One pass over what the mapfile does not have yet; the mapfile as last
        saved (what the report counts: no more than DST is known to hold)."""
        args = self.args
        mapfile = self._mapfile(size)
        resume = mapfile.total(FINISHED) > 0        # DST holds what the mapfile says
        if resume and not os.path.exists(args.dst):
            raise RescueError(f"{args.dst} does not exist, but {self.mappath} says "
                              f"{mapfile.total(FINISHED)} bytes were rescued into it")
        # The mapfile is written before anything is copied: one that cannot be is
        # refused up front, and the room for the saves that follow is reserved.
        created = not os.path.lexists(self.mappath)
        try:
            self._save_map(mapfile, False)
        except WriteFailed as exc:
            raise RescueError(str(exc)) from None
        try:
            dst = Destination(args.dst, args.in_place, resume)
        except RescueError:
            if created:                 # an empty mapfile left behind resumes as none
                try:
                    os.unlink(self.mappath)
                except OSError:
                    pass
            raise
        placed = False
        try:
            try:
                self._copy(src, mapfile, dst, size)
                self._bad_ranges(mapfile, dst)
            except WriteFailed as exc:
                self.error = str(exc)
            if not dst.lost:
                dst.finish(mapfile.finished_end, self.sync)
                placed = True
            dst.close()
        except WriteFailed as exc:      # DST not synced, closed or in place: the mapfile
            self.error = self.error or str(exc)     # saved last still says what it holds
        finally:
            try:                        # closes DST if finish() failed before close()
                dst.discard()
            except WriteFailed as exc:
                self.error = self.error or str(exc)
        if not placed or dst.lost:
            return self.saved
        if not self.stopped() and self.error is None:
            mapfile.current_status = FINISHED
        try:
            self._save_map(mapfile, mapfile.current_status == FINISHED)
        except WriteFailed as exc:
            self.error = self.error or str(exc)
        return self.saved

    def _cut(self, size: int, now: int, mapfile: Mapfile) -> None:
        """Say so if SRC was cut during the rescue before all of it was read."""
        left = sum(min(e, size) - max(s, now) for s, e in mapfile.ranges("?*/")
                   if e > now and s < size)
        if now < size and left:
            print(f"mcsafe rescue: {self.args.src} was cut from {size} to {now} bytes during "
                  f"the rescue: {left} bytes past the cut were not read", file=sys.stderr)

    def _check_paths(self) -> None:
        a = self.args
        for x, y in ((a.src, a.dst), (a.src, self.mappath), (a.dst, self.mappath)):
            try:
                if os.path.samefile(x, y):
                    raise RescueError(f"{x} and {y} are the same file")
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise RescueError(f"{exc.filename}: {exc.strerror}") from None

    def _mapfile(self, size: int) -> Mapfile:
        """The mapfile to go on from; a new one where there is none, or an empty one
        (as ddrescue)."""
        try:
            m = Mapfile.load(self.mappath)
        except FileNotFoundError:
            return Mapfile(size)
        except (OSError, MapfileError) as exc:
            raise RescueError(str(exc) if isinstance(exc, MapfileError)
                              else f"{self.mappath}: {exc.strerror}") from None
        if m is None:
            return Mapfile(size)
        if m.size > size and m.total("?*/-") and any(e > size for _, e in m.ranges("?*/-")):
            print(f"mcsafe rescue: {self.args.src} is {size} bytes, shorter than "
                  f"{self.mappath} says ({m.size}): the rest cannot be read", file=sys.stderr)
        m.resize(size)
        if m.current_status == FINISHED:    # the next pass; a C int, as ddrescue reads it
            m.current_pass = min(m.current_pass + 1, INT_MAX)
        return m

    def _copy(self, src: Source, mapfile: Mapfile, dst: Destination, size: int) -> None:
        todo = [(a, min(b, size)) for a, b in mapfile.ranges("?*/-") if a < size]
        # ddrescue's phases: copying what was never tried, else retrying bad blocks
        mapfile.current_status = NON_TRIED if mapfile.total("?*/") else BAD
        bar = self._bar(sum(b - a for a, b in todo))
        in_place = dst.temp is None
        last = todo[-1][1] if todo else 0

        def written(offset: int, n: int) -> None:
            mapfile.set(offset, offset + n, FINISHED)
            mapfile.current_pos = offset + n
            if in_place and time.monotonic() - self.last_save >= self.args.save_every:
                self._save(mapfile, dst)

        def hole(offset: int, n: int) -> None:
            dst.zero(offset, n)
            written(offset, n)

        def sink(offset: int, data: memoryview | int) -> None:
            if isinstance(data, int):
                hole(offset, data)
            else:
                dst.write(offset, data)
                written(offset, data.nbytes)

        try:
            for a, b in todo:
                passed = a

                def progress(done: int, total: int) -> None:
                    nonlocal passed
                    if bar is not None:
                        bar.update(done - passed)
                    passed = done
                    if self.stop() and done < last:     # (not once all was read)
                        raise Stopped
                mapfile.current_pos = a
                try:
                    start = a
                    while start < b:
                        upto = b
                        if src.one_copy:
                            try:
                                start, upto = onecopy.copy(
                                    src.fd, src.address, dst.fd, start, b, written, hole,
                                    progress, lambda: src.size, self.restore)
                            except onecopy.Stop as exc:
                                raise WriteFailed(f"{dst.path}: {exc}") from None
                        if start < upto:        # a page of SRC failed: MappedFile judges
                            src.careful().scrub(progress, start=start, end=upto, sink=sink,
                                                skip_holes=True, restore_cache=self.restore)
                        start = upto
                finally:
                    for s, e, fault in src.bad_range_faults():
                        if s < b and e > a:
                            mapfile.set(max(s, a), min(e, b), BAD)
                            self.causes[(s, e)] = fault.cause
            self.pass_done = True
        except Stopped:
            pass
        finally:
            if bar is not None:
                bar.close()

    def stopped(self) -> bool:
        """Whether a signal stopped the pass before it went over every block (one
        that comes after ends the run as a finished one)."""
        return self.stop() and not self.pass_done

    def _bad_ranges(self, mapfile: Mapfile, dst: Destination) -> None:
        """Bad ranges below the last byte read: holes, or zeros with --zero-fill."""
        end = mapfile.finished_end
        for s, e in mapfile.ranges(BAD):
            if s >= end:
                break
            e = min(e, end)
            if self.args.zero_fill:
                dst.fill(s, e - s)
            else:
                dst.zero(s, e - s)

    def _save(self, mapfile: Mapfile, dst: Destination) -> None:
        if self.sync:
            dst.sync()
        self._save_map(mapfile, False)

    def _save_map(self, mapfile: Mapfile, finished: bool) -> None:
        try:
            mapfile.save(self.mappath, self.command, self.started, finished, self.sync)
        except OSError as exc:
            raise WriteFailed(f"{self.mappath}: {exc.strerror}") from None
        self.saved = mapfile.copy()
        self.last_save = time.monotonic()

    def _bar(self, total: int) -> Any:
        tty = os.isatty(sys.stderr.fileno())
        if self.args.progress is False or (self.args.progress is None and not tty):
            return None
        from .progress import byte_bar

        return byte_bar(total, "rescued")

    def _report(self, m: Mapfile) -> int:
        rescued, bad = m.total(FINISHED), m.ranges(BAD)
        pct = f" ({100 * rescued / m.size:.2f}%)" if m.size else ""
        lines = [f"rescued {rescued} of {m.size} bytes{pct} of {self.args.src} into "
                 f"{self.args.dst}; mapfile {self.mappath}"]
        if bad:
            shown = ", ".join(f"[{s:#x}, {e:#x}) {self._cause(s, e)}" for s, e in bad[:8])
            more = f", and {len(bad) - 8} more" if len(bad) > 8 else ""
            lines.append(f"bad: {len(bad)} range{'s' * (len(bad) != 1)}, "
                         f"{size_text(sum(e - s for s, e in bad))}: {shown}{more}")
        write_out(sys.stdout, "".join(line + "\n" for line in lines))
        left = m.total("?*/")
        if self.error is not None:
            print(f"mcsafe rescue: {self.error}; run again to go on", file=sys.stderr)
            return 2
        if self.stopped():
            print(f"stopped by {signal.Signals(self.stop.signum).name}: {left} bytes not "
                  "tried yet; run again to go on", file=sys.stderr)
            return self.stop.exit_code
        return 1 if bad or left else 0

    def _cause(self, s: int, e: int) -> str:
        causes = {c for (cs, ce), c in self.causes.items() if cs < e and ce > s}
        return "/".join(sorted(causes)) if causes else "earlier run"
