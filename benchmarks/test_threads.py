"""Aggregate copy throughput of 1 and 2 threads (copies of 64 KiB and more run
without the GIL)."""

from __future__ import annotations

import threading

import pytest

import mcsafe
from benchmarks.conftest import FULL

CASES = {"cache-256KiB": 256 << 10, "memory-64MiB": 64 << 20}
TOTAL = (1 << 30) if FULL else (256 << 20)      # bytes each thread copies per round


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("case", list(CASES))
def test_threads(benchmark, case: str, threads: int) -> None:
    size = CASES[case]
    pairs = [(bytearray(size), bytearray(b"\x5a" * size)) for _ in range(threads)]
    rounds = max(1, TOTAL // size)

    def work(dst: bytearray, src: bytearray) -> None:
        for _ in range(rounds):
            mcsafe.copy(dst, src)

    def run() -> None:
        ts = [threading.Thread(target=work, args=p) for p in pairs]
        for t in ts:
            t.start()
        for t in ts:
            t.join()

    benchmark.group = f"threads-{case}"
    benchmark.extra_info.update(peer=f"{threads} thread{'s' if threads > 1 else ''}",
                                bytes=threads * rounds * size, threads=threads)
    benchmark.pedantic(run, rounds=5 if FULL else 3, warmup_rounds=1)
    assert all(d == s for d, s in pairs)
