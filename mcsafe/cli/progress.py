"""The progress of ``mcsafe scan`` (and the bar of ``mcsafe rescue``): a tqdm bar on
a terminal (tqdm: no dependencies of its own, and imported only when a bar is
drawn), plain lines every PLAIN_EVERY seconds when ``--progress`` is asked for
where stderr is not a terminal, nothing otherwise (and then this module is not
even imported). Its totals come from a second, cheaper walk (sizes only) in a
thread, so that the scan starts at once and the ETA appears when they are known.
"""

from __future__ import annotations

import os
import stat
import sys
import threading
import time
from typing import IO, Any

from .output import size_text
from .walk import Note, Target, Walk

PLAIN_EVERY = 10.0       # seconds between plain progress lines


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
