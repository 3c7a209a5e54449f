"""The handler matrix: every arrangement of another signal handler and mcsafe,
each run twice, with mcsafe and without, and the two ends compared.

A cell is (previous handler kind, order, faulthandler around it, source of the
signal, threads). Each run is a child forked from one pre-warmed parent (the
interpreter, mcsafe and the fixture already loaded: fork costs about a
millisecond where importing mcsafe costs 70), which starts from SIG_DFL for
SIGSEGV and SIGBUS. The run *with* mcsafe calls ``mcsafe.install()`` where the
order says mcsafe is imported (what ``import mcsafe`` does); the run *without*
never installs it. The outcome of a run is how it ended (exit code, or the
signal it died of, or a timeout) and the lines the handlers and the scenario
wrote, with tracebacks and addresses left out. docs/HANDLER.md lists the
dimensions and the cells that differ on purpose.

    python tests/handler_matrix.py CHAIN_SO [--only SUBSTRING] [--jobs N]

prints one JSON object per cell: {"cell", "mcsafe", "reference"}.
"""

from __future__ import annotations

import ctypes
import dataclasses
import itertools
import json
import os
import re
import select
import signal
import sys
from typing import Iterator

# The kinds of tests/fixtures/chain.c, by number, then the real ones.
C_KINDS = ("returns", "fixes", "longjmp", "call", "call_plain", "wasmtime", "reraise",
           "reraise_nodefer", "breakpad", "resethand", "ign", "ign_siginfo", "dfl", "dfl_siginfo")
REAL_KINDS = ("python", "faulthandler", "cysignals", "none")
KINDS = C_KINDS + REAL_KINDS
# "under" and "under_plain": handler, import, then a chainer above both (chain.c's
# chain_install_above: V8's way, or a plain handler's), which calls mcsafe's
# entry as its saved action: every previous handler reached by a call.
ORDERS = ("before", "after", "reinstall", "under", "under_plain")
UNDER = ("under", "under_plain")
# faulthandler enabled first ("on"), or enabled first and disabled after the
# arrangement ("around"); for the faulthandler kind, disabled after ("off").
FH = ("-", "on", "around")
FH_OF_FAULTHANDLER = ("-", "off")
SEGV, BUS = int(signal.SIGSEGV), int(signal.SIGBUS)
# name -> (chain.c source number or None for a copy, signal, episodes)
SOURCES = {
    "null": (0, SEGV, 100),
    "guard": (1, SEGV, 100),
    "truncated": (2, BUS, 100),
    **{f"{name}_{sig}": (number, int(getattr(signal, "SIG" + sig)), 3)
       for number, name in ((3, "kill"), (4, "tgkill"), (5, "sigqueue"), (6, "child"))
       for sig in ("SEGV", "BUS")},
    "copy_bus": (None, BUS, 1),
    "copy_segv": (None, SEGV, 1),
}
COPIERS = 8
HANG_EXIT = 70
TIMEOUT = 20.0


@dataclasses.dataclass(frozen=True)
class Cell:
    kind: str
    order: str
    fh: str
    source: str
    threads: int

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.order}-fh{self.fh}-{self.source}-t{self.threads}"


# With copier threads, only signals aimed at one thread: which thread takes a
# signal sent to the process is the kernel's choice (any that does not block it;
# a copier returning from its own fault takes it as readily as the thread the
# handler expects), so a handler that assumes one thread (a longjmp, cysignals)
# would measure the scheduler. cysignals restores SIG_DFL for every signal before
# it reports, so a copy faulting on another thread meanwhile ends the process
# first: with threads, only its sig_on source and the copies.
THREAD_SOURCES = ("null", "guard", "truncated", "tgkill_SEGV", "tgkill_BUS", "copy_bus",
                  "copy_segv")
CYSIGNALS_THREAD_SOURCES = ("null", "copy_bus", "copy_segv")


def cells() -> list[Cell]:
    """Every cell of the matrix."""
    out = []
    for kind, order, source, threads in itertools.product(KINDS, ORDERS, SOURCES, (0, COPIERS)):
        if threads and source not in (CYSIGNALS_THREAD_SOURCES if kind == "cysignals"
                                      else THREAD_SOURCES):
            continue
        fhs = ("-",) if order in UNDER else FH_OF_FAULTHANDLER if kind == "faulthandler" else FH
        for fh in fhs:
            out.append(Cell(kind, order, fh, source, threads))
    return out


# Cells whose two runs differ by design: name pattern -> why (docs/HANDLER.md).
DIFFERENT_ON_PURPOSE = {
    # mcsafe, then a handler that chains by calling its saved action, and that
    # handles a saved SIG_DFL by restoring it and returning (Wasmtime always;
    # V8's way for a kernel-coded signal, such as a child's CLD_EXITED). Without
    # mcsafe a signal that does not recur is lost there and the process lives on
    # with SIG_DFL, to die of the next one; with mcsafe the handler's saved
    # action is mcsafe's generation, which it calls, whose previous action is
    # SIG_DFL: the process dies of the first one, as SIG_DFL means.
    r"(wasmtime-(after|reinstall)-fh--(kill|tgkill|sigqueue|child)_(SEGV|BUS)"
    r"|call-(after|reinstall)-fh--child_(SEGV|BUS)"
    # the same V8-style chainer above mcsafe, in the orders that put it there
    # over a SIG_DFL (the other handler's place: SIG_DFL, or none)
    r"|(dfl|dfl_siginfo|none)-under-fh--child_(SEGV|BUS))-t\d":
        "a chaining handler's 'restore SIG_DFL and return' loses a signal that "
        "does not recur; mcsafe's generation under it ends the process, as SIG_DFL",
}


def on_purpose(cell: Cell) -> str | None:
    """Why the cell's two runs differ by design, or None."""
    for pattern, why in DIFFERENT_ON_PURPOSE.items():
        if re.fullmatch(pattern, cell.name):
            return why
    return None


def expected_with_mcsafe(cell: Cell, reference: dict) -> dict:
    """The outcome the run with mcsafe must have: the reference's, or for a
    cell that differs on purpose, the reference's first episode and its end
    (it dies of the signal the reference lost)."""
    if on_purpose(cell) is None:
        return reference
    lines = reference["lines"]
    cut = lines.index("SRC:episode 1") if "SRC:episode 1" in lines else len(lines)
    return {"end": reference["end"], "lines": lines[:cut]}


# ---------------------------------------------------------------- in the child

class Run:
    """One run of a cell in a forked child: set up the arrangement, fire the
    source, say how it went; never returns."""

    def __init__(self, cell: Cell, with_mcsafe: bool, chain: ctypes.CDLL) -> None:
        self.cell, self.mcsafe, self.chain = cell, with_mcsafe, chain

    def say(self, line: str) -> None:
        os.write(2, (line + "\n").encode())

    def import_mcsafe(self) -> None:
        if self.mcsafe:
            import mcsafe
            mcsafe.install()

    def install_previous(self) -> None:
        kind = self.cell.kind
        if kind in C_KINDS:
            if self.chain.chain_install(C_KINDS.index(kind)) != 0:
                raise OSError("chain_install failed")
        elif kind == "python":
            r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            signal.set_wakeup_fd(w, warn_on_full_buffer=False)
            self.chain.chain_watch(r)
            for sig in (SEGV, BUS):
                signal.signal(sig, lambda s, f: self.say(f"PY:handler {s}"))
        elif kind == "faulthandler":
            import faulthandler
            faulthandler.enable(all_threads=self.fh_all_threads)
        elif kind == "cysignals":
            import cysignals.signals  # noqa: F401  (installs its handlers)

    @property
    def fh_all_threads(self) -> bool:
        # Dumping the other threads' tracebacks reads their frames while they run
        # (faulthandler's documented hazard): with copier threads busy, the dump
        # itself may crash with SIGSEGV, in either run, at random.
        return not self.cell.threads

    def arrange(self) -> None:
        import faulthandler

        c = self.cell
        if c.fh in ("on", "around"):
            faulthandler.enable(all_threads=self.fh_all_threads)
        if c.order in ("before", *UNDER):
            self.install_previous()
            self.import_mcsafe()
        else:
            self.import_mcsafe()
            self.install_previous()
            if c.order == "reinstall":
                self.import_mcsafe()
        if c.order in UNDER:
            if self.chain.chain_install_above(c.order == "under_plain") != 0:
                raise OSError("chain_install_above failed")
        if c.fh in ("around", "off"):
            faulthandler.disable()

    def copy(self, sig: int) -> None:
        """A copy of 1 MiB + a page whose last page faults: claimed, exactly."""
        import warnings

        import mcsafe
        from mcsafe import inject

        method = "uffd" if sig == BUS else "mprotect"
        with inject.region(method, 257, [256]) as r:
            if not self.mcsafe:
                return                        # the same process, minus the copy
            displaced = not mcsafe.handler_installed()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                got = mcsafe.copy(bytearray(r.size), r.buffer)
            warned = any(issubclass(w.category, RuntimeWarning) for w in caught)
            if got != 256 * inject.PAGE:
                self.say(f"MISMATCH copied {got}")
            if warned != displaced:
                self.say(f"MISMATCH displaced {displaced} warned {warned}")

    def start_copiers(self) -> tuple[object, list]:
        """COPIERS threads copying a region whose last page faults (without
        mcsafe: a healthy one) until stopped; returns once each has copied once.
        Their faults are of the signal the source does not send: a crash handler
        that restores SIG_DFL for its signal before it reports (faulthandler
        does) would otherwise race with them (docs/HANDLER.md)."""
        import threading

        import mcsafe
        from mcsafe import inject

        stop = threading.Event()
        ready = threading.Barrier(COPIERS + 1)
        method = "mprotect" if SOURCES[self.cell.source][1] == BUS else "uffd"
        # entered for the rest of the run (which ends by os._exit)
        self.region = inject.region(method, 257, [256] if self.mcsafe else [])
        region = self.region.__enter__()
        good = 256 * inject.PAGE if self.mcsafe else 257 * inject.PAGE

        def copier() -> None:
            try:
                dst = bytearray(region.size)
                first = True
                while first or not stop.is_set():
                    if self.mcsafe:
                        got = mcsafe.copy(dst, region.buffer)
                    else:                     # memcpy without the GIL, as mcsafe's copy
                        ctypes.memmove(mcsafe._mcsafe.buffer_address(dst), region.address,
                                       len(dst))
                        got = len(dst)
                    if got != good:
                        self.say(f"MISMATCH copier copied {got}")
                        os._exit(3)
                    if first:
                        first = False
                        ready.wait()
            except BaseException as exc:
                self.say(f"ERROR in a copier: {type(exc).__name__}: {exc}")
                os._exit(99)

        threads = [threading.Thread(target=copier, daemon=True) for _ in range(COPIERS)]
        for t in threads:
            t.start()
        ready.wait()
        return stop, threads

    def fire(self) -> None:
        c = self.cell
        number, sig, episodes = SOURCES[c.source]
        if number is None:
            self.copy(sig)
        elif c.kind == "cysignals" and c.source == "null":
            import cysignals.tests
            try:
                cysignals.tests.test_dereference_null_pointer()
            except BaseException as exc:          # SignalError is a BaseException
                self.say(f"PY:{type(exc).__name__}")
        elif self.chain.chain_source(number, sig, episodes) != 0:
            raise OSError("chain_source failed")

    def __call__(self) -> None:
        try:
            self.chain.chain_reset()
            self.arrange()
            copiers = self.start_copiers() if self.cell.threads else None
            self.fire()
            if copiers:
                stop, threads = copiers
                stop.set()
                for t in threads:
                    t.join()
            self.say("END")
        except BaseException as exc:
            self.say(f"ERROR {type(exc).__name__}: {exc}")
            os._exit(99)
        os._exit(0)


# ---------------------------------------------------------------- in the parent

KEEP = re.compile(r"^(K:|A:|SRC:|PY:|END|ERROR|MISMATCH|Fatal Python error: \w|Unhandled SIG)")


def outcome(status: int | None, text: str) -> dict:
    """How a run ended, and what it said that matters (tracebacks, thread
    dumps and addresses left out)."""
    if status is None:
        end = "timeout"
    elif os.WIFSIGNALED(status):
        end = f"signal {signal.Signals(os.WTERMSIG(status)).name}"
    else:
        end = f"exit {os.WEXITSTATUS(status)}"
    lines = [re.sub(r"\s+at 0x[0-9a-f]+", "", line).split(" (")[0]
             for line in text.splitlines() if KEEP.match(line)]
    return {"end": end, "lines": lines}


def spawn(cell: Cell, with_mcsafe: bool, chain: ctypes.CDLL) -> tuple[int, int, int]:
    """Fork a run; (pid, pidfd, output memfd)."""
    out = os.memfd_create("run")
    pid = os.fork()
    if pid == 0:
        os.dup2(out, 1)
        os.dup2(out, 2)
        Run(cell, with_mcsafe, chain)()
    return pid, os.pidfd_open(pid), out


def run_all(todo: list[Cell], chain_so: str, jobs: int, timeout: float = TIMEOUT) -> Iterator[dict]:
    """Every run of every cell, `jobs` at a time; one result per cell."""
    import mcsafe  # noqa: F401  (pre-warm: the children inherit it)
    import mcsafe.inject  # noqa: F401
    import faulthandler  # noqa: F401
    import threading  # noqa: F401
    import warnings  # noqa: F401

    chain = ctypes.CDLL(chain_so)
    queue = [(cell, m) for cell in todo for m in (True, False)]
    running: dict[int, tuple[Cell, bool, int, int, float]] = {}
    results: dict[Cell, dict] = {}
    import time

    while queue or running:
        while queue and len(running) < jobs:
            cell, m = queue.pop(0)
            pid, pidfd, out = spawn(cell, m, chain)
            running[pidfd] = (cell, m, pid, out, time.monotonic() + timeout)
        deadline = min(r[4] for r in running.values())
        ready, _, _ = select.select(list(running), [], [], max(0.0, deadline - time.monotonic()))
        now = time.monotonic()
        for pidfd in list(running):
            cell, m, pid, out, until = running[pidfd]
            if pidfd not in ready and now < until:
                continue
            status = None
            if pidfd not in ready:
                os.kill(pid, signal.SIGKILL)
            _, st = os.waitpid(pid, 0)
            if pidfd in ready:
                status = st
            os.lseek(out, 0, os.SEEK_SET)
            text = b""
            while chunk := os.read(out, 1 << 16):
                text += chunk
            os.close(out)
            os.close(pidfd)
            del running[pidfd]
            results.setdefault(cell, {})["mcsafe" if m else "reference"] = outcome(
                status, text.decode(errors="replace"))
            if len(results[cell]) == 2:
                yield {"cell": cell.name, **results.pop(cell)}


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("chain_so")
    ap.add_argument("--only", action="append", default=[])
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--timeout", type=float, default=TIMEOUT)
    args = ap.parse_args()
    os.environ["CYSIGNALS_CRASH_NDEBUG"] = "1"       # no gdb backtrace from cysignals
    todo = [c for c in cells() if all(s in c.name for s in args.only)]
    for result in run_all(todo, args.chain_so, args.jobs, args.timeout):
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
