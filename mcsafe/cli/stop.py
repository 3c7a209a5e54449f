"""Stopping a long command cleanly: SIGINT, SIGTERM and SIGHUP ask for a stop, which
the command honours between chunks, so it can still write its partial report.
A second signal kills the process as the signal would have. One of them ignored
when the command started (nohup) stays ignored."""

from __future__ import annotations

import os
import signal

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def caught_signals() -> list[int]:
    """SIGNALS but those ignored since this program was started (nohup, or a job run
    in the background by a shell without job control): they stay ignored, as a
    program that catches signals leaves them."""
    return [sig for sig in SIGNALS if signal.getsignal(sig) != signal.SIG_IGN]


class Stopped(Exception):
    """Raised from a long read's progress callback once a stop was asked for."""


class StopFlag:
    """Set by the first of SIGNALS; call it to ask whether a stop was asked for."""

    def __init__(self) -> None:
        self.signum = 0

    def __call__(self) -> bool:
        return self.signum != 0

    def install(self, wakeup_fd: int | None = None) -> None:
        """Catch SIGNALS in this process; a signal also writes a byte to
        wakeup_fd, if given, to wake a select() that waits for it."""
        for sig in caught_signals():
            signal.signal(sig, self._caught)
        if wakeup_fd is not None:
            signal.set_wakeup_fd(wakeup_fd, warn_on_full_buffer=False)

    def _caught(self, signum: int, frame: FrameType | None) -> None:
        if self.signum:                 # the second: die of it, as without us
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.signum = signum

    @property
    def exit_code(self) -> int:
        """The shell's code for a process stopped by the signal: 128 + its number."""
        return 128 + self.signum
