"""The element types of the safetensors format, as the safetensors package (0.8) knows
them, and what each becomes in numpy and in torch.

numpy cannot hold BF16 or the F8 types: they come back as ``ml_dtypes`` arrays (the
numpy dtypes JAX uses) when ml_dtypes is installed, otherwise as unsigned integers of
the same width holding the raw bits (``<u2`` for BF16, ``u1`` for F8), shape unchanged.
F4 and F6 pack several elements into a byte, which no numpy dtype can hold: those
tensors fail alone, naming the tensor. numpy and ml_dtypes are imported on first use.
"""

from __future__ import annotations

import sys
from typing import Any, NamedTuple


class Dtype(NamedTuple):
    name: str           #: as in the header: 'F32', 'BF16', ...
    bits: int           #: per element
    numpy: str | None   #: numpy's dtype for it, if numpy has one
    ml_dtypes: str | None   #: else the ml_dtypes type's name, if it has one
    raw: str | None     #: else the unsigned type of the same width: the raw bits
    torch: str | None   #: torch's dtype attribute


def _d(name: str, bits: int, numpy: str | None = None, ml: str | None = None,
       torch: str | None = None) -> Dtype:
    raw = {8: "u1", 16: "<u2"}.get(bits) if ml else None
    return Dtype(name, bits, numpy, ml, raw, torch)


# In the reference's order (increasing alignment); header names are case-sensitive.
DTYPES: dict[str, Dtype] = {d.name: d for d in (
    _d("BOOL", 8, "?", torch="bool"),
    _d("F4", 4, torch="float4_e2m1fn_x2"),
    _d("F6_E2M3", 6),
    _d("F6_E3M2", 6),
    _d("U8", 8, "u1", torch="uint8"),
    _d("I8", 8, "i1", torch="int8"),
    _d("F8_E5M2", 8, ml="float8_e5m2", torch="float8_e5m2"),
    _d("F8_E4M3", 8, ml="float8_e4m3fn", torch="float8_e4m3fn"),
    _d("F8_E8M0", 8, ml="float8_e8m0fnu", torch="float8_e8m0fnu"),
    _d("F8_E4M3FNUZ", 8, ml="float8_e4m3fnuz", torch="float8_e4m3fnuz"),
    _d("F8_E5M2FNUZ", 8, ml="float8_e5m2fnuz", torch="float8_e5m2fnuz"),
    _d("I16", 16, "<i2", torch="int16"),
    _d("U16", 16, "<u2", torch="uint16"),
    _d("F16", 16, "<f2", torch="float16"),
    _d("BF16", 16, ml="bfloat16", torch="bfloat16"),
    _d("I32", 32, "<i4", torch="int32"),
    _d("U32", 32, "<u4", torch="uint32"),
    _d("F32", 32, "<f4", torch="float32"),
    _d("C64", 64, "<c8", torch="complex64"),
    _d("F64", 64, "<f8", torch="float64"),
    _d("I64", 64, "<i8", torch="int64"),
    _d("U64", 64, "<u8", torch="uint64"),
)}

if sys.byteorder != "little":       # pragma: no cover - x86-64 and arm64 only
    raise ImportError("mcsafe.formats.safetensors reads little-endian hosts only")


class Unrepresentable(Exception):
    """A dtype the chosen framework cannot hold; the message says why."""


_numpy_cache: dict[str, Any] = {}


def numpy_dtype(dtype: Dtype) -> Any:
    """numpy's dtype for a safetensors dtype (ml_dtypes' or the raw bits' where numpy
    has none); Unrepresentable for the packed sub-byte types."""
    try:
        return _numpy_cache[dtype.name]
    except KeyError:
        pass
    import numpy as np

    if dtype.numpy is not None:
        out = np.dtype(dtype.numpy)
    elif dtype.ml_dtypes is not None:
        try:
            import ml_dtypes
        except ImportError:
            out = np.dtype(dtype.raw)
        else:
            out = np.dtype(getattr(ml_dtypes, dtype.ml_dtypes))
    else:
        raise Unrepresentable(f"{dtype.name} packs {dtype.bits}-bit elements across bytes, "
                              "which no numpy dtype holds")
    _numpy_cache[dtype.name] = out
    return out


def torch_dtype(torch: Any, dtype: Dtype) -> Any:
    """torch's dtype for a safetensors dtype; Unrepresentable if this torch has none."""
    found = getattr(torch, dtype.torch, None) if dtype.torch else None
    if found is None:
        raise Unrepresentable(f"torch {getattr(torch, '__version__', '?')} has no dtype for "
                              f"{dtype.name}")
    return found
