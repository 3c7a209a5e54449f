"""safe_open: the safetensors package's reader, with every tensor copied out of the
file by the table-driven copy (MappedFile), so that a bad page or a file cut under
the reader raises an error naming the tensor, the element and the file offset
instead of killing the process with SIGBUS."""

from __future__ import annotations

import mmap
import os
from typing import TYPE_CHECKING, Any, Iterator, NoReturn

from extable.errors import missing_extra

try:
    import numpy as np
except ModuleNotFoundError as _exc:
    raise missing_extra(_exc, "numpy", "mcsafe.formats", "numpy") from None

from ..._mcsafe import _prefault
from ...mapped._sys import PREFAULT_BYTES
from ..._types import MemoryFaultError
from ...mapped import MappedFile
from .._gather import gather
from .._read import Stopped, fill
from . import _slice
from ._dtypes import Unrepresentable, numpy_dtype, torch_dtype
from ._header import SafetensorsError, TensorInfo, read_header

if TYPE_CHECKING:
    import numpy.typing as npt

NUMPY, TORCH = "numpy", "pt"
FRAMEWORKS = {"numpy": NUMPY, "np": NUMPY, "pt": TORCH, "torch": TORCH, "pytorch": TORCH}
# The reference's other frameworks, which mcsafe does not serve.
OTHERS = ("tf", "tensorflow", "jax", "flax", "mlx", "paddle")
BACKENDS = ("mmap", "pread")     # the reference's; both are served by MappedFile here
PAGE = mmap.PAGESIZE


class TensorNotFound(SafetensorsError, KeyError):
    """A name the file has no tensor for (a KeyError too, as a mapping would raise)."""

    __str__ = SafetensorsError.__str__


class safe_open:  # noqa: N801 - the reference's name
    """An open .safetensors file, as ``safetensors.safe_open``: ``keys()`` (sorted),
    ``offset_keys()`` (in the order of the data), ``metadata()`` (None when the file
    has none), ``get_tensor``, ``get_tensors``, ``get_slice``; also ``in``, ``len``
    and iteration over the names. A context manager; close() is also called when the
    object is collected.

    ``framework``: "numpy" or "np" for numpy arrays (BF16 and F8 as ml_dtypes arrays,
    or as raw unsigned integers without ml_dtypes), "pt", "torch" or "pytorch" for
    torch tensors (torch must be installed). ``device``: "cpu" for numpy; for torch,
    any device torch accepts, the tensor being moved there after it is read.
    ``filename`` may also be an open MappedFile, which stays the caller's.

    The header is checked as the reference checks it (SafetensorsError naming the
    file for what it refuses). Tensors are new arrays, never views of the file: a
    bad byte or the end of the file inside one raises MemoryFaultError naming the
    tensor, the element and the file offset, and the other tensors still load.
    """

    def __init__(self, filename: str | os.PathLike[str] | MappedFile, framework: str,
                 device: str | int | None = "cpu", *, backend: str = "mmap") -> None:
        self._mf: MappedFile | None = None
        name = filename.path if isinstance(filename, MappedFile) else os.fspath(filename)
        self.path = os.fsdecode(name)
        self._framework = _framework(framework, self.path)
        self._device = _device(device, self._framework, self.path)
        if backend not in BACKENDS:
            raise SafetensorsError(f"{self.path}: backend {backend!r} is invalid (one of "
                                   f"{', '.join(BACKENDS)})")
        self._torch = _import_torch(self.path) if self._framework == TORCH else None
        self._owned = not isinstance(filename, MappedFile)
        mf = MappedFile(filename) if not isinstance(filename, MappedFile) else filename
        try:
            header = read_header(mf, self.path)
        except BaseException:
            if self._owned:
                mf.close()
            raise
        self._mf = mf
        self._metadata = header.metadata
        self._cols = header.tensors
        self._start = header.data_start
        self._index = dict(zip(self._cols.names, range(len(self._cols.names))))
        self._keys: list[str] | None = None        # sorted, when first asked
        # name -> (numpy dtype, shape, file offset, size in bytes, whether the dtype
        # exports a buffer), filled on first use
        self._plans: dict[str, tuple[Any, Any, int, int, bool]] = {}

    # -- life cycle -------------------------------------------------------------

    def __enter__(self) -> safe_open:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        mf, self._mf = self._mf, None
        if mf is not None and self._owned:
            mf.close()

    def __del__(self) -> None:
        # as the reference's mapping, the file goes with the object: no warning
        if getattr(self, "_mf", None) is not None:
            self.close()

    def __repr__(self) -> str:
        state = "closed" if self._mf is None else f"{len(self._index)} tensors"
        return f"<mcsafe safe_open {self.path!r} framework={self._framework!r} {state}>"

    # -- the header -------------------------------------------------------------

    def keys(self) -> list[str]:
        """The tensors' names, sorted."""
        self._open()
        if self._keys is None:
            self._keys = sorted(self._cols.names)
        return list(self._keys)

    def offset_keys(self) -> list[str]:
        """The tensors' names in the order of their data in the file."""
        self._open()
        return list(self._cols.names)

    def metadata(self) -> dict[str, str] | None:
        """The header's ``__metadata__``, or None when it has none."""
        self._open()
        return None if self._metadata is None else dict(self._metadata)

    def __contains__(self, name: object) -> bool:
        try:
            return name in self._index
        except TypeError:           # unhashable
            return False

    def __len__(self) -> int:
        return len(self._index)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    # -- tensors ----------------------------------------------------------------

    def get_tensor(self, name: str) -> Any:
        """The tensor as a new array (or torch tensor). MemoryFaultError naming the
        tensor, the element and the file offset if a byte of it cannot be read."""
        if self._torch is not None:
            return self._get_torch(name)
        try:
            dtype, shape, offset, size, exported = self._plans[name]
        except KeyError:
            dtype, shape, offset, size, exported = self._plan(name)
        try:
            out = np.empty(shape, dtype)
        except ValueError as exc:       # a dimension past numpy's limits
            raise self._shape_error(name, shape, exc) from None
        mf = self._mf
        if size and mf is not None:
            # ml_dtypes arrays export no buffer format: read into their bytes
            buf = out if exported else out.reshape(-1).view(np.uint8)
            if size >= PREFAULT_BYTES:
                _prefault(buf)      # type: ignore[arg-type]  # an ndarray
            try:
                got = mf.readinto(buf, offset)     # type: ignore[arg-type]  # an ndarray
            except MemoryFaultError:
                got = 0
            if got != size:
                self._fail(name, out.reshape(-1).view(np.uint8), offset, got)
        elif mf is None:
            self._open()
        return out

    def get_tensors(self) -> dict[str, Any]:
        """Every tensor, by name, in the order of their data."""
        mf = self._open()
        cols = self._cols
        if self._torch is not None:
            return {name: self._get_torch(name) for name in cols.names}
        # get_tensor's work, walking the columns: no per-tensor plan to make
        table = {d: self._numpy_or_none(d) for d in set(cols.dtypes)}
        out = {}
        start, empty, readinto, u8 = self._start, np.empty, mf.readinto, np.uint8
        for name, dtype, shape, begin, end in zip(cols.names, cols.dtypes, cols.shapes,
                                                  cols.begins, cols.ends):
            np_dtype = table[dtype]
            if np_dtype is None:
                self._numpy_dtype(name, cols.info(self._index[name]))    # raises
            try:
                array = empty(shape, np_dtype)
            except ValueError as exc:
                raise self._shape_error(name, tuple(shape), exc) from None
            size = end - begin
            if size:
                buf = array if dtype.numpy is not None else array.reshape(-1).view(u8)
                if size >= PREFAULT_BYTES:
                    _prefault(buf)      # type: ignore[arg-type]  # an ndarray
                try:
                    got = readinto(buf, start + begin)     # type: ignore[arg-type]
                except MemoryFaultError:
                    got = 0
                if got != size:
                    self._fail(name, array.reshape(-1).view(u8), start + begin, got)
            out[name] = array
        return out

    def get_slice(self, name: str) -> SafeSlice:
        """A slice object for the tensor: ``get_shape()``, ``get_dtype()``, and
        indexing (``f.get_slice("w")[:, 2:8]``), which reads only the bytes it needs."""
        self._open()
        return SafeSlice(self, name, self._info(name))

    # -- internals ----------------------------------------------------------------

    def _open(self) -> MappedFile:
        if self._mf is None:
            raise SafetensorsError(f"{self.path}: file is closed")
        return self._mf

    def _info(self, name: str) -> TensorInfo:
        try:
            return self._cols.info(self._index[name])
        except (KeyError, TypeError):
            raise TensorNotFound(f"{self.path}: file does not contain tensor {name!r}"
                                 ) from None

    def _describe(self, name: str, info: TensorInfo) -> str:
        return f"tensor {name!r} ({info.dtype.name} {list(info.shape)})"

    def _plan(self, name: str) -> tuple[Any, tuple[int, ...], int, int, bool]:
        self._open()
        info = self._info(name)
        dtype = self._numpy_dtype(name, info)
        plan = (dtype, info.shape, self._start + info.begin, info.end - info.begin,
                info.dtype.numpy is not None)
        self._plans[name] = plan
        return plan

    def _shape_error(self, name: str, shape: tuple[int, ...], exc: Exception
                     ) -> SafetensorsError:
        return SafetensorsError(f"{self.path}: {self._describe(name, self._info(name))}: "
                                f"numpy cannot make an array of shape {list(shape)}: {exc}")

    @staticmethod
    def _numpy_or_none(dtype: Any) -> Any:
        try:
            return numpy_dtype(dtype)
        except Unrepresentable:
            return None

    def _numpy_dtype(self, name: str, info: TensorInfo) -> Any:
        try:
            return numpy_dtype(info.dtype)
        except Unrepresentable as exc:
            raise SafetensorsError(f"{self.path}: {self._describe(name, info)}: {exc}"
                                   ) from None

    def _fail(self, name: str, raw: npt.NDArray[np.uint8], offset: int, got: int) -> None:
        """A read of the tensor that came back short after `got` bytes: read the rest,
        and raise the MemoryFaultError naming where it stopped (or return if the rest
        now reads)."""
        try:
            fill(self._open(), memoryview(raw)[got:], offset + got)  # type: ignore[arg-type]
        except Stopped as stop:
            self._raise(name, self._info(name), stop, "")

    def _raise(self, name: str, info: TensorInfo, stop: Stopped, what: str) -> NoReturn:
        at = stop.fault.offset
        element = (at - self._start - info.begin) * 8 // info.dtype.bits
        count = 1
        for d in info.shape:
            count *= d
        index = ""
        if len(info.shape) > 1 and element < count:
            index = f" (index {tuple(int(i) for i in np.unravel_index(element, info.shape))})"
        raise stop.error(f"{self._describe(name, info)}{what}: {stop.where()} in element "
                         f"{element}{index} of {count} at file offset {at}",
                         self.path, element) from None

    def _get_torch(self, name: str) -> Any:
        torch = self._torch
        assert torch is not None
        info = self._info(name)
        self._open()
        try:
            dtype = torch_dtype(torch, info.dtype)
        except Unrepresentable as exc:
            raise SafetensorsError(f"{self.path}: {self._describe(name, info)}: {exc}"
                                   ) from None
        size = info.end - info.begin
        raw = torch.empty(size, dtype=torch.uint8)
        if size:
            view = raw.numpy()
            if size >= PREFAULT_BYTES:
                _prefault(view)
            offset = self._start + info.begin
            try:
                got = self._open().readinto(view, offset)
            except MemoryFaultError:
                got = 0
            if got != size:
                self._fail(name, view, offset, got)
        return self._to_torch(raw, dtype, info.shape, info.dtype.bits)

    def _to_torch(self, raw: Any, dtype: Any, shape: tuple[int, ...], bits: int) -> Any:
        shape = tuple(shape)
        if bits == 4 and shape:         # float4_e2m1fn_x2: two elements to a byte
            shape = shape[:-1] + (shape[-1] // 2,)
        out = raw.view(dtype).reshape(shape)
        return out if self._device in ("cpu", None) else out.to(self._device)


class SafeSlice:
    """A tensor of an open file, to be indexed: ``get_shape()``, ``get_dtype()`` and
    ``slice[...]`` as the safetensors package's slice objects (ints, slices with a
    positive step, one ``...``); only the bytes the index selects are read."""

    def __init__(self, owner: safe_open, name: str, info: TensorInfo) -> None:
        self._owner, self._name, self._info = owner, name, info

    def __repr__(self) -> str:
        return f"<SafeSlice {self._name!r} {self._info.dtype.name} {list(self._info.shape)}>"

    def get_shape(self) -> list[int]:
        return list(self._info.shape)

    def get_dtype(self) -> str:
        return self._info.dtype.name

    def __getitem__(self, key: Any) -> Any:
        owner, info, name = self._owner, self._info, self._name
        mf = owner._open()
        try:
            axes = _slice.plan(key, info.shape)
        except _slice.SliceError as exc:
            raise SafetensorsError(f"{owner.path}: tensor {name!r} "
                                   f"{list(info.shape)}[{_show(key)}]: {exc}") from None
        shape = _slice.out_shape(axes)
        where = _slice.layout(axes, info.shape, info.dtype.bits)
        if where.run % 8 or where.base % 8 or any(step % 8 for _, step in where.walked):
            raise SafetensorsError(f"{owner.path}: tensor {name!r} [{_show(key)}]: the slice "
                                   f"of {info.dtype.name} elements does not start and end at "
                                   "byte boundaries")
        what = f" [{_show(key)}]"
        count = where.run // 8
        for length, _ in where.walked:
            count *= length
        torch = owner._torch
        if torch is not None:
            dtype = torch_dtype(torch, info.dtype)
            raw = torch.empty(count, dtype=torch.uint8)
            self._read(mf, raw.numpy(), where, what)
            return owner._to_torch(raw, dtype, shape, info.dtype.bits)
        try:
            out = np.empty(shape, owner._numpy_dtype(name, info))
        except ValueError as exc:
            raise owner._shape_error(name, shape, exc) from None
        raw = out.reshape(-1).view(np.uint8)
        if raw.nbytes >= PREFAULT_BYTES:
            _prefault(raw)      # type: ignore[arg-type]  # an ndarray
        self._read(mf, raw, where, what)
        return out

    def _read(self, mf: MappedFile, out: npt.NDArray[np.uint8], where: _slice.Layout,
              what: str) -> None:
        start = self._owner._start + self._info.begin
        readinto = mf.readinto

        def read(buf: Any, at: int) -> None:
            try:
                got = readinto(buf, at)
            except MemoryFaultError:
                got = 0
            if got != len(buf):
                fill(mf, memoryview(buf)[got:], at + got)

        try:
            gather(read, out, start + where.base // 8, where.run // 8,
                   [(n, step // 8) for n, step in where.walked], PAGE)
        except Stopped as stop:
            self._owner._raise(self._name, self._info, stop, what)


def _show(key: Any) -> str:
    items = key if type(key) is tuple else (key,)
    out = []
    for item in items:
        if type(item) is slice:
            text = f"{'' if item.start is None else item.start}:" \
                   f"{'' if item.stop is None else item.stop}"
            out.append(text + ("" if item.step is None else f":{item.step}"))
        else:
            out.append("..." if item is Ellipsis else repr(item))
    return ", ".join(out)


def _framework(framework: str, path: str) -> str:
    if framework in FRAMEWORKS:
        return FRAMEWORKS[framework]
    if framework in OTHERS:
        raise SafetensorsError(f"{path}: framework {framework!r} is not served by mcsafe "
                               "(numpy/np and pt/torch/pytorch are)")
    raise SafetensorsError(f"{path}: framework {framework!r} is invalid")


def _device(device: str | int | None, framework: str, path: str) -> str | int | None:
    if framework == NUMPY and device not in ("cpu", None):
        raise SafetensorsError(f"{path}: device {device!r} is not supported for framework "
                               "numpy (only cpu)")
    return device


def _import_torch(path: str) -> Any:
    try:
        import torch
    except ImportError as exc:
        raise ModuleNotFoundError(f"{path}: framework 'pt' needs torch, which is not "
                                  f"installed ({exc})", name="torch") from None
    return torch


def load_file(filename: str | os.PathLike[str] | MappedFile, device: str | int | None = "cpu",
              *, framework: str = "numpy") -> dict[str, Any]:
    """Every tensor of a .safetensors file, by name, as ``safetensors.numpy.load_file``
    (or ``safetensors.torch.load_file`` with framework="pt") returns them."""
    with safe_open(filename, framework, device) as f:
        return f.get_tensors()
