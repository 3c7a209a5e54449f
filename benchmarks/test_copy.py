"""Copy throughput and per-call cost: mcsafe.copy against its peers, same buffers.

Groups are named ``copy-<size>``; within a group every peer copies the same
source into the same destination. The 64-byte group is the per-call overhead.
"""

from __future__ import annotations

import ctypes
from functools import partial

import numpy as np
import pytest

import mcsafe
from benchmarks.conftest import FULL, interleaved, measure

SIZES = [64, 256, 4096, 64 << 10, 1 << 20, 16 << 20] + ([256 << 20] if FULL else [])


def _buffers(size: int) -> tuple[bytearray, bytearray]:
    src = bytearray(np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8))
    return src, bytearray(size)


def _peer(name: str, src: bytearray, dst: bytearray, peers=None, cysig=None):
    """A no-argument callable doing one copy; functools.partial keeps the
    harness's own cost out of the per-call figures for every peer alike."""
    size = len(src)
    if name == "mcsafe":
        return partial(mcsafe.copy, dst, src)
    if name == "ctypes.memmove":
        d = (ctypes.c_char * size).from_buffer(dst)
        s = (ctypes.c_char * size).from_buffer(src)
        return partial(ctypes.memmove, d, s, size)
    if name == "numpy.copyto":
        return partial(np.copyto, np.frombuffer(dst, np.uint8), np.frombuffer(src, np.uint8))
    if name == "memoryview":
        return partial(memoryview(dst).__setitem__, slice(0, size), memoryview(src))
    if name == "setjmp":
        d = ctypes.addressof((ctypes.c_char * size).from_buffer(dst))
        s = ctypes.addressof((ctypes.c_char * size).from_buffer(src))
        return partial(peers.setjmp_copy, d, s, size)
    if name == "cysignals":
        return partial(cysig.copy, dst, src)
    raise ValueError(name)


PEERS = ["mcsafe", "ctypes.memmove", "numpy.copyto", "memoryview", "cysignals", "setjmp"]


@pytest.mark.parametrize("peer", PEERS)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s}B")
def test_copy(benchmark, request, peers, peer: str, size: int) -> None:
    # only the cysignals peer's cases need it built (and skip where it cannot be)
    cysig = request.getfixturevalue("cysignals_peer") if peer == "cysignals" else None
    src, dst = _buffers(size)
    if peer == "setjmp":
        peers.setjmp_install()
    try:
        benchmark.group = f"copy-{size}"
        benchmark.extra_info.update(peer=peer, size=size)
        measure(benchmark, _peer(peer, src, dst, peers, cysig), size)
    finally:
        if peer == "setjmp":
            peers.setjmp_uninstall()
    assert dst == src


@pytest.mark.parametrize("path", ["small", "bulk"])  # the candidates below 1 MiB
@pytest.mark.parametrize("size", [32, 64, 128, 256, 512, 1024, 2048, 4096], ids=lambda s: f"{s}B")
def test_small_copy_threshold(benchmark, path: str, size: int) -> None:
    """Where the word path stops beating rep movsb (sets MCSAFE_SMALL_COPY).

    Each call makes 1000 copies in C, so the figure is the path, not Python."""
    src, dst = _buffers(size)
    benchmark.group = f"threshold-{size}"
    benchmark.extra_info.update(peer=path, size=size, copies_per_call=1000)
    measure(benchmark, partial(mcsafe._mcsafe._copy_path, path, dst, src, 1000), 1 << 20)
    assert dst == src


@pytest.mark.parametrize("size", [64, 4096, 1 << 20, 16 << 20] + ([256 << 20] if FULL else []),
                         ids=lambda s: f"{s}B")
def test_copy_interleaved(benchmark, peers, cysignals_peer, size: int) -> None:
    """Every peer in turn, round after round, so that a shared machine's drifting
    memory bandwidth hits all of them alike; the report's targets use these."""
    src, dst = _buffers(size)
    calls = {p: _peer(p, src, dst, peers, cysignals_peer) for p in PEERS}
    reps = max(1, min(2000, (4 << 20) // size))
    rounds = (60 if FULL else 15) if size < (64 << 20) else (10 if FULL else 3)
    peers.setjmp_install()
    mcsafe.install()       # in front of the setjmp peer's handler, as docs/HANDLER.md says
    try:
        medians = interleaved(calls, reps, rounds)
    finally:
        peers.setjmp_uninstall()
    benchmark.group = f"interleaved-{size}"
    benchmark.extra_info.update(peer="mcsafe", size=size, interleaved=medians)
    measure(benchmark, calls["mcsafe"], size)
    assert dst == src
