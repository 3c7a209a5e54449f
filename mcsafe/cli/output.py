"""What ``mcsafe scan`` says: a line per file worth a look (or, with ``--json``, an
object per file and a summary last) and errors on stderr, around the progress
(progress.py) when there is one.
"""

from __future__ import annotations

import signal
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:       # typing and the progress (threads, tqdm): loaded where used
    from typing import IO, Sequence

    from .progress import Progress
    from .scanfile import FileReport
    from .walk import Walk


class OutputFailed(Exception):
    """Standard output could not be written (a full disk, EIO): the message says why."""


def write_out(stream: IO[str], text: str, flush: bool = True) -> None:
    """Write text to stream (standard output); OutputFailed if it cannot be."""
    try:
        stream.write(text)
        if flush:
            stream.flush()
    except OSError as exc:
        raise OutputFailed(f"standard output: {exc.strerror or exc}") from None


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

    def add_clean(self, files: int, size: int) -> None:
        """Count files read whole and clean, of size bytes in all (as add() of
        their reports would)."""
        self.counts["clean"] += files
        self.files += files
        self.bytes += size

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
        if self.progress is None:
            write_out(stream, text + "\n")
            return
        try:
            self.progress.write(text, stream)
        except OSError as exc:
            raise OutputFailed(f"standard output: {exc.strerror or exc}") from None

    def file(self, r: FileReport) -> None:
        self.summary.add(r)
        if self.progress is not None and r.status not in ("skipped", "vanished", "error"):
            self.progress.file_done()
        if r.status == "error":
            self._line(f"mcsafe scan: {r.path}: {r.message}", self.err)
        if self.as_json:
            import json

            write_out(self.out, json.dumps(r.as_json()) + "\n", flush=r.status != "clean")
            return
        text = self._human(r)
        if text:
            self._line(text, self.out)

    def clean(self, prefix: str, names: list[str], sizes: list[int]) -> None:
        """Files at prefix + name, of the sizes beside, read whole, clean and
        unchanged: counted (and written, with --json); no report is made for them
        where none is written."""
        if self.as_json or self.progress is not None:
            from .scanfile import FileReport

            for name, size in zip(names, sizes):
                self.file(FileReport(prefix + name, "clean", "file", size, done=size))
        else:
            self.summary.add_clean(len(names), sum(sizes))

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
            import json
            import socket

            write_out(self.out, json.dumps({
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
            write_out(self.out, f"{head}scanned {s.files} file{'s' * (s.files != 1)}, "
                      f"{size_text(s.bytes)} in {seconds:.1f} s{rate}: {', '.join(parts)}\n")
        return code


def _version() -> str:
    from .. import __version__
    return __version__
