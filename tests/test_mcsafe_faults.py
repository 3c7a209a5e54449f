"""Property tests: copies through bad pages stop exactly at the first bad byte.

Every available injection method, both copy paths, faults on the source and
on the destination: the count, the copied bytes, the untouched bytes past the
count and the fault record are all checked exactly. The scan (loads only, no
destination) is held to the same: the same count and fault record as the copy
of the same bytes.
"""

from __future__ import annotations

import platform
import signal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import expected
import mcsafe
from mcsafe import inject

PAGE = inject.PAGE
SENTINEL = 0xEE
AVAILABLE = inject.available()
WORKING = [m for m, why in AVAILABLE.items() if why is None]
PATHS = mcsafe._mcsafe.copy_paths()
SCAN_PATHS = mcsafe._mcsafe.SCAN_PATHS
SETTINGS = dict(deadline=None, suppress_health_check=list(HealthCheck), derandomize=False)


def test_methods_available_are_exactly_those_this_machine_has() -> None:
    """inject.available() decides by a plain read in a child process, never by the
    copy under test: what it finds is what this machine's kernel promises."""
    want = expected.injection_methods(expected.emulator())
    assert set(AVAILABLE) == set(want) == set(inject.METHODS)
    for method, why in want.items():
        if why is None:
            assert AVAILABLE[method] is None, f"{method} should work here: {AVAILABLE[method]}"
        else:
            assert AVAILABLE[method] is not None and why in AVAILABLE[method], \
                f"{method} should be refused here ({why}): {AVAILABLE[method]}"


def test_availability_is_decided_without_the_copy(monkeypatch) -> None:
    """A copy that cannot copy at all changes nothing inject.available() says."""
    def broken(*args, **kwargs):
        raise AssertionError("inject probed a method with mcsafe's copy")
    for name in ("copy", "copy_report"):
        monkeypatch.setattr(mcsafe, name, broken)
        monkeypatch.setattr(mcsafe._mcsafe, name, broken)
    monkeypatch.setattr(inject, "_probed", {})
    assert inject.available() == AVAILABLE


def test_every_copy_path_is_tested() -> None:
    assert PATHS == expected.COPY_PATHS[platform.machine()]


def test_every_scan_path_is_tested() -> None:
    assert SCAN_PATHS == expected.SCAN_PATHS[platform.machine()]


@pytest.mark.parametrize("method", inject.METHODS)
def test_each_method_faults_with_its_signal(method: str) -> None:
    if AVAILABLE[method] is not None:
        pytest.skip(f"{method} unavailable on this machine: {AVAILABLE[method]}")
    plain = inject.touch(method)          # what a plain read of a bad page raised
    with inject.region(method, 3, [2]) as r:
        out = bytearray(3 * PAGE)
        res = mcsafe.copy_report(out, r.buffer)
        assert res.copied == 2 * PAGE
        assert (res.fault.signal, res.fault.code) == (plain.signal, plain.code)
        assert res.fault.signal == (signal.SIGSEGV if method == "mprotect" else signal.SIGBUS)
        assert res.fault.code in r.codes
        assert out[:2 * PAGE] == inject.pattern(3 * PAGE)[:2 * PAGE]


def test_uffd_poison_si_code_is_reported() -> None:
    code = inject.uffd_poison_code()
    assert code == expected.uffd_poison_code(expected.emulator())
    if code is not None:
        with inject.region("uffd", 2, [1]) as r:
            assert mcsafe.copy_report(bytearray(r.size), r.buffer).fault.code == code
        print(f"UFFDIO_POISON raises si_code {code} "
              f"({'BUS_MCEERR_AR' if code == inject.BUS_MCEERR_AR else 'BUS_ADRERR'}) here")


@st.composite
def layouts(draw: st.DrawFn, method: str | None = None) -> tuple:
    method = method or draw(st.sampled_from(WORKING))
    npages = draw(st.one_of(st.integers(1, 16), st.integers(17, 256), st.integers(257, 1100)))
    if method == "truncate":
        first = draw(st.integers(0, npages))
        bad = list(range(first, npages))
    else:
        bad = sorted(draw(st.sets(st.integers(0, npages - 1), max_size=6)))
    size = npages * PAGE
    offset = draw(st.one_of(st.integers(0, size), st.integers(0, 64),
                            st.sampled_from([b * PAGE - d for b in bad for d in (0, 1, 7, 33)
                                             if 0 <= b * PAGE - d <= size] or [0])))
    n = draw(st.one_of(st.integers(0, size - offset), st.integers(0, min(600, size - offset))))
    path = draw(st.sampled_from(["auto", *PATHS]))
    return method, npages, bad, offset, n, path


def expected_count(region: inject.Region, offset: int, n: int) -> int:
    first = region.first_bad(offset)
    return n if first is None or first >= offset + n else first - offset


def run_copy(path: str, dst, src, n: int, dst_offset: int, src_offset: int):
    if path == "auto":
        return mcsafe.copy_report(dst, src, n, dst_offset=dst_offset, src_offset=src_offset)
    d = memoryview(dst)[dst_offset:dst_offset + n]
    s = memoryview(src)[src_offset:src_offset + n]
    return mcsafe._mcsafe._copy_path(path, d, s)


def check_fault(res, region: inject.Region, side: str, offset: int, n: int) -> None:
    want = expected_count(region, offset, n)
    assert res.copied == want
    if want == n:
        assert res.fault is None
        return
    f = res.fault
    assert f is not None and f.side == side
    assert f.offset == want
    assert f.address == region.address + offset + want
    assert f.signal == region.signal and f.code in region.codes


@settings(max_examples=1500, **SETTINGS)
@given(layouts())
def test_source_faults_stop_at_the_first_bad_byte(layout) -> None:
    method, npages, bad, offset, n, path = layout
    with inject.region(method, npages, bad, seed=n % 7) as r:
        dst = bytearray([SENTINEL]) * (n + 40)
        res = run_copy(path, dst, r.buffer, n, 0, offset)
        check_fault(res, r, "src", offset, n)
        good = inject.pattern(r.size, seed=n % 7)
        assert dst[:res.copied] == good[offset:offset + res.copied]
        assert dst[res.copied:] == bytes([SENTINEL]) * (n + 40 - res.copied)


@settings(max_examples=1000, **SETTINGS)
@given(layouts(), st.randoms(use_true_random=False))
def test_destination_faults_stop_at_the_first_bad_byte(layout, rnd) -> None:
    method, npages, bad, offset, n, path = layout
    src = rnd.randbytes(n)
    with inject.region(method, npages, bad, seed=3) as r:
        res = run_copy(path, r.buffer, src, n, offset, 0)
        check_fault(res, r, "dst", offset, n)
        before = inject.pattern(r.size, seed=3)
        end = offset + res.copied
        # every good page: the copied bytes are src, every other byte is unchanged
        for p in range(npages):
            if p in bad:
                continue
            lo, hi = p * PAGE, (p + 1) * PAGE
            want = bytearray(before[lo:hi])
            a, b = max(lo, offset), min(hi, end)
            if a < b:
                want[a - lo:b - lo] = src[a - offset:b - offset]
            assert r.buffer[lo:hi] == want, f"page {p}"


@pytest.mark.parametrize("method", WORKING)
@pytest.mark.parametrize("path", PATHS)
def test_fault_on_first_byte_copies_nothing(method: str, path: str) -> None:
    with inject.region(method, 2, [0] if method != "truncate" else [0, 1]) as r:
        dst = bytearray([SENTINEL]) * 300
        res = mcsafe._mcsafe._copy_path(path, dst, r.buffer[:300])
        assert res.copied == 0 and res.fault.offset == 0 and res.fault.side == "src"
        assert dst == bytearray([SENTINEL]) * 300


def test_fault_counter_counts_claims() -> None:
    before = mcsafe.claimed_faults()
    with inject.region("mprotect", 2, [1]) as r:
        assert mcsafe.copy(bytearray(2 * PAGE), r.buffer) == PAGE
    assert mcsafe.claimed_faults() == before + 1


def run_scan(path: str, src, n: int, src_offset: int):
    """The scan of src[src_offset:src_offset + n] (scrub's reader, the machine's own
    path, or one path of SCAN_PATHS) as a CopyResult whose fault offset counts from
    src_offset, as run_copy's."""
    res = mcsafe._mcsafe._scan(src, src_offset, n, None if path == "auto" else path)
    if isinstance(res, int):
        return mcsafe.CopyResult(res, None)
    return mcsafe.CopyResult(res.copied, res.fault._replace(offset=res.fault.offset - src_offset))


@settings(max_examples=1500, **SETTINGS)
@given(layouts(), st.sampled_from(["auto", *SCAN_PATHS]))
def test_scan_stops_at_the_first_bad_byte_as_the_copy_does(layout, scan_path) -> None:
    """The scan's count and fault record are exactly what they should be, and the
    same as the table-driven copy's of the same bytes (the reference: a copy
    reads every byte it copies)."""
    method, npages, bad, offset, n, copy_path = layout
    with inject.region(method, npages, bad, seed=n % 5) as r:
        res = run_scan(scan_path, r.buffer, n, offset)
        check_fault(res, r, "src", offset, n)
        copied = run_copy(copy_path, bytearray(n), r.buffer, n, 0, offset)
        assert (copied.copied, copied.fault) == (res.copied, res.fault)


@pytest.mark.parametrize("method", WORKING)
@pytest.mark.parametrize("path", SCAN_PATHS)
def test_scan_fault_on_first_byte_reads_nothing(method: str, path: str) -> None:
    with inject.region(method, 2, [0] if method != "truncate" else [0, 1]) as r:
        res = run_scan(path, r.buffer, 300, 0)
        assert res.copied == 0 and res.fault.offset == 0 and res.fault.side == "src"
        assert res.fault.address == r.address
