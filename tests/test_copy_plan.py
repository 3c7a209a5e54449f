"""The copy plan: which path a copy of n bytes takes, chosen at import from what
the CPU says. Checked against the kernel's own view of the same CPU (the flags
of /proc/cpuinfo, the caches of /sys/devices/system/cpu), against glibc's rule
that the plan follows, and by copying exactly across every boundary it draws."""

from __future__ import annotations

import mmap
import platform
from pathlib import Path

import numpy as np
import pytest

import mcsafe
from mcsafe._mcsafe import copy_path_for, copy_paths, copy_plan

PLAN = copy_plan()
X86 = platform.machine() == "x86_64"
CACHES = Path("/sys/devices/system/cpu/cpu0/cache")


def cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def kernel_cache_size(level: int) -> int | None:
    """The size of the data or unified cache of this level, as the kernel read it."""
    for index in sorted(CACHES.glob("index*")):
        if int((index / "level").read_text()) == level and \
                (index / "type").read_text().strip() in ("Data", "Unified"):
            text = (index / "size").read_text().strip()
            return int(text[:-1]) << 10 if text.endswith("K") else int(text)
    return None


def test_features_are_the_cpus() -> None:
    flags = cpu_flags()
    if not X86:
        assert PLAN["features"] == ()
        return
    for feature in ("avx2", "erms", "fsrm"):
        assert (feature in PLAN["features"]) == (feature in flags), feature
    vendor = next(line for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("vendor_id"))
    assert ("amd" in PLAN["features"]) == ("AuthenticAMD" in vendor)


def test_cache_sizes_are_the_kernels() -> None:
    if not X86:
        assert PLAN["l2"] is None and PLAN["l3"] is None
        return
    if not CACHES.is_dir():
        pytest.skip(f"{CACHES} is missing: the kernel shows no cache sizes here")
    assert PLAN["l2"] == kernel_cache_size(2)
    assert PLAN["l3"] == kernel_cache_size(3)


def test_thresholds_follow_glibcs_rule() -> None:
    """glibc's memmove (sysdeps/x86/dl-cacheinfo.h): non-temporal stores from a
    quarter of L3; rep movsb below that with ERMS, except on AMD above L2 size;
    vector loops without ERMS. Without AVX2 mcsafe has only rep movsb."""
    features = PLAN["features"]
    if "avx2" not in features:
        assert PLAN["bulk_stop"] is None and PLAN["nt_threshold"] is None
        return
    nt = (PLAN["l3"] or 32 << 20) // 4
    assert PLAN["nt_threshold"] == nt
    if "erms" not in features:
        assert PLAN["bulk_stop"] == 0
    elif "amd" in features:
        assert PLAN["bulk_stop"] == min(PLAN["l2"] or 1 << 20, nt)
    else:
        assert PLAN["bulk_stop"] == nt


def test_each_size_takes_the_planned_path() -> None:
    small, bulk_stop, nt = PLAN["small"], PLAN["bulk_stop"], PLAN["nt_threshold"]
    assert small == mcsafe.SMALL_COPY_BYTES
    assert copy_path_for(0) == copy_path_for(small - 1) == "small"
    for n in (small, small + 1, 1 << 20, 16 << 20, 256 << 20, 1 << 40):
        if bulk_stop is None or n < bulk_stop:
            want = "bulk"
        elif nt is None or n < nt:
            want = "vector"
        else:
            want = "vector_nt"
        assert copy_path_for(n) == want, n
    assert set(copy_path_for(1 << k) for k in range(48)) <= set(copy_paths())
    with pytest.raises(ValueError):
        copy_path_for(-1)


def boundaries() -> list[int]:
    out = {PLAN["small"]}
    for key in ("bulk_stop", "nt_threshold"):
        if PLAN[key] and PLAN[key] <= 512 << 20:
            out.add(PLAN[key])
    return sorted(out)


@pytest.mark.parametrize("edge", boundaries())
@pytest.mark.parametrize("delta", [-1, 0, 7])
def test_copies_exactly_at_each_boundary(edge: int, delta: int) -> None:
    """n bytes on either side of a boundary, into a destination 3 bytes past a
    page (the non-temporal path aligns its stores first): exactly n bytes land."""
    n = edge + delta
    src = mmap.mmap(-1, n)
    src[:] = np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8).tobytes()
    dst = mmap.mmap(-1, n + 3 + 16)
    dst[:] = b"\xee" * len(dst)
    try:
        assert mcsafe.copy(dst, src, n, dst_offset=3) == n
        assert dst[:3] == b"\xee" * 3 and dst[n + 3:] == b"\xee" * 16
        assert dst[3:n + 3] == src[:]
    finally:
        src.close()
        dst.close()
