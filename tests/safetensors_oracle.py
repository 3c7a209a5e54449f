"""The safetensors package (0.8) as the oracle for mcsafe.formats.safetensors: what each
makes of one file, in a form the tests compare."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import safetensors

from mcsafe.formats.safetensors import SafetensorsError, safe_open

#: Dtypes numpy cannot hold, whose tensors fail alone in mcsafe (and in the reference).
PACKED = {"F4", "F6_E2M3", "F6_E3M2"}


@dataclass
class Refused:
    message: str
    kind: str = "SafetensorError"


@dataclass
class Opened:
    keys: list[str]
    offset_keys: list[str]
    metadata: dict[str, str] | None
    dtypes: dict[str, str]
    shapes: dict[str, list[int]]
    data: dict[str, bytes | None] = field(default_factory=dict)   # None: failed alone


def reference(path: Path) -> Opened | Refused:
    try:
        with safetensors.safe_open(str(path), "np") as f:
            keys, order, metadata = f.keys(), f.offset_keys(), f.metadata()
            dtypes = {n: f.get_slice(n).get_dtype() for n in keys}
            shapes = {n: f.get_slice(n).get_shape() for n in keys}
        # deserialize() gives every tensor's bytes, whatever its dtype
        data = {n: bytes(t["data"]) for n, t in safetensors.deserialize(path.read_bytes())}
    except safetensors.SafetensorError as exc:
        return Refused(str(exc))
    return Opened(keys, order, metadata, dtypes, shapes, data)


def ours(path: Path) -> Opened | Refused:
    try:
        with safe_open(path, "np") as f:
            keys, order, metadata = f.keys(), f.offset_keys(), f.metadata()
            dtypes = {n: f.get_slice(n).get_dtype() for n in keys}
            shapes = {n: f.get_slice(n).get_shape() for n in keys}
            data: dict[str, bytes | None] = {}
            for n in keys:
                try:
                    data[n] = f.get_tensor(n).tobytes()
                except SafetensorsError as exc:
                    assert f"tensor {n!r}" in str(exc) and str(path) in str(exc)
                    data[n] = None
    except SafetensorsError as exc:
        return Refused(str(exc), "SafetensorsError")
    return Opened(keys, order, metadata, dtypes, shapes, data)


def data_offsets(path: Path) -> dict[str, tuple[int, int]]:
    """Each tensor's data_offsets, from a header the reference accepted."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    pairs: list[tuple[str, Any]] = json.loads(raw[8:8 + n], object_pairs_hook=list)
    out = {}
    for name, entry in pairs:
        if name != "__metadata__":
            e = dict(entry) if isinstance(entry, list) and entry and \
                isinstance(entry[0], tuple) else entry
            offsets = e["data_offsets"] if isinstance(e, dict) else e[2]
            out[name] = tuple(offsets)
    return out


def numpy_refuses(shape: list[int]) -> bool:
    try:
        np.empty(shape, np.uint8)
    except ValueError:
        return True
    return False


def assert_same(path: Path) -> Opened | Refused:
    """mcsafe and the reference agree on the file: both refuse it, or both open it
    with the same keys, metadata, dtypes, shapes and bytes. Returns ours."""
    theirs, mine = reference(path), ours(path)
    if isinstance(theirs, Refused) or isinstance(mine, Refused):
        assert type(theirs) is type(mine), f"{path.name}: reference {theirs}, mcsafe {mine}"
        if isinstance(mine, Refused):
            assert str(path) in mine.message and "\n" not in mine.message
        return mine
    assert mine.keys == theirs.keys
    assert mine.metadata == theirs.metadata
    assert mine.dtypes == theirs.dtypes and mine.shapes == theirs.shapes
    # offset order: the reference breaks ties (empty tensors) in its hash map's order
    where = data_offsets(path)
    assert sorted(mine.offset_keys) == sorted(theirs.offset_keys)
    assert [where[n] for n in mine.offset_keys] == [where[n] for n in theirs.offset_keys]
    for name in mine.keys:
        if mine.data[name] is None:
            assert mine.dtypes[name] in PACKED or numpy_refuses(mine.shapes[name]), name
        else:
            assert mine.data[name] == theirs.data[name], name
    return mine
