"""mcsafe.formats.safetensors (item 12 of issue 10) against files the safetensors
package writes: whole, truncated by another process, poisoned."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mcsafe import MemoryFaultError, inject
from mcsafe.formats.safetensors import SafetensorsError, SafetensorsFile, load_file

st_numpy = pytest.importorskip("safetensors.numpy", reason="pip install safetensors "
                               "(the test extra has it)")
PAGE = inject.PAGE
EXAMPLE = Path(__file__).parent.parent / "examples" / "safetensors_load.py"


def tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {
        "embed.weight": rng.standard_normal((64, 48)).astype(np.float32),
        "ids": np.arange(1000, dtype=np.int64).reshape(10, 100),
        "mask": rng.integers(0, 2, 333).astype(np.bool_),
        "half": rng.standard_normal(700).astype(np.float16),
        "big": rng.standard_normal((128, 256)).astype(np.float64),      # 256 KiB
        "scalar": np.array(7, dtype=np.uint8),
        "empty": np.zeros((0, 4), dtype=np.int16),
    }


@pytest.fixture
def shard(tmp_path) -> Path:
    path = tmp_path / "model.safetensors"
    st_numpy.save_file(tensors(), str(path), metadata={"format": "np", "step": "12"})
    return path


def _span(path: Path, name: str) -> tuple[int, int]:
    """Where a tensor's bytes are in the file, from the header the package wrote."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    begin, end = json.loads(raw[8:8 + n])[name]["data_offsets"]
    return 8 + n + begin, 8 + n + end


def test_loads_what_the_package_wrote(shard) -> None:
    ours, theirs = load_file(shard), st_numpy.load_file(str(shard))
    assert ours.keys() == theirs.keys() == tensors().keys()
    for name, want in theirs.items():
        assert ours[name].dtype == want.dtype and ours[name].shape == want.shape, name
        assert np.array_equal(ours[name], want), name
    with SafetensorsFile(shard) as f:
        assert f.metadata == {"format": "np", "step": "12"}
        assert f.shape("embed.weight") == (64, 48)
        with pytest.raises(KeyError, match="no tensor 'nope'"):
            f.get_tensor("nope")


def test_truncated_mid_tensor_by_another_process(shard) -> None:
    begin, end = _span(shard, "big")
    with SafetensorsFile(shard) as f:                  # header read, file mapped
        cut = begin + (end - begin) // 2 + 3
        subprocess.run(["truncate", "-s", str(cut), str(shard)], check=True)
        before = {n for n in f if _span(shard, n)[1] <= cut}
        for name in before:
            assert np.array_equal(f.get_tensor(name), tensors()[name])
        with pytest.raises(MemoryFaultError) as info:
            f.get_tensor("big")
        e = info.value
        assert "tensor 'big' (F64 [128, 256])" in str(e) and e.cause == "truncated"
        assert e.offset == cut and e.element == (cut - begin) // 8
        assert str(shard) in str(e)
        after = [n for n in f if _span(shard, n)[1] > max(cut, _span(shard, n)[0])]
        assert after                                   # (an empty tensor needs no bytes)
        for name in after:
            with pytest.raises(MemoryFaultError, match=f"tensor '{name}'"):
                f.get_tensor(name)
    with pytest.raises(MemoryFaultError, match="tensor 'big'"):
        load_file(shard)                               # truncated before it was opened


def test_a_poisoned_page_names_the_tensor(shard, bad_file) -> None:
    begin, end = _span(shard, "big")
    bad_page = begin // PAGE + 3
    mf = bad_file(shard.read_bytes(), [bad_page])
    with SafetensorsFile(mf) as f:
        assert np.array_equal(f.get_tensor("embed.weight"), tensors()["embed.weight"])
        with pytest.raises(MemoryFaultError) as info:
            f.get_tensor("big")
        assert "tensor 'big'" in str(info.value) and info.value.offset == bad_page * PAGE
        assert info.value.element == (bad_page * PAGE - begin) // 8


@pytest.mark.parametrize("content, why", [
    (b"\x01\x02", "shorter than the 8-byte header length"),
    (struct.pack("<Q", 1 << 40) + b"{}", "does not fit"),
    (struct.pack("<Q", 4) + b"{no}", "not JSON"),
    (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
    (struct.pack("<Q", 40) + json.dumps({"a": {"dtype": "F32", "shape": [2],
                                               "data_offsets": [0, 4]}}).encode()[:40],
     "not JSON"),
    (struct.pack("<Q", 56) + b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}   ',
     "needs 8 bytes"),
    (struct.pack("<Q", 56) + b'{"a":{"dtype":"BF16","shape":[1],"data_offsets":[0,2]}}  ',
     "no numpy equivalent"),
])
def test_malformed_headers_name_the_file(tmp_path, content: bytes, why: str) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(SafetensorsError) as info:
        load_file(path)
    assert why in str(info.value) and str(path) in str(info.value)


def test_the_example_reports_in_one_line(shard) -> None:
    ok = subprocess.run([sys.executable, str(EXAMPLE), str(shard)], capture_output=True,
                        text=True)
    assert ok.returncode == 0 and "big F64 [128, 256]" in ok.stdout
    begin, _ = _span(shard, "big")
    os.truncate(shard, begin + 100)
    bad = subprocess.run([sys.executable, str(EXAMPLE), str(shard)], capture_output=True,
                         text=True)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1
    assert "tensor 'big'" in bad.stderr and "Traceback" not in bad.stderr


def _entry(shape: object = (4,), offsets: object = (0, 4)) -> dict[str, object]:
    return {"dtype": "U8", "shape": shape, "data_offsets": offsets}


@pytest.mark.parametrize("header, why", [
    (b"[" * 100000 + b"]" * 100000, "not JSON"),                       # RecursionError
    (b'{"a": {"dtype": "U8", "shape": [' + b"9" * 5000 + b'], "data_offsets": [0, 4]}}',
     "not JSON"),                                                      # int digit limit
    (json.dumps({"a": _entry([True, 4])}).encode(), "not a list of sizes"),
    (json.dumps({"a": _entry(offsets=[False, 4])}).encode(), "is not [begin, end]"),
    (json.dumps({"__metadata__": [1, 2], "a": _entry()}).encode(), "__metadata__"),
    (json.dumps({"__metadata__": {"step": 1}, "a": _entry()}).encode(), "__metadata__"),
    (b'{"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}, '
     b'"a": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]}}', "twice"),
])
def test_hostile_headers_are_refused_in_one_line(tmp_path, header: bytes, why: str) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"x" * 4)
    with pytest.raises(SafetensorsError) as info:
        load_file(path)
    assert why in str(info.value) and str(path) in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("shape, dtype", [([1 << 40], "U8"), ([1 << 40, 1 << 40], "F64")])
def test_a_tensor_larger_than_the_file_names_it_without_allocating(tmp_path, shape, dtype
                                                                    ) -> None:
    header = json.dumps({"a": {"dtype": dtype, "shape": shape, "data_offsets":
                               [0, int(np.prod(shape, dtype=object)) * (8 if dtype == "F64"
                                                                         else 1)]}}).encode()
    path = tmp_path / "big.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"x" * 4)
    with pytest.raises(MemoryFaultError) as info:
        load_file(path)                       # was MemoryError / "dimension exceeded"
    assert "tensor 'a'" in str(info.value) and info.value.cause == "truncated"
