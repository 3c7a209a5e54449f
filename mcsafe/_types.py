"""The records mcsafe returns and the error it raises."""

from __future__ import annotations

import errno
import os
from collections import namedtuple

# typing (with re, enum and functools behind it) is most of what importing mcsafe
# would cost: type checkers read the records below, the interpreter builds them
# with collections.namedtuple. A name mypy knows: only checkers take this branch.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Literal, NamedTuple

    #: Why a copy faulted, as FaultInfo.cause says it.
    Cause = Literal["poison", "io", "io or poison", "truncated", "no space", "protection",
                    "unmapped"]
    #: Which buffer of a copy faulted: the source or the destination.
    Side = Literal["src", "dst"]

    class _FaultRecord(NamedTuple):
        address: int        #: the fault address (si_addr)
        offset: int         #: from the start of the copy on that side
        side: Side          #: 'src' or 'dst'
        signal: int         #: signal.SIGBUS or signal.SIGSEGV
        code: int           #: si_code, e.g. BUS_ADRERR, BUS_MCEERR_AR, SEGV_ACCERR
        cause: Cause        #: one of CAUSES

    class _CopyRecord(NamedTuple):
        copied: int
        fault: FaultInfo | None

    class _PoisonRecord(NamedTuple):
        address: int        #: the poisoned address the kernel reported
        time: float         #: when it arrived, seconds since the epoch
else:
    _FaultRecord = namedtuple("_FaultRecord", "address offset side signal code cause")
    _CopyRecord = namedtuple("_CopyRecord", "copied fault")
    _PoisonRecord = namedtuple("_PoisonRecord", "address time")

#: Why a copy faulted, as FaultInfo.cause says it.
CAUSES: tuple[Cause, ...] = ("poison", "io", "io or poison", "truncated", "no space",
                             "protection", "unmapped")

#: Linux's numbers on both machines mcsafe builds for (x86-64 and arm64), so that
#: the signal module (and enum behind it) is not imported for two constants.
SIGBUS, SIGSEGV = 7, 11
BUS_OBJERR, BUS_MCEERR_AR = 3, 4
SEGV_MAPERR = 1
_ARM64 = os.uname().machine == "aarch64"


def fault_cause(signo: int, code: int) -> Cause:
    """What the signal alone says about a fault. 'truncated' and 'no space' need
    the file's size and its file system: only MappedFile can tell those."""
    if signo == SIGSEGV:
        return "unmapped" if code == SEGV_MAPERR else "protection"
    if code == BUS_MCEERR_AR:
        return "poison"
    if code == BUS_OBJERR and _ARM64:
        # Without firmware error reporting (APEI/GHES) a synchronous external
        # abort on poisoned memory reaches user space as BUS_OBJERR too.
        return "io or poison"
    return "io"


class FaultInfo(_FaultRecord):
    """Where a copy stopped: the faulting address, what the kernel said, and why.

    ``cause`` defaults to what the signal alone says ('poison', 'io', 'io or poison' on
    arm64, 'protection' or 'unmapped'); MappedFile refines it to 'truncated' or
    'no space' once it has checked the file."""

    __slots__ = ()

    def __new__(cls, address: int, offset: int, side: Side, signal: int, code: int,
                cause: Cause | None = None) -> FaultInfo:
        return super().__new__(cls, address, offset, side, signal, code,
                               cause if cause is not None else fault_cause(signal, code))


class CopyResult(_CopyRecord):
    """The outcome of copy_report(): bytes copied, and the fault if there was one."""

    __slots__ = ()


class PoisonNotice(_PoisonRecord):
    """An asynchronous poison notice (SIGBUS with BUS_MCEERR_AO) the handler logged:
    ``address``, the poisoned address the kernel reported, and ``time``, when it
    arrived (seconds since the epoch)."""

    __slots__ = ()


class MemoryFaultError(OSError):
    """A read or write hit memory that faulted, with the fault's details.

    errno is EIO for a bad byte of a file, ENOSPC for a write into a hole of a
    file whose file system is full, EFAULT for a bad byte of the caller's own
    buffer; ``filename`` is the file's path when there is one."""

    def __init__(self, fault: FaultInfo, what: str = "memory fault",
                 filename: str | None = None, err: int = errno.EIO) -> None:
        text = (f"{what}: {os.strerror(err)} ({fault.cause}) at {fault.side} offset "
                f"{fault.offset} (address {fault.address:#x}, signal {fault.signal}, "
                f"code {fault.code})")
        if filename is None:
            super().__init__(err, text)
        else:
            super().__init__(err, text, filename)
        self.fault = fault
        self.what = what
        self.address = fault.address
        self.offset = fault.offset
        self.side = fault.side
        self.signal = fault.signal
        self.code = fault.code
        self.cause = fault.cause
        self.element: int | None = None     #: the array element, for read_array

    def __reduce__(self) -> tuple[Any, ...]:
        # OSError pickles its args (errno, strerror): rebuild from the fault instead.
        return (type(self), (self.fault, self.what, self.filename, self.errno), self.__dict__)


del TYPE_CHECKING       # not one of the module's names
