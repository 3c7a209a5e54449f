"""Eight threads copying at once, some through bad pages: every result exact."""

from __future__ import annotations

import threading

import mcsafe
from mcsafe import inject

PAGE = inject.PAGE


def test_eight_threads_some_faulting() -> None:
    errors: list[str] = []
    barrier = threading.Barrier(8)

    def worker(k: int) -> None:
        method = ("uffd", "mprotect", "truncate", None)[k % 4]
        try:
            barrier.wait()
            for rnd in range(40):
                if method is None:                       # a clean large copy, GIL released
                    src = bytes([k]) * (1 << 20)
                    dst = bytearray(1 << 20)
                    if mcsafe.copy(dst, src) != 1 << 20 or dst != src:
                        errors.append(f"thread {k}: clean copy wrong")
                    continue
                npages = 4 + rnd % 13 if rnd % 2 else 17 + rnd % 20   # >= 64 KiB: no GIL
                bad = [npages - 1] if method == "truncate" else [1 + rnd % (npages - 1)]
                with inject.region(method, npages, bad, seed=k) as r:
                    off = (k * 131 + rnd * 17) % PAGE
                    out = bytearray(r.size)
                    res = mcsafe.copy_report(out, r.buffer, src_offset=off)
                    want = bad[0] * PAGE - off
                    good = inject.pattern(r.size, seed=k)
                    if (res.copied != want or res.fault.offset != want
                            or out[:want] != good[off:off + want] or any(out[want:])):
                        errors.append(f"thread {k} round {rnd}: {res} != {want}")
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(f"thread {k}: {exc!r}")

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
