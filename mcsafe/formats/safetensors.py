"""Loading .safetensors files through MappedFile.

The format: an 8-byte little-endian header length N, N bytes of JSON mapping
each tensor name to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets
into the data that follows the header; an optional ``"__metadata__"`` of
strings), then the raw little-endian tensor data. Each tensor is copied out by
:func:`mcsafe.arrays.read_array`, so a truncated or poisoned shard raises an
error naming the tensor instead of killing the process.

Written by hand rather than through the safetensors package: its loaders map
the file and read it with plain loads, which is the SIGBUS this avoids.
"""

from __future__ import annotations

import errno
import json
import math
import os
import struct
from typing import Any, Iterator

import numpy as np

from ..arrays import read_array
from .._types import MemoryFaultError
from ..mapped import MappedFile

#: safetensors dtype names numpy can hold, and their numpy dtypes.
DTYPES = {"BOOL": "?", "U8": "u1", "I8": "i1", "U16": "<u2", "I16": "<i2", "F16": "<f2",
          "U32": "<u4", "I32": "<i4", "F32": "<f4", "U64": "<u8", "I64": "<i8", "F64": "<f8",
          "C64": "<c8"}
MAX_HEADER = 100 << 20          # the limit the safetensors package itself enforces


class SafetensorsError(ValueError):
    """A .safetensors file that is not well formed; the message names the file."""


class SafetensorsFile:
    """An open .safetensors file: its header, read at open, and its tensors, copied
    out on demand as new numpy arrays."""

    def __init__(self, file: MappedFile | str | os.PathLike[str]) -> None:
        self._owned = not isinstance(file, MappedFile)
        self.mapped = MappedFile(file) if not isinstance(file, MappedFile) else file
        try:
            self.metadata, self._tensors, self._data_start = _header(self.mapped)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> SafetensorsFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._owned:
            self.mapped.close()

    def keys(self) -> list[str]:
        return list(self._tensors)

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._entry(name)["shape"])

    def dtype(self, name: str) -> str:
        """The tensor's safetensors dtype name ('F32', 'I64', ...)."""
        return str(self._entry(name)["dtype"])

    def get_tensor(self, name: str) -> np.ndarray[Any, np.dtype[Any]]:
        """The tensor as a new array; MemoryFaultError naming it if a byte of it is
        bad or the file ends inside it."""
        entry = self._entry(name)
        dtype = np.dtype(DTYPES[entry["dtype"]])
        begin, end = entry["data_offsets"]
        count = (end - begin) // dtype.itemsize
        try:
            flat = read_array(self.mapped, dtype, count, self._data_start + begin)
        except MemoryFaultError as exc:
            element = exc.element if exc.element is not None else 0
            err = MemoryFaultError(exc.fault, f"tensor {name!r} ({entry['dtype']} "
                                              f"{list(entry['shape'])}): {exc.what}",
                                   self.mapped.path, exc.errno or errno.EIO)
            err.element = element
            raise err from None
        return flat.reshape(entry["shape"])

    def _entry(self, name: str) -> dict[str, Any]:
        try:
            return self._tensors[name]
        except KeyError:
            raise KeyError(f"{self.mapped.path}: no tensor {name!r}") from None


def load_file(path: MappedFile | str | os.PathLike[str]) -> dict[str, np.ndarray[Any, Any]]:
    """Every tensor of a .safetensors file, as safetensors.numpy.load_file gives."""
    with SafetensorsFile(path) as f:
        return {name: f.get_tensor(name) for name in f}


def _header(mf: MappedFile) -> tuple[dict[str, str], dict[str, dict[str, Any]], int]:
    def bad(why: str) -> SafetensorsError:
        return SafetensorsError(f"{mf.path}: not a safetensors file: {why}")

    size = mf.size
    head = mf.read(8, 0)
    if len(head) < 8:
        raise bad(f"{size} bytes, shorter than the 8-byte header length")
    (n,) = struct.unpack("<Q", head)
    if n > MAX_HEADER or 8 + n > size:
        raise bad(f"header length {n} does not fit in the file's {size} bytes")
    raw = mf.read(n, 8)          # MemoryFaultError here names no tensor: there is none
    if len(raw) < n:
        raise bad(f"the file ends inside the header (at byte {8 + len(raw)})")
    try:
        header = json.loads(raw, object_pairs_hook=_no_duplicates)
    except _Duplicate as exc:
        raise bad(f"key {exc.args[0]!r} appears twice in the header") from None
    # ValueError: bad JSON, or an integer past Python's digit limit; RecursionError:
    # arrays nested deeper than the parser's stack (a hostile header's cheap attack)
    except (ValueError, RecursionError) as exc:
        raise bad(f"header is not JSON ({type(exc).__name__}: "
                  f"{str(exc).splitlines()[0][:200]})") from None
    if not isinstance(header, dict):
        raise bad("header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not (isinstance(metadata, dict) and
            all(isinstance(v, str) for v in metadata.values())):
        raise bad(f"__metadata__ {str(metadata)[:200]} is not a map of strings to strings")
    tensors: dict[str, dict[str, Any]] = {}
    for name, entry in header.items():
        tensors[name] = _check_entry(name, entry, bad)
    _check_layout(tensors, bad)
    return metadata, tensors, 8 + n


def _check_entry(name: str, entry: Any, bad: Any) -> dict[str, Any]:
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= set(entry):
        raise bad(f"tensor {name!r}: entry {entry!r} lacks dtype, shape or data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in DTYPES:
        raise bad(f"tensor {name!r}: dtype {dtype!r} has no numpy equivalent "
                  f"(known: {', '.join(DTYPES)})")
    if not (isinstance(shape, list) and all(_size(d) for d in shape)):
        raise bad(f"tensor {name!r}: shape {shape!r} is not a list of sizes")
    if not (isinstance(offsets, list) and len(offsets) == 2 and
            all(_size(o) for o in offsets) and offsets[0] <= offsets[1]):
        raise bad(f"tensor {name!r}: data_offsets {offsets!r} is not [begin, end]")
    want = math.prod(shape) * np.dtype(DTYPES[dtype]).itemsize
    if offsets[1] - offsets[0] != want:
        raise bad(f"tensor {name!r}: {dtype} {shape} needs {want} bytes, data_offsets "
                  f"give {offsets[1] - offsets[0]}")
    return entry


class _Duplicate(Exception):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object without repeated keys (json keeps the last one silently, which
    would hide a tensor, or leave its bytes unaccounted for)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Duplicate(key)
        out[key] = value
    return out


def _size(value: Any) -> bool:
    """A JSON integer >= 0 (JSON true and false are Python ints: not sizes)."""
    return type(value) is int and value >= 0


def _check_layout(tensors: dict[str, dict[str, Any]], bad: Any) -> None:
    """Tensors must tile the data area without gaps or overlaps, as the format says."""
    at = 0
    for name, entry in sorted(tensors.items(), key=lambda kv: tuple(kv[1]["data_offsets"])):
        begin, end = entry["data_offsets"]
        if begin != at:
            raise bad(f"tensor {name!r} starts at data offset {begin}, expected {at} "
                      "(overlap or gap)")
        at = end
