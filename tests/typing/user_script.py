"""A user's script over the whole public API, checked with ``mypy --strict`` by
tests/test_typing.py (and run, so every call in it is real). assert_type states
what a user's type checker must infer."""

from __future__ import annotations

import io
import os
import sys
import tempfile
from typing import Any, Literal

import numpy as np
from typing_extensions import assert_type

import extable
import mcsafe
from mcsafe import (CopyResult, FaultInfo, MappedFile, MemoryFaultError, PoisonNotice,
                    TableError, inject)
from mcsafe.fileio import MappedFileIO
from mcsafe.formats import safetensors


def copy_side(dst: bytearray, src: bytes) -> Literal["src", "dst"] | None:
    result = mcsafe.copy_report(dst, src)
    assert_type(result, CopyResult)
    assert_type(mcsafe.copy(dst, src, 4, dst_offset=1), int)
    if result.fault is None:
        return None
    assert_type(result.fault, FaultInfo)
    cause = result.fault.cause
    assert_type(cause, Literal["poison", "io", "io or poison", "truncated", "no space",
                               "protection", "unmapped"])
    return result.fault.side


def floats(path: str) -> np.ndarray[Any, np.dtype[np.float32]]:
    with MappedFile(path) as f:
        everything = f.read(-1)
        assert_type(everything, bytes)
        assert_type(f.readinto(bytearray(8), 0), int)
        assert_type(f.bad_ranges(), list[tuple[int, int]])
        assert_type(f.scrub(progress=lambda done, total: None), list[tuple[int, int]])
        return f.read_array(np.float32, 2)


def as_file_objects(path: str) -> str:
    with mcsafe.fileio.open(path) as binary:
        assert_type(binary, io.BufferedReader)
        head = binary.read(4)
    with mcsafe.fileio.open(path, "rb+") as both:
        assert_type(both, io.BufferedRandom)
    with mcsafe.fileio.open(path, "rb", 0) as raw:
        assert_type(raw, MappedFileIO)
    with mcsafe.fileio.open(path, "r", encoding="latin-1") as text:
        assert_type(text, io.TextIOWrapper)
        return text.read(4) + head.hex()


def status() -> tuple[int, int, bool, str, list[PoisonNotice], list[str], str]:
    mcsafe.install()
    return (mcsafe.published_table_count(), mcsafe.claimed_faults(),
            mcsafe.handler_installed(), mcsafe.table_status(), mcsafe.poison_log(),
            mcsafe.get_include(), extable.include_dir())


def register(path: str) -> bool:
    try:
        mcsafe.register(path)
    except TableError as exc:
        print(f"not registered: {exc}")
        return False
    return mcsafe.unregister(path)


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "data")
        with open(path, "wb") as out:
            out.write(np.arange(4, dtype=np.float32).tobytes())
        assert copy_side(bytearray(8), b"12345678") is None
        assert floats(path).tolist() == [0.0, 1.0]
        assert as_file_objects(path).endswith(np.float32(0).tobytes().hex())
        loaded = mcsafe.arrays.load(path + ".npy") if os.path.exists(path + ".npy") else None
        assert loaded is None
        assert not register(path)                    # not a loaded object: TableError
        with inject.region("mprotect", 2, [1]) as r:
            result = mcsafe.copy_report(bytearray(r.size), r.buffer)
        assert result.fault is not None and result.fault.cause in ("protection", "unmapped")
        try:
            with MappedFile(path) as f:
                f.read_array(np.float64, 9)
        except MemoryFaultError as exc:
            assert_type(exc.cause, Literal["poison", "io", "io or poison", "truncated",
                                           "no space", "protection", "unmapped"])
        print(status()[0] >= 1, safetensors.SafetensorError.__name__,
              mcsafe.GIL_RELEASE_BYTES > mcsafe.SMALL_COPY_BYTES, extable.__version__)
    return 0


if __name__ == "__main__":
    sys.exit(main())
