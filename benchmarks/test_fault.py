"""What a fault costs: a copy that hits a bad page, against a bare C signal round trip."""

from __future__ import annotations

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
