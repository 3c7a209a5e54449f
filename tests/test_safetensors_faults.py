"""A bad page in one tensor fails that tensor only, naming the tensor, the element and
the file offset; the other tensors load. Bad pages come from the kernel's own paths:
a FUSE file whose pages fail for every reader (mcsafe.inject.failing_file), a poisoned
memfd page (userfaultfd), a protected page, a file cut by another process. The
reference (the safetensors package) dies of SIGBUS on the same file."""

from __future__ import annotations

import json
import os
import pickle
import signal
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file

from mcsafe import MappedFile, MemoryFaultError, inject
from mcsafe.formats.safetensors import (SafetensorsError, load_file, load_sharded,
                                        open_sharded, safe_open)

PAGE = inject.PAGE
EXAMPLE = Path(__file__).parent.parent / "examples" / "safetensors_load.py"


def tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(19)
    return {
        "embed.weight": rng.standard_normal((64, 48)).astype(np.float32),
        "big": rng.standard_normal((128, 256)).astype(np.float64),          # 256 KiB
        "half": rng.standard_normal((40, 100)).astype(ml_dtypes.bfloat16),
        "ids": np.arange(1000, dtype=np.int64).reshape(10, 100),
        "scalar": np.array(7, dtype=np.uint8),
        "empty": np.zeros((0, 4), dtype=np.int16),
    }


def checkpoint() -> bytes:
    """The file the safetensors package writes for tensors()."""
    from safetensors.numpy import save
    return save(tensors(), metadata={"step": "19"})


def span(raw: bytes, name: str) -> tuple[int, int]:
    """Where a tensor's bytes are in the file, from the header the package wrote."""
    (n,) = struct.unpack("<Q", raw[:8])
    begin, end = json.loads(raw[8:8 + n])[name]["data_offsets"]
    return 8 + n + begin, 8 + n + end


def bad_page_in(raw: bytes, name: str, nth: int = 3) -> int:
    """The file offset of the nth whole page inside a tensor."""
    begin, end = span(raw, name)
    page = -(-begin // PAGE) * PAGE + nth * PAGE
    assert page + PAGE <= end
    return page


def test_a_failing_page_fails_its_tensor_only(failing_file) -> None:
    raw = checkpoint()
    bad = bad_page_in(raw, "big")
    f = failing_file(raw, [(bad + 100, bad + 101)])        # one byte: its page fails
    begin, _ = span(raw, "big")
    want = tensors()
    with safe_open(f.path, "np") as st:
        assert st.keys() == sorted(want) and st.metadata() == {"step": "19"}
        with pytest.raises(MemoryFaultError) as info:
            st.get_tensor("big")
        e = info.value
        element = (bad - begin) // 8
        assert (e.element, e.offset, e.filename, e.cause) == (element, bad, f.path, "io")
        assert e.errno == 5
        where = tuple(int(i) for i in np.unravel_index(element, (128, 256)))
        assert f"tensor 'big' (F64 [128, 256])" in str(e) and f"element {element} " in str(e)
        assert f"index {where}" in str(e) and f"file offset {bad}" in str(e)
        back = pickle.loads(pickle.dumps(e))
        assert (back.element, back.offset, str(back)) == (e.element, e.offset, str(e))
        for name in want.keys() - {"big"}:
            got = st.get_tensor(name)
            assert got.dtype == want[name].dtype and got.tobytes() == want[name].tobytes()
        # a slice that does not touch the bad page reads; one that does names the
        # element it needs there (row, column of the page's first byte)
        row, col = divmod(element, 256)
        assert np.array_equal(st.get_slice("big")[:row], want["big"][:row])
        assert np.array_equal(st.get_slice("big")[row + 3:, ::3], want["big"][row + 3:, ::3])
        with pytest.raises(MemoryFaultError) as info:
            st.get_slice("big")[row - 1:row + 1, col]
        assert (info.value.offset, info.value.element) == (bad, element)
        # every 8th row, none of them on the bad page: the page between is not read
        k = (row + 4) % 8
        assert np.array_equal(st.get_slice("big")[k::8, :4], want["big"][k::8, :4])
        assert f"tensor 'big' (F64 [128, 256]) [{row - 1}:{row + 1}, {col}]" in str(info.value)
        with pytest.raises(MemoryFaultError, match="tensor 'big'"):
            st.get_tensors()
    with pytest.raises(MemoryFaultError, match="tensor 'big'"):
        load_file(f.path)


def test_without_mcsafe_the_same_read_dies_of_sigbus(failing_file) -> None:
    raw = checkpoint()
    bad = bad_page_in(raw, "big")
    f = failing_file(raw, [(bad, bad + 1)])
    code = textwrap.dedent(f"""
        import sys
        from safetensors import safe_open
        with safe_open({f.path!r}, "np") as st:
            st.get_tensor(sys.argv[1])
        print("loaded")
    """)
    ok = subprocess.run([sys.executable, "-c", code, "ids"], capture_output=True, text=True)
    assert (ok.returncode, ok.stdout) == (0, "loaded\n"), ok.stderr
    dead = subprocess.run([sys.executable, "-c", code, "big"], capture_output=True, text=True)
    assert dead.returncode == -signal.SIGBUS, dead.stderr


def test_the_example_names_the_tensor_and_loads_the_rest(failing_file, tmp_path) -> None:
    raw = checkpoint()
    good = tmp_path / "good.safetensors"
    good.write_bytes(raw)
    run = subprocess.run([sys.executable, str(EXAMPLE), str(good)], capture_output=True,
                         text=True)
    assert run.returncode == 0 and run.stderr == ""
    assert "big F64 [128, 256]" in run.stdout and "half BF16 [40, 100]" in run.stdout
    bad = bad_page_in(raw, "big")
    f = failing_file(raw, [(bad, bad + 1)])
    run = subprocess.run([sys.executable, str(EXAMPLE), f.path], capture_output=True,
                         text=True)
    assert run.returncode == 1, run.stderr
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr
    assert "tensor 'big'" in run.stderr and f"file offset {bad}" in run.stderr
    assert f.path in run.stderr and "element" in run.stderr
    assert sorted(line.split()[0] for line in run.stdout.splitlines()) == \
        sorted(tensors().keys() - {"big"})
    (tmp_path / "junk.safetensors").write_bytes(b"\x02" + b"\0" * 7 + b"[]")
    run = subprocess.run([sys.executable, str(EXAMPLE), str(tmp_path / "junk.safetensors")],
                         capture_output=True, text=True)
    assert run.returncode == 2 and run.stderr.count("\n") == 1
    assert "junk.safetensors: not a safetensors file" in run.stderr


def test_a_poisoned_page_through_userfaultfd(bad_file) -> None:
    raw = checkpoint()
    bad = bad_page_in(raw, "big", 5)
    begin, _ = span(raw, "big")
    with safe_open(bad_file(raw, [bad // PAGE]), "np") as st:
        assert np.array_equal(st.get_tensor("embed.weight"), tensors()["embed.weight"])
        with pytest.raises(MemoryFaultError) as info:
            st.get_tensor("big")
        assert info.value.offset == bad and info.value.element == (bad - begin) // 8
        assert "tensor 'big'" in str(info.value)
        assert st.get_tensor("ids").sum() == sum(range(1000))


def test_a_protected_page(tmp_path) -> None:
    raw = checkpoint()
    path = tmp_path / "model.safetensors"
    path.write_bytes(raw)
    bad = bad_page_in(raw, "half", 0)
    begin, _ = span(raw, "half")
    with MappedFile(path) as mf, safe_open(mf, "np") as st:
        assert inject._libc.mprotect(mf.address + bad, PAGE, 0) == 0
        with pytest.raises(MemoryFaultError) as info:
            st.get_tensor("half")
        assert info.value.cause == "protection" and info.value.element == (bad - begin) // 2
        assert "tensor 'half' (BF16 [40, 100])" in str(info.value)
        assert st.get_tensor("big").tobytes() == tensors()["big"].tobytes()
    assert mf.closed


def test_cut_by_another_process_while_open(tmp_path) -> None:
    raw = checkpoint()
    path = tmp_path / "model.safetensors"
    path.write_bytes(raw)
    begin, end = span(raw, "big")
    cut = begin + (end - begin) // 2 + 3
    with safe_open(path, "np") as st:                      # header read, file mapped
        subprocess.run(["truncate", "-s", str(cut), str(path)], check=True)
        for name, want in tensors().items():
            b, e = span(raw, name)
            if e <= cut or e == b:                      # (an empty tensor needs no bytes)
                assert st.get_tensor(name).tobytes() == want.tobytes(), name
            elif name == "big":
                with pytest.raises(MemoryFaultError) as info:
                    st.get_tensor(name)
                assert info.value.cause == "truncated" and info.value.offset == cut
                assert info.value.element == (cut - begin) // 8
            else:
                with pytest.raises(MemoryFaultError, match=f"tensor '{name}'"):
                    st.get_tensor(name)
    # cut before it is opened: refused whole, as the reference refuses it
    with pytest.raises(SafetensorsError, match="file not fully covered"):
        safe_open(path, "np")


def test_a_huge_header_claim_is_refused_before_anything_is_allocated(tmp_path) -> None:
    header = json.dumps({"a": {"dtype": "F64", "shape": [1 << 40, 1 << 10],
                               "data_offsets": [0, 1 << 53]}}).encode()
    path = tmp_path / "big.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"x" * 4)
    with pytest.raises(SafetensorsError, match="file not fully covered"):
        load_file(path)


# -- sharded checkpoints --------------------------------------------------------------

def shards(folder: Path) -> tuple[Path, dict[str, np.ndarray], dict[str, str]]:
    rng = np.random.default_rng(7)
    state = {f"layers.{i}.w": rng.standard_normal((64, 64)).astype(np.float32)
             for i in range(6)}
    state["lm_head"] = rng.standard_normal((128, 64)).astype(ml_dtypes.bfloat16)
    weight_map = {}
    for k, names in enumerate([["layers.0.w", "layers.1.w"],
                               ["layers.2.w", "layers.3.w", "lm_head"],
                               ["layers.4.w", "layers.5.w"]]):
        file = f"model-{k + 1:05d}-of-00003.safetensors"
        save_file({n: state[n] for n in names}, str(folder / file))
        weight_map.update({n: file for n in names})
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": 123}, "weight_map": weight_map}))
    return index, state, weight_map


def test_load_sharded_is_the_whole_state_dict(tmp_path) -> None:
    index, state, weight_map = shards(tmp_path)
    got = load_sharded(index)
    assert got.keys() == state.keys()
    for name, want in state.items():
        assert got[name].dtype == want.dtype and got[name].tobytes() == want.tobytes()
    with open_sharded(index) as ck:
        assert ck.keys() == sorted(state) and len(ck) == 7 and "lm_head" in ck
        assert ck.metadata() == {"total_size": 123}
        assert ck.shard_of("lm_head") == str(tmp_path / weight_map["lm_head"])
        assert len(ck.shards()) == 3
        assert np.array_equal(ck.get_slice("layers.4.w")[3:5], state["layers.4.w"][3:5])


def test_a_bad_shard_page_names_shard_and_tensor_and_the_rest_loads(tmp_path,
                                                                   failing_file) -> None:
    index, state, weight_map = shards(tmp_path)
    file = weight_map["layers.3.w"]
    raw = (tmp_path / file).read_bytes()
    bad = bad_page_in(raw, "layers.3.w", 2)
    f = failing_file(raw, [(bad, bad + 1)], name=file)
    # an index beside the FUSE mount (a folder of the test's own), with the other
    # shards copied there and this one named through the mount
    index2 = Path(f.mountpoint).parent / "model.safetensors.index.json"
    for fl in set(weight_map.values()) - {file}:
        (index2.parent / fl).write_bytes((tmp_path / fl).read_bytes())
    index2.write_text(json.dumps({"weight_map": {
        n: f"mnt/{fl}" if fl == file else fl for n, fl in weight_map.items()}}))
    with pytest.raises(MemoryFaultError) as info:
        load_sharded(index2)
    assert info.value.filename == f.path and "tensor 'layers.3.w'" in str(info.value)
    with open_sharded(index2) as ck:
        for name, want in state.items():
            if name == "layers.3.w":
                with pytest.raises(MemoryFaultError, match="tensor 'layers.3.w'"):
                    ck.get_tensor(name)
            else:
                assert ck.get_tensor(name).tobytes() == want.tobytes(), name


def test_a_missing_or_broken_shard_names_itself_and_the_tensor(tmp_path) -> None:
    index, state, weight_map = shards(tmp_path)
    os.remove(tmp_path / weight_map["layers.0.w"])
    (tmp_path / weight_map["layers.4.w"]).write_bytes(b"\x02" + b"\0" * 7 + b"{}")
    with open_sharded(index) as ck:
        with pytest.raises(FileNotFoundError) as info:
            ck.get_tensor("layers.1.w")
        assert "layers.1.w" in str(info.value) and weight_map["layers.0.w"] in str(info.value)
        with pytest.raises(SafetensorsError) as bad:
            ck.get_tensor("layers.5.w")
        assert weight_map["layers.4.w"] in str(bad.value) and "layers.5.w" in str(bad.value)
        assert ck.get_tensor("lm_head").tobytes() == state["lm_head"].tobytes()
    with pytest.raises(FileNotFoundError):
        load_sharded(index)


@pytest.mark.parametrize("index, why", [
    ("[]", "not a JSON object"),
    ("{", "not JSON"),
    ('{"metadata": {}}', "no weight_map"),
    ('{"weight_map": {"a": 3}}', "not a file name"),
    ('{"weight_map": {"a": "/etc/passwd"}}', "outside the index's folder"),
    ('{"weight_map": {"a": "../x.safetensors"}}', "outside the index's folder"),
    ('{"weight_map": {}, "metadata": []}', "metadata"),
])
def test_bad_indexes_are_refused_in_one_line(tmp_path, index, why) -> None:
    path = tmp_path / "model.safetensors.index.json"
    path.write_text(index)
    with pytest.raises(SafetensorsError) as info:
        load_sharded(path)
    assert why in str(info.value) and str(path) in str(info.value)
    assert "\n" not in str(info.value)
