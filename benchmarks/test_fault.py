"""What a fault costs: a copy that hits a bad page, and a plain C function covered by an
`unwind` rule, against a bare C signal round trip."""

from __future__ import annotations

import ctypes
import subprocess
import sys
from pathlib import Path

import pytest

import mcsafe
from benchmarks.conftest import measure
from mcsafe import inject

AVAILABLE = inject.available()


@pytest.mark.parametrize("method", ["mprotect", "uffd"])
def test_faulting_copy(benchmark, method: str) -> None:
    if AVAILABLE[method] is not None:
        pytest.skip(f"{method} unavailable: {AVAILABLE[method]}")
    with inject.region(method, 2, [1]) as r:
        src = r.buffer[inject.PAGE:inject.PAGE + 64]     # starts on the bad page
        dst = bytearray(64)
        benchmark.group = "fault"
        benchmark.extra_info.update(peer=f"mcsafe ({method})")
        result = measure(benchmark, lambda: mcsafe.copy(dst, src), 1 << 20)
        del src
    assert result == 0


def test_bare_signal_round_trip(benchmark, peers) -> None:
    """A load from a PROT_NONE page; the handler rewrites the PC and returns."""
    with inject.region("mprotect", 2, [1]) as r:
        peers.bare_install()
        try:
            benchmark.group = "fault"
            benchmark.extra_info.update(peer="bare C handler")
            addr = r.address + inject.PAGE
            measure(benchmark, lambda: peers.bare_touch(addr), 1 << 20)
        finally:
            peers.bare_uninstall()
    assert mcsafe.handler_installed()


def test_cysignals_fault(benchmark, cysignals_peer) -> None:
    """cysignals turns the fault into an exception (SignalError), with no count."""
    from cysignals.signals import SignalError
    with inject.region("mprotect", 2, [1]) as r:
        src = r.buffer[inject.PAGE:inject.PAGE + 64]
        dst = bytearray(64)

        def fault() -> None:
            try:
                cysignals_peer.copy(dst, src)
            except SignalError:
                return
            raise AssertionError("no fault")
        benchmark.group = "fault"
        benchmark.extra_info.update(peer="cysignals (raises)")
        measure(benchmark, fault, 1 << 20)
        del src
    assert mcsafe.handler_installed()


@pytest.fixture(scope="module")
def unwound(tmp_path_factory) -> ctypes.CDLL:
    """examples/unwind/checksum.c, built and covered by `--rule 'checksum=unwind'`."""
    d = tmp_path_factory.mktemp("unwind")
    so = d / "checksum.so"
    src = Path(__file__).resolve().parent.parent / "examples" / "unwind" / "checksum.c"
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", str(src), "-o", str(so)], check=True)
    subprocess.run([sys.executable, "-m", "extable", "build", str(so), "--in-place",
                    "--add-section", "--rule", "checksum=unwind"], check=True,
                   capture_output=True)
    lib = ctypes.CDLL(str(so))
    lib.checksum.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    lib.checksum.restype = ctypes.c_int64
    mcsafe.register(so)
    yield lib
    mcsafe.unregister(so)


def test_unwound_function_fault(benchmark, unwound) -> None:
    """A plain C function whose first load faults, returning -EFAULT to its ctypes caller:
    the same call path as the bare handler's peer below."""
    with inject.region("mprotect", 2, [1]) as r:
        addr = r.address + inject.PAGE
        benchmark.group = "fault"
        benchmark.extra_info.update(peer="mcsafe unwind (mprotect)")
        result = measure(benchmark, lambda: unwound.checksum(addr, 64), 1 << 20)
    assert result == -14


LOOP = 200            # faults per call in the C-loop group


def test_unwound_function_fault_in_a_c_loop(benchmark, unwound, peers) -> None:
    """The same, 200 faults per Python call (a C loop calls the function): what the
    recovery costs without ctypes' per-call overhead, against bare_loop below."""
    fn = ctypes.cast(unwound.checksum, ctypes.c_void_p).value
    with inject.region("mprotect", 2, [1]) as r:
        addr = r.address + inject.PAGE
        benchmark.group = "fault-c-loop"
        benchmark.extra_info.update(peer="mcsafe unwind", faults_per_call=LOOP)
        result = measure(benchmark, lambda: peers.call_loop(fn, addr, 64, LOOP), 1 << 24)
    assert result == -14


def test_bare_signal_round_trip_in_a_c_loop(benchmark, peers) -> None:
    with inject.region("mprotect", 2, [1]) as r:
        peers.bare_install()
        try:
            benchmark.group = "fault-c-loop"
            benchmark.extra_info.update(peer="bare C handler", faults_per_call=LOOP)
            addr = r.address + inject.PAGE
            measure(benchmark, lambda: peers.bare_loop(addr, LOOP), 1 << 24)
        finally:
            peers.bare_uninstall()
    assert mcsafe.handler_installed()
