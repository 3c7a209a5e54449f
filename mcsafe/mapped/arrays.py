"""read_array(): a new numpy array filled from a MappedFile, never a view of the
mapping, never short."""

from __future__ import annotations

import errno
import signal
from typing import TYPE_CHECKING, Any, Protocol, cast

if TYPE_CHECKING:
    from typing_extensions import Buffer

from extable.errors import missing_extra

try:
    import numpy as np
    import numpy.typing as npt
except ModuleNotFoundError as _exc:
    raise missing_extra(_exc, "numpy", "MappedFile.read_array", "numpy") from None

from .._mcsafe import _prefault
from ._sys import PREFAULT_BYTES
from .._types import FaultInfo, MemoryFaultError


class Reader(Protocol):
    """What read_array needs of a file (MappedFile)."""

    path: str

    @property
    def size(self) -> int: ...

    @property
    def address(self) -> int: ...

    def readinto(self, buf: Buffer, offset: int = 0) -> int: ...


def read_array(file: Reader, dtype: npt.DTypeLike, count: int = -1, offset: int = 0
               ) -> np.ndarray[Any, np.dtype[Any]]:
    """A new 1-D array of `count` items of `dtype` read from `file` at `offset`
    (count -1: as many whole items as the file holds after offset), filled by
    the table-driven copy.

    The array is never short: a bad byte inside the request raises
    MemoryFaultError naming the element and the file offset (``element`` holds
    the index), and so does an end of file inside it (cause 'truncated').
    count 0, and items of no bytes, read nothing, as numpy.fromfile."""
    dt = np.dtype(dtype)
    if dt.hasobject:
        raise TypeError(f"read_array needs a dtype without objects, not {dt}")
    if offset < 0:
        raise ValueError(f"negative offset {offset}")
    if count < -1:
        raise ValueError(f"count must be -1 or at least 0, not {count}")
    if dt.itemsize == 0:
        # items of no bytes: nothing to read, and no count to infer (as fromfile)
        if count == -1:
            raise ValueError(f"count -1 cannot be inferred for items of no bytes ({dt})")
        if dt.subdtype is not None:     # (base, shape): numpy.fromfile expands it
            return np.empty((count, *dt.shape), dt.base)
        return np.empty(count, dt)
    if count == 0:
        return np.empty(0, dt)          # as numpy.fromfile, wherever offset lies
    size = file.size
    if count == -1:
        count = max(0, size - offset) // dt.itemsize
    elif offset + count * dt.itemsize > size:
        # The file cannot hold the request now: say so before asking numpy for
        # memory a hostile count would exhaust (what the copy would have raised).
        got = max(0, size - offset)
        end = FaultInfo(file.address + offset + got, offset + got, "src", 0, 0, "truncated")
        raise _at_element(end, errno.EIO, file, dt, count, offset, got)
    out = np.empty(count, dt)
    raw = memoryview(cast("Buffer", out.reshape(-1).view(np.uint8)))
    if raw.nbytes >= PREFAULT_BYTES:
        _prefault(raw)
    want, got = raw.nbytes, 0
    while got < want:
        try:
            n = file.readinto(raw[got:], offset + got)
        except MemoryFaultError as exc:
            raise _at_element(exc.fault._replace(offset=offset + got), exc.errno or errno.EIO,
                              file, dt, count, offset, got) from None
        if n == 0:
            end = FaultInfo(file.address + offset + got, offset + got, "src", 0, 0, "truncated")
            raise _at_element(end, errno.EIO, file, dt, count, offset, got)
        got += n
    return out


def _at_element(fault: FaultInfo, err: int, file: Reader, dt: np.dtype[Any],
                count: int, offset: int, got: int) -> MemoryFaultError:
    element = got // dt.itemsize
    where = "the file ends" if fault.cause == "truncated" else "bad byte"
    signame = f", {signal.Signals(fault.signal).name}" if fault.signal else ""
    exc = MemoryFaultError(fault, f"read_array: {where} in element {element} of {count} "
                                  f"({dt}, byte {got % dt.itemsize}) at file offset "
                                  f"{offset + got}{signame}", file.path, err)
    exc.element = element
    return exc
