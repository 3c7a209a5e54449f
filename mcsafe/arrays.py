"""numpy arrays read from a MappedFile: a copy, never a view of the mapping."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, overload

from extable.errors import missing_extra

try:
    import numpy as np
    import numpy.typing as npt
except ModuleNotFoundError as _exc:
    raise missing_extra(_exc, "numpy", "mcsafe.arrays", "numpy") from None

from .mapped import MappedFile

if TYPE_CHECKING:
    from .mapped.file import Scalar


@overload
def read_array(file: MappedFile, dtype: type[Scalar] | np.dtype[Scalar], count: int = -1,
               offset: int = 0) -> np.ndarray[Any, np.dtype[Scalar]]: ...
@overload
def read_array(file: MappedFile, dtype: npt.DTypeLike, count: int = -1, offset: int = 0
               ) -> np.ndarray[Any, np.dtype[Any]]: ...
def read_array(file: MappedFile, dtype: npt.DTypeLike, count: int = -1, offset: int = 0
               ) -> np.ndarray[Any, np.dtype[Any]]:
    """A new 1-D array of `count` items of `dtype` read from `file` at `offset`
    (count -1: as many whole items as the file holds after offset), filled by
    the table-driven copy: ``file.read_array(dtype, count, offset)``.

    The array is never short: a bad byte inside the request raises
    MemoryFaultError naming the element and the file offset (``element`` holds
    the index), and so does an end of file inside it (cause 'truncated').
    count 0, and items of no bytes, read nothing, as numpy.fromfile."""
    out: np.ndarray[Any, np.dtype[Any]] = file.read_array(dtype, count, offset)
    return out


def load(file: Any, mmap_mode: None = None, allow_pickle: bool = False, fix_imports: bool = True,
         encoding: str = "ASCII", *, max_header_size: int = 10000) -> Any:
    """numpy.load's drop-in for .npy and .npz files, through the table-driven copy:
    see :func:`mcsafe.formats.npy.load`."""
    global _npy_load
    if _npy_load is None:       # imported on first use: import mcsafe.arrays stays light
        from .formats.npy import load as _npy_load
    return _npy_load(file, mmap_mode, allow_pickle, fix_imports, encoding,
                     max_header_size=max_header_size)


_npy_load: Any = None
