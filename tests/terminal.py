"""Run a command with a terminal (a pty of a given size) as its stdout or stderr,
and read back what it wrote there: for the tests of what the commands print on a
terminal (help at the terminal's width, the progress bar)."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import termios
from typing import Any


def set_size(fd: int, columns: int, rows: int = 24) -> None:
    """Give the terminal fd columns x rows (TIOCSWINSZ)."""
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))


def run_on_terminal(argv: list[str], stream: str, columns: int,
                    **kwargs: Any) -> tuple[subprocess.CompletedProcess, bytes]:
    """subprocess.run(argv, **kwargs) with a terminal of `columns` columns as its
    `stream` ("stdout" or "stderr"); the finished process and the bytes written to
    the terminal."""
    master, slave = pty.openpty()
    try:
        set_size(slave, columns)
        kwargs[stream] = slave
        proc = subprocess.run(argv, **kwargs)
        os.close(slave)
        slave = -1
        seen = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:                     # EIO: the terminal's other end is closed
                break
            if not chunk:
                break
            seen += chunk
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)
    return proc, seen
