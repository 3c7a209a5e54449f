"""safe_open's API as the safetensors package has it, what issue 19 found missing, and
the choices the reference leaves to us (BF16/F8 without ml_dtypes, torch, threads)."""

from __future__ import annotations

import json
import struct
import threading
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import safetensors
import safetensors.numpy
from safetensors.numpy import save_file

from conftest import python_child
from mcsafe.formats.safetensors import (SafetensorError, SafetensorsError, TensorNotFound,
                                        load_file, safe_open)


@pytest.fixture
def shard(tmp_path) -> Path:
    """A shard of a BF16 model, as most LLM checkpoints are, with an F32 tensor."""
    rng = np.random.default_rng(5)
    path = tmp_path / "model-00001-of-00002.safetensors"
    save_file({"model.norm.weight": rng.standard_normal(64).astype(np.float32),
               "model.embed_tokens.weight": rng.standard_normal((32, 64)).astype(
                   ml_dtypes.bfloat16),
               "lm_head.weight": rng.standard_normal((32, 64)).astype(ml_dtypes.bfloat16),
               "scale": np.array([0.5], dtype=ml_dtypes.float8_e4m3fn),
               "a.mask": np.array([True, False])},
              str(path), metadata={"format": "pt"})
    return path


def test_a_bf16_shard_opens_lists_and_loads(shard) -> None:
    # issue 19: the whole file was refused ("dtype 'BF16' has no numpy equivalent")
    with safe_open(shard, "np") as f, safetensors.safe_open(str(shard), "np") as ref:
        assert f.keys() == ref.keys() == sorted(f.keys())
        assert f.offset_keys() == ref.offset_keys()
        assert f.metadata() == ref.metadata() == {"format": "pt"}
        assert np.array_equal(f.get_tensor("model.norm.weight"),
                              ref.get_tensor("model.norm.weight"))
        w = f.get_tensor("lm_head.weight")
        assert w.dtype == ml_dtypes.bfloat16 and w.shape == (32, 64)
        assert f.get_tensor("scale").dtype == ml_dtypes.float8_e4m3fn
        assert f.get_slice("lm_head.weight").get_dtype() == "BF16"


def test_the_mapping_protocol_and_its_errors(shard) -> None:
    with safe_open(shard, "numpy") as f:
        assert "scale" in f and "nope" not in f and 3 not in f
        assert len(f) == 5 and list(f) == f.keys()
        with pytest.raises(TensorNotFound) as info:
            f.get_tensor("nope")
        # a SafetensorsError (a ValueError) for a drop-in, a KeyError for a mapping
        assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)
        assert str(info.value) == f"{shard}: file does not contain tensor 'nope'"
        with pytest.raises(SafetensorError):                # the reference's spelling
            f.get_slice("nope")
        meta = f.metadata()
        meta["format"] = "changed"
        assert f.metadata() == {"format": "pt"}            # a copy, as the reference's
        got = f.get_tensor("model.norm.weight")
        assert got.flags.writeable and got.flags.owndata    # a new array, not the file
    for call in (f.keys, f.offset_keys, f.metadata, f.get_tensors,
                 lambda: f.get_tensor("scale"), lambda: f.get_slice("scale")):
        with pytest.raises(SafetensorsError, match="file is closed"):
            call()


def test_metadata_is_none_when_absent(tmp_path) -> None:
    path = tmp_path / "plain.safetensors"
    save_file({"x": np.zeros(3)}, str(path))
    with safe_open(path, "np") as f, safetensors.safe_open(str(path), "np") as ref:
        assert f.metadata() is None and ref.metadata() is None


def test_load_file_is_the_reference_s(shard, tmp_path) -> None:
    path = tmp_path / "f32.safetensors"
    save_file({"b": np.arange(5.0), "a": np.ones((2, 2), np.int32),
               "c": np.zeros((0,), np.uint8)}, str(path))
    ours, theirs = load_file(path), safetensors.numpy.load_file(str(path))
    assert list(ours) == list(theirs)                       # the data's order
    for name in theirs:
        assert ours[name].dtype == theirs[name].dtype
        assert np.array_equal(ours[name], theirs[name])
    assert set(load_file(shard)) == {"model.norm.weight", "model.embed_tokens.weight",
                                     "lm_head.weight", "scale", "a.mask"}


@pytest.mark.parametrize("framework, device, why", [
    ("tf", "cpu", "framework 'tf' is not served by mcsafe"),
    ("NP", "cpu", "framework 'NP' is invalid"),
    ("np", "cuda", "device 'cuda' is not supported for framework numpy"),
    ("np", 0, "device 0 is not supported for framework numpy"),
])
def test_frameworks_and_devices_refused_in_one_line(shard, framework, device, why) -> None:
    with pytest.raises(SafetensorsError) as info:
        safe_open(shard, framework, device)
    assert why in str(info.value) and str(shard) in str(info.value)


def test_backends_as_the_reference(shard) -> None:
    for backend in ("mmap", "pread"):
        with safe_open(shard, "np", backend=backend) as f:
            assert len(f) == 5
    with pytest.raises(SafetensorsError, match="backend 'x' is invalid"):
        safe_open(shard, "np", backend="x")


def test_without_ml_dtypes_bf16_and_f8_are_their_raw_bits(shard) -> None:
    out = python_child(f"""
        import sys
        sys.modules["ml_dtypes"] = None          # as if it were not installed
        from mcsafe.formats.safetensors import safe_open
        with safe_open({str(shard)!r}, "np") as f:
            for name in ("lm_head.weight", "scale", "model.norm.weight"):
                t = f.get_tensor(name)
                print(name, t.dtype.str, t.shape, t.tobytes().hex())
    """)
    assert out.returncode == 0, out.stderr
    lines = {line.split()[0]: line.split(" ", 1)[1] for line in out.stdout.splitlines()}
    with safe_open(shard, "np") as f:
        for name, dtype in (("lm_head.weight", "<u2"), ("scale", "|u1"),
                            ("model.norm.weight", "<f4")):
            t = f.get_tensor(name)
            assert lines[name] == f"{dtype} {t.shape} {t.tobytes().hex()}"


def test_pt_without_torch_names_the_missing_package(shard) -> None:
    out = python_child(f"""
        import sys
        sys.modules["torch"] = None              # as where torch is not installed
        from mcsafe.formats.safetensors import safe_open
        try:
            safe_open({str(shard)!r}, "pt")
        except ModuleNotFoundError as exc:
            print(exc.name, "|", exc)
    """)
    assert out.returncode == 0, out.stderr
    name, message = out.stdout.strip().split(" | ")
    assert name == "torch" and "framework 'pt' needs torch" in message
    assert str(shard) in message


def test_pt_gives_torch_tensors(shard) -> None:
    torch = pytest.importorskip("torch", reason="torch is not installed on this machine "
                                                "(the tests do not require it)")
    from safetensors.torch import load_file as torch_load
    want = torch_load(str(shard))
    with safe_open(shard, "pt") as f:
        for name, t in want.items():
            got = f.get_tensor(name)
            assert isinstance(got, torch.Tensor) and got.dtype == t.dtype
            assert got.shape == t.shape and torch.equal(got.view(torch.uint8),
                                                        t.view(torch.uint8))
        sl = f.get_slice("lm_head.weight")[2:5, ::2]
        assert torch.equal(sl.view(torch.uint16), want["lm_head.weight"][2:5, ::2]
                           .contiguous().view(torch.uint16))
    assert load_file(shard, framework="pt").keys() == want.keys()


def test_threads_read_one_file_at_once(tmp_path) -> None:
    rng = np.random.default_rng(1)
    tensors = {f"t{i}": rng.standard_normal((64, 64)).astype(np.float32) for i in range(32)}
    path = tmp_path / "many.safetensors"
    save_file(tensors, str(path))
    errors: list[BaseException] = []
    with safe_open(path, "np") as f:
        def work(k: int) -> None:
            try:
                for round_ in range(20):
                    name = f"t{(k + round_) % 32}"
                    assert np.array_equal(f.get_tensor(name), tensors[name])
                    assert np.array_equal(f.get_slice(name)[3, 1:9], tensors[name][3, 1:9])
            except BaseException as exc:   # noqa: BLE001 - reported below
                errors.append(exc)
        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []


def test_a_dropped_safe_open_closes_its_file_without_a_warning(shard, recwarn) -> None:
    f = safe_open(shard, "np")
    mapped = f._mf
    del f
    assert mapped is not None and mapped.closed
    assert not [w for w in recwarn if issubclass(w.category, ResourceWarning)]


def test_a_shape_numpy_cannot_make_fails_that_tensor_alone(tmp_path) -> None:
    header = json.dumps({"huge": {"dtype": "U8", "shape": [(1 << 64) - 1, 0],
                                  "data_offsets": [0, 0]},
                         "ok": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]}}).encode()
    path = tmp_path / "odd.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"hi")
    with safe_open(path, "np") as f:
        assert f.get_tensor("ok").tobytes() == b"hi"
        with pytest.raises(SafetensorsError, match="tensor 'huge'.*numpy cannot make"):
            f.get_tensor("huge")
