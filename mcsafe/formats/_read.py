"""Filling a buffer from a MappedFile exactly, or saying where and why it stopped:
what the format readers build their errors from."""

from __future__ import annotations

import errno
import signal
from typing import TYPE_CHECKING

from .._types import FaultInfo, MemoryFaultError

if TYPE_CHECKING:
    from ..mapped.arrays import Reader


class Stopped(Exception):
    """A fill that stopped after `got` bytes: at a bad byte, or where the file ends
    (fault.cause 'truncated'); fault.offset is the file offset it stopped at."""

    def __init__(self, got: int, fault: FaultInfo, err: int) -> None:
        super().__init__(got, fault, err)
        self.got, self.fault, self.errno = got, fault, err

    def where(self) -> str:
        """'bad byte' or 'the file ends', and the signal if there was one."""
        what = "the file ends" if self.fault.cause == "truncated" else "bad byte"
        sig = self.fault.signal
        return f"{what} (signal {signal.Signals(sig).name})" if sig else what

    def error(self, what: str, path: str, element: int) -> MemoryFaultError:
        """The MemoryFaultError to raise: `what` says what was being read, and
        ``element`` is set."""
        exc = MemoryFaultError(self.fault, what, path, self.errno)
        exc.element = element
        return exc


def fill(file: Reader, buf: memoryview, offset: int) -> None:
    """Fill buf (a writable byte view) from file at offset, or raise Stopped."""
    want, got = buf.nbytes, 0
    while got < want:
        try:
            n = file.readinto(buf[got:], offset + got)
        except MemoryFaultError as exc:   # raised only when the call's first byte is bad
            raise Stopped(got, exc.fault._replace(offset=offset + got),
                          exc.errno or errno.EIO) from None
        if n == 0:
            end = offset + got
            raise Stopped(got, FaultInfo(file.address + end, end, "src", 0, 0, "truncated"),
                          errno.EIO)
        got += n
