"""Checkpoints and arrays: mcsafe's safe_open/load_file against the safetensors
package's, and mcsafe.arrays.load against numpy.load, on the same cached files.

Each case runs its peers in turn, round after round (the order shuffled each
round), so that a shared machine's drift hits both alike; the report's targets use
those interleaved medians. The table row is ours, measured by pytest-benchmark."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import safetensors
import safetensors.numpy

from benchmarks.conftest import FULL, interleaved, measure
from mcsafe import MappedFile
from mcsafe.arrays import load as arrays_load
from mcsafe.formats.safetensors import load_file, safe_open

#: The checkpoint: 1,000 tensors, 1 GiB in a full run (64 MiB in a quick one).
CHECKPOINT_TENSOR = (1 << 20) if FULL else (64 << 10)


def run_case(benchmark, group: str, calls: dict[str, Callable[[], Any]], size: int,
             check: Callable[[Any, Any], None]) -> None:
    """Check that the peers agree, then (unless benchmarks are disabled) time them
    interleaved and measure ours for the table."""
    ours, *others = list(calls)
    for other in others:
        check(calls[ours](), calls[other]())
    benchmark.group = group
    if benchmark.disabled:
        benchmark(calls[ours])
        return
    reps = max(1, min(500, (8 << 20) // max(size, 1)))
    rounds = (40 if FULL else 12) if size < (64 << 20) else (7 if FULL else 3)
    medians = interleaved(calls, reps, rounds)
    benchmark.extra_info.update(peer=ours, size=size, interleaved=medians)
    measure(benchmark, calls[ours], size)


def same_arrays(a: np.ndarray, b: np.ndarray) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def same_dicts(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert list(a) == list(b)
    for name in a:
        same_arrays(a[name], b[name])


def write_tensors(path: Path, count: int, nbytes: int) -> Path:
    rng = np.random.default_rng(0)
    tensors = {f"model.layers.{i}.weight": rng.standard_normal(nbytes // 4).astype(np.float32)
               for i in range(count)}
    safetensors.numpy.save_file(tensors, str(path))
    path.read_bytes()                               # into the page cache
    return path


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("formats")
    return {"4KiB": write_tensors(d / "small.safetensors", 256, 4096),
            "1MiB": write_tensors(d / "large.safetensors", 64, 1 << 20)}


@pytest.mark.parametrize("size", [4096, 1 << 20], ids=["4KiB", "1MiB"])
def test_get_tensor(benchmark, shards, size: int) -> None:
    path = shards["4KiB" if size == 4096 else "1MiB"]
    name = "model.layers.17.weight"
    with safe_open(path, "np") as ours, safetensors.safe_open(str(path), "np") as theirs:
        run_case(benchmark, f"st-get_tensor-{size}",
                 {"mcsafe": partial(ours.get_tensor, name),
                  "safetensors": partial(theirs.get_tensor, name)}, size, same_arrays)


@pytest.mark.parametrize("size", [4096, 1 << 20], ids=["4KiB", "1MiB"])
def test_load_file(benchmark, shards, size: int) -> None:
    path = shards["4KiB" if size == 4096 else "1MiB"]
    run_case(benchmark, f"st-load_file-{size}",
             {"mcsafe": partial(load_file, path),
              "safetensors": partial(safetensors.numpy.load_file, str(path))},
             path.stat().st_size, same_dicts)


def test_load_checkpoint(benchmark, tmp_path_factory) -> None:
    """A checkpoint of 1,000 tensors, generated here (never kept in the repository)."""
    path = write_tensors(tmp_path_factory.mktemp("checkpoint") / "model.safetensors", 1000,
                         CHECKPOINT_TENSOR)
    run_case(benchmark, "st-checkpoint",
             {"mcsafe": partial(load_file, path),
              "safetensors": partial(safetensors.numpy.load_file, str(path))},
             path.stat().st_size, same_dicts)
    path.unlink()


NPY_SIZES = [4096, 64 << 10, 1 << 20, 16 << 20] + ([256 << 20] if FULL else [])


@pytest.mark.parametrize("size", NPY_SIZES, ids=lambda s: f"{s}B")
def test_arrays_load(benchmark, tmp_path_factory, size: int) -> None:
    """Loaded whole from its path; and from a MappedFile kept open, which shows what
    opening one costs."""
    path = tmp_path_factory.mktemp("npy") / "a.npy"
    np.save(path, np.random.default_rng(1).standard_normal(size // 8))
    path.read_bytes()
    with MappedFile(path) as mf:
        run_case(benchmark, f"npy-load-{size}",
                 {"arrays.load": partial(arrays_load, path), "numpy.load": partial(np.load, path),
                  "arrays.load, file open": partial(arrays_load, mf)}, size, same_arrays)
    path.unlink()
