"""What ``mcsafe scan`` says: a line per file worth a look (or, with ``--json``, an
object per file and a summary last), errors on stderr, and the progress.

The progress is a tqdm bar on a terminal (tqdm: no dependencies of its own, and
imported only when a bar is drawn), plain lines every PLAIN_EVERY seconds
when ``--progress`` is asked for where stderr is not a terminal, nothing
otherwise. Its totals come from a second, cheaper walk (sizes only) in a
thread, so that the scan starts at once and the ETA appears when they are known.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import sys
import threading
import time
from typing import IO, Any, Sequence

from .scanfile import FileReport
from .walk import Note, Target, Walk

PLAIN_EVERY = 10.0       # seconds between plain progress lines


def size_text(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def _ranges_text(bad: Sequence[tuple[int, int, str]], at_most: int = 8) -> str:
    shown = ", ".join(f"[{s:#x}, {e:#x}) {c}" for s, e, c in bad[:at_most])
    return shown + (f", and {len(bad) - at_most} more" if len(bad) > at_most else "")


class Summary:
    """Counts over every report, and the exit status they make."""

    def __init__(self) -> None:
        self.counts = {k: 0 for k in ("clean", "bad", "changed", "interrupted", "vanished",
                                      "skipped", "error")}
        self.files = 0
        self.bytes = 0
        self.bad_ranges = 0
        self.bad_bytes = 0
        self.bad_files = 0

    def add(self, r: FileReport) -> None:
        self.counts[r.status] = self.counts.get(r.status, 0) + 1
        if r.size is not None and r.status not in ("skipped", "error", "vanished"):
            self.files += 1
            self.bytes += r.done
        if r.bad:
            self.bad_files += 1
            self.bad_ranges += len(r.bad)
            self.bad_bytes += r.bad_bytes

    def exit_code(self, stopped: int) -> int:
        """128 + signal if stopped; else 2 if a path could not be scanned, 1 if
        bad ranges were found, 0 if not (grep's order: an error outranks a find)."""
        if stopped:
            return 128 + stopped
        if self.counts["error"]:
            return 2
        return 1 if self.bad_files else 0


class Output:
    """Writes reports as they come and the summary at the end."""

    def __init__(self, as_json: bool, paths: Sequence[str], out: IO[str] | None = None,
                 err: IO[str] | None = None) -> None:
        self.as_json = as_json
        self.paths = list(paths)
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.summary = Summary()
        self.started = time.time()
        self.progress: Progress | None = None

    def _line(self, text: str, stream: IO[str]) -> None:
        if self.progress is not None:
            self.progress.write(text, stream)
        else:
            stream.write(text + "\n")
            stream.flush()

    def file(self, r: FileReport) -> None:
        self.summary.add(r)
        if self.progress is not None and r.status not in ("skipped", "vanished", "error"):
            self.progress.file_done()
        if r.status == "error":
            self._line(f"mcsafe scan: {r.path}: {r.message}", self.err)
        if self.as_json:
            self.out.write(json.dumps(r.as_json()) + "\n")
            if r.status != "clean":
                self.out.flush()
            return
        text = self._human(r)
        if text:
            self._line(text, self.out)

    @staticmethod
    def _human(r: FileReport) -> str | None:
        if r.status == "bad" or r.bad:
            line = (f"BAD {r.path}: {len(r.bad)} bad range{'s' * (len(r.bad) != 1)}, "
                    f"{size_text(r.bad_bytes)} of {size_text(r.size or 0)}: "
                    f"{_ranges_text(r.bad)}")
            if r.change:
                line += f" (and {r.message})"
            if r.status == "interrupted":
                line += f" (interrupted at {r.done} of {r.size} bytes)"
            return line
        if r.status == "changed":
            return f"CHANGED {r.path}: {r.message}; not bad"
        if r.status == "interrupted":
            return f"INTERRUPTED {r.path}: scanned {r.done} of {r.size} bytes"
        if r.status == "vanished":
            return f"VANISHED {r.path}: {r.message}"
        if r.status == "skipped":
            return f"SKIPPED {r.path}: {r.message}"
        return None

    def finish(self, stopped: int, walk: Walk) -> int:
        """Write the summary; the exit status."""
        if self.progress is not None:
            self.progress.close()
        s = self.summary
        seconds = time.time() - self.started
        code = s.exit_code(stopped)
        if self.as_json:
            import datetime as dt
            import socket

            self.out.write(json.dumps({
                "type": "summary", "host": socket.gethostname(), "version": _version(),
                "paths": self.paths,
                "started": dt.datetime.fromtimestamp(self.started, dt.timezone.utc)
                .isoformat(timespec="seconds"),
                "seconds": round(seconds, 3), "files": s.files, "bytes": s.bytes,
                **{k: v for k, v in s.counts.items()},
                "bad_files": s.bad_files, "bad_ranges": s.bad_ranges, "bad_bytes": s.bad_bytes,
                "symlinks_not_followed": walk.symlinks, "other_file_systems": walk.other_fs,
                "excluded": walk.excluded,
                "stopped": bool(stopped),
                "signal": signal.Signals(stopped).name if stopped else None,
                "exit": code}) + "\n")
        else:
            rate = f", {size_text(s.bytes / seconds)}/s" if seconds > 0 else ""
            parts = [f"{s.bad_files} with bad ranges ({size_text(s.bad_bytes)})" if s.bad_files
                     else "none with bad ranges"]
            for key, word in (("changed", "changed"), ("vanished", "vanished"),
                              ("skipped", "skipped"), ("error", "not scanned")):
                if s.counts[key]:
                    parts.append(f"{s.counts[key]} {word}")
            head = "interrupted: " if stopped else ""
            self.out.write(f"{head}scanned {s.files} file{'s' * (s.files != 1)}, "
                           f"{size_text(s.bytes)} in {seconds:.1f} s{rate}: "
                           f"{', '.join(parts)}\n")
        self.out.flush()
        return code


def _version() -> str:
    from .. import __version__
    return __version__


def byte_bar(total: int | None, desc: str) -> Any:
    """A tqdm bar of bytes on stderr (no monitor thread)."""
    from tqdm import tqdm

    tqdm.monitor_interval = 0
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
                dynamic_ncols=True, mininterval=0.25, desc=desc)


class Progress:
    """Bytes and files done, against totals counted in a thread."""

    def __init__(self, walk_args: dict[str, Any]) -> None:
        self.total_bytes: int | None = None
        self.total_files: int | None = None
        self.files = 0
        self._counter = threading.Thread(target=self._count, args=(walk_args,), daemon=True,
                                         name="mcsafe-scan-count")
        self._counter.start()

    def _count(self, walk_args: dict[str, Any]) -> None:
        nbytes = nfiles = 0
        for item in Walk(**walk_args):
            if isinstance(item, Target):
                try:
                    st = os.stat(item.name, dir_fd=item.dir_fd, follow_symlinks=item.named)
                except OSError:
                    continue
                nfiles += 1
                nbytes += st.st_size if stat.S_ISREG(st.st_mode) else 0
            elif isinstance(item, Note):
                continue
        self.total_bytes, self.total_files = nbytes, nfiles

    def bytes_done(self, n: int) -> None:
        raise NotImplementedError

    def file_done(self) -> None:
        self.files += 1

    def write(self, text: str, stream: IO[str]) -> None:
        stream.write(text + "\n")
        stream.flush()

    def close(self) -> None:
        pass


class Bar(Progress):
    """A tqdm bar on stderr (a terminal)."""

    def __init__(self, walk_args: dict[str, Any]) -> None:
        self.bar = byte_bar(None, "scanned")
        self._tqdm = type(self.bar)
        super().__init__(walk_args)

    def bytes_done(self, n: int) -> None:
        if self.total_bytes is not None and self.bar.total is None:
            self.bar.total = max(self.total_bytes, self.bar.n + n)
        self.bar.update(n)

    def file_done(self) -> None:
        super().file_done()
        total = f"/{self.total_files}" if self.total_files is not None else ""
        self.bar.set_postfix_str(f"{self.files}{total} files", refresh=False)

    def write(self, text: str, stream: IO[str]) -> None:
        self._tqdm.write(text, file=stream)

    def close(self) -> None:
        self.bar.close()


class PlainProgress(Progress):
    """A progress line on stderr every PLAIN_EVERY seconds (not a terminal)."""

    def __init__(self, walk_args: dict[str, Any], err: IO[str] | None = None) -> None:
        self.err = err or sys.stderr
        self.done = 0
        self.started = self.last = time.monotonic()
        super().__init__(walk_args)

    def bytes_done(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= PLAIN_EVERY:
            self.last = now
            self.err.write(self.line(now) + "\n")
            self.err.flush()

    def line(self, now: float) -> str:
        rate = self.done / max(now - self.started, 1e-9)
        text = f"progress: {size_text(self.done)}"
        if self.total_bytes:
            text += f" of {size_text(self.total_bytes)} ({100 * self.done / self.total_bytes:.0f}%)"
        text += f", {self.files} files"
        if self.total_files is not None:
            text += f" of {self.total_files}"
        text += f", {size_text(rate)}/s"
        if self.total_bytes and rate > 0 and self.total_bytes > self.done:
            text += f", {(self.total_bytes - self.done) / rate:.0f} s left"
        return text
