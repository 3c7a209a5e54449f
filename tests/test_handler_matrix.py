"""The handler matrix (tests/handler_matrix.py): every arrangement of another
signal handler and mcsafe, run with mcsafe and without, must end the same way:
the same exit code or death signal, the same lines from the other handlers, and
for a copy, exactly the bytes before the bad page, claimed. docs/HANDLER.md
lists the dimensions and the cells that differ on purpose."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import handler_matrix as matrix
from conftest import compile_so

ROOT = Path(__file__).resolve().parent.parent
CELLS = matrix.cells()


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Every cell's two outcomes, run once for the module (in parallel)."""
    so = compile_so(ROOT / "tests" / "fixtures" / "chain.c",
                    tmp_path_factory.mktemp("chain") / "chain.so", extra=["-pthread"])
    p = subprocess.run([sys.executable, matrix.__file__, str(so)], capture_output=True,
                       text=True, cwd=ROOT, timeout=1800,
                       env={**os.environ, "PYTHONFAULTHANDLER": ""})
    assert p.returncode == 0, p.stderr[-3000:]
    out = {r["cell"]: r for r in map(json.loads, p.stdout.splitlines())}
    assert len(out) == len(CELLS)
    return out


@pytest.mark.parametrize("cell", CELLS, ids=lambda c: c.name)
def test_cell_ends_as_without_mcsafe(results: dict[str, dict], cell: matrix.Cell) -> None:
    r = results[cell.name]
    assert r["reference"]["end"] != "timeout", r
    assert r["mcsafe"] == matrix.expected_with_mcsafe(cell, r["reference"]), (
        f"with mcsafe: {r['mcsafe']}\nwithout:     {r['reference']}")


# The defects of issue 17, and those its review found, each a cell (all of them
# failed on the main branch of the time); what the process without mcsafe does
# there, which mcsafe must match.
DEFECTS = {
    # 1: a handler that restores its saved action and re-raises without
    # SA_NODEFER, above mcsafe, then install() again: hung (re-raise forwarded
    # round again); Breakpad's way the same for a kill
    "reraise-reinstall-fh--null-t0": ("signal SIGSEGV", ["K:reraise 11 1"]),
    "reraise-reinstall-fh--kill_SEGV-t0": (
        "signal SIGSEGV", ["SRC:episode 0", "K:reraise 11 0"]),
    "breakpad-reinstall-fh--kill_SEGV-t0": (
        "signal SIGSEGV", ["SRC:episode 0", "K:breakpad 11 0"]),
    # 2: a handler that re-extends the truncated file and returns, 100 episodes:
    # died at the 33rd
    "fixes-before-fh--truncated-t0": (
        "exit 0", ["K:fixes 7 2"] * 6 + ["SRC:episodes 100 jumps 0", "END"]),
    # 2, the other half: a handler that returns leaving the fault in place is
    # called again and again, as without mcsafe (the fixture ends the process
    # after 1000 calls); mcsafe gave up after 32
    "returns-reinstall-fh--guard-t0": ("exit 70", ["K:returns 11 2"] * 6 + ["K:hang"]),
    # 3: SIG_IGN with SA_SIGINFO called as a function at address 1
    "ign_siginfo-before-fh--kill_SEGV-t0": (
        "exit 0", [f"SRC:episode {e}" for e in range(3)] + ["SRC:episodes 3 jumps 0", "END"]),
    "ign_siginfo-reinstall-fh--truncated-t0": ("signal SIGBUS", []),
    # 4: a longjmp out of a forwarded raise, then a raise from a deep frame
    "longjmp-before-fh--kill_SEGV-t0": (
        "exit 0", [x for e in range(3) for x in (f"SRC:episode {e}", "K:longjmp 11 0")]
        + ["SRC:episodes 3 jumps 3", "END"]),
    # 5: a plain handler chaining with (sig, NULL, NULL) after install(): recursed
    "call_plain-reinstall-fh--kill_BUS-t0": (
        "signal SIGBUS", ["SRC:episode 0", "K:call_plain 7 -"]),
    # 6: a child's exit signal SIGBUS (CLD_EXITED, si_code 1) while SIGBUS is ignored
    "ign-before-fh--child_BUS-t0": (
        "exit 0", [f"SRC:episode {e}" for e in range(3)] + ["SRC:episodes 3 jumps 0", "END"]),
    # 7: a Python-level handler, or faulthandler, installed after mcsafe, then a
    # poisoned copy of 1 MiB: spun, or died
    "python-after-fh--copy_bus-t0": ("exit 0", ["END"]),
    "faulthandler-after-fh--copy_bus-t0": ("exit 0", ["END"]),
    # 8: faulthandler.enable(); mcsafe.install(); faulthandler.disable(); kill
    "faulthandler-reinstall-fhoff-kill_SEGV-t0": ("signal SIGSEGV", ["SRC:episode 0"]),
    # Found in review: the previous handler below mcsafe, reached by a chainer
    # above that *calls* mcsafe's entry (orders under, under_plain). The entry
    # took every call for a delivery by the kernel:
    # - it set the handler's own mask, unblocking the signal for a SA_NODEFER
    #   handler that re-raises, or faulthandler: the raise killed the process
    #   inside the call, before the caller went on ("A:after")
    "reraise_nodefer-under-fh--kill_SEGV-t0": (
        "signal SIGSEGV", ["SRC:episode 0", "A:call 11 0", "K:reraise_nodefer 11 0", "A:after"]),
    "faulthandler-under-fh--null-t0": (
        "signal SIGSEGV", ["A:call 11 1", "Fatal Python error: Segmentation fault", "A:after"]),
    # - it spent a SA_RESETHAND handler's one call on a call (the kernel resets
    #   the action only when it delivers it): the next fault died
    "resethand-under-fh--null-t0": (
        "exit 70", [x for _ in range(3) for x in ("A:call 11 1", "K:resethand 11 1", "A:after")]
        + ["K:hang"]),
    # - a saved SIG_IGN called stayed in place of the caller's own "restore
    #   SIG_IGN": a plain chainer's fault then recurred forever (hang) where it
    #   dies, and every later kill reached the chainer, where it is ignored
    "ign-under_plain-fh--null-t0": ("signal SIGSEGV", ["A:call_plain 11 -", "A:after"]),
    "ign-under-fh--kill_SEGV-t0": (
        "exit 0", ["SRC:episode 0", "A:call 11 0", "A:after", "SRC:episode 1", "SRC:episode 2",
                   "SRC:episodes 3 jumps 0", "END"]),
}


@pytest.mark.parametrize("name", DEFECTS)
def test_issue_defect_is_a_cell_and_ends_as_without_mcsafe(results: dict[str, dict],
                                                           name: str) -> None:
    end, lines = DEFECTS[name]
    want = {"end": end, "lines": lines}
    assert results[name]["reference"] == want
    assert results[name]["mcsafe"] == want
