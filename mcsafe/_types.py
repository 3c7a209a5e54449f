"""The records mcsafe returns and the error it raises."""

from __future__ import annotations

import errno
import os
from typing import NamedTuple


class FaultInfo(NamedTuple):
    """Where a copy stopped: the faulting address and what the kernel said."""

    address: int        #: the fault address (si_addr)
    offset: int         #: from the start of the copy on that side
    side: str           #: 'src' or 'dst'
    signal: int         #: signal.SIGBUS or signal.SIGSEGV
    code: int           #: si_code, e.g. BUS_ADRERR, BUS_MCEERR_AR, SEGV_ACCERR


class CopyResult(NamedTuple):
    """The outcome of copy_report(): bytes copied, and the fault if there was one."""

    copied: int
    fault: FaultInfo | None


class PoisonNotice(NamedTuple):
    """An asynchronous poison notice (SIGBUS with BUS_MCEERR_AO) the handler logged."""

    address: int        #: the poisoned address the kernel reported
    time: float         #: when it arrived, seconds since the epoch


class MemoryFaultError(OSError):
    """A read or write hit memory that faulted (errno EIO), with the fault's details."""

    def __init__(self, fault: FaultInfo, what: str = "memory fault") -> None:
        super().__init__(errno.EIO, f"{what}: {os.strerror(errno.EIO)} at {fault.side} "
                                    f"offset {fault.offset} (address {fault.address:#x}, "
                                    f"signal {fault.signal}, code {fault.code})")
        self.fault = fault
        self.address = fault.address
        self.offset = fault.offset
        self.side = fault.side
        self.signal = fault.signal
        self.code = fault.code
