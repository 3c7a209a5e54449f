"""What the handler does not claim: each case runs in a child process and must
die exactly as it would have without mcsafe (or reach the previous handler)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import uffd_stall
from conftest import compile_so
from conftest import python_child as child

ROOT = Path(__file__).resolve().parent.parent


SEGV_OUTSIDE = """
    import ctypes, mcsafe
    assert mcsafe.handler_installed()
    print("armed", flush=True)
    ctypes.string_at(16)          # a NULL-page read in libc: not covered by any table
    print("survived", flush=True)
"""


def test_fault_outside_the_table_kills_with_sigsegv() -> None:
    p = child(SEGV_OUTSIDE)
    assert p.returncode == -signal.SIGSEGV, p.stderr
    assert "armed" in p.stdout and "survived" not in p.stdout


def test_sigbus_outside_the_table_kills_with_sigbus() -> None:
    p = child("""
        import ctypes, mcsafe
        from mcsafe import inject
        with inject.region("truncate", 2, [1]) as r:
            print("armed", flush=True)
            ctypes.string_at(r.address + inject.PAGE, 8)   # libc's memcpy, not ours
        print("survived", flush=True)
    """)
    assert p.returncode == -signal.SIGBUS, p.stderr
    assert "armed" in p.stdout and "survived" not in p.stdout


def test_unclaimed_fault_reaches_faulthandler_enabled_before_import() -> None:
    p = child("import faulthandler; faulthandler.enable()\n" + textwrap.dedent(SEGV_OUTSIDE))
    assert p.returncode == -signal.SIGSEGV
    assert "Fatal Python error: Segmentation fault" in p.stderr


def test_claimed_fault_recovers_with_faulthandler_enabled_first() -> None:
    p = child("""
        import faulthandler; faulthandler.enable()
        import mcsafe
        from mcsafe import inject
        with inject.region("uffd", 4, [2]) as r:
            print(mcsafe.copy(bytearray(r.size), r.buffer))
    """)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == [str(2 * 4096)]


@pytest.mark.parametrize("sig", [signal.SIGBUS, signal.SIGSEGV])
def test_signal_sent_with_kill_is_not_claimed(sig: int) -> None:
    p = child(f"""
        import os, mcsafe
        print("armed", flush=True)
        os.kill(os.getpid(), {int(sig)})
        print("survived", flush=True)
    """)
    assert p.returncode == -sig
    assert "survived" not in p.stdout


# A copy on its own thread, stalled in the middle (tests/uffd_stall.py: the copy
# touches page 300 of its source and waits in the kernel until the stall action
# has run), so a signal the action sends arrives while the copying thread is
# inside the copy, on one of its table's sites; SEND is the action.
STALLED_COPY = """
    import ctypes, os, signal, struct, sys, threading, mcsafe
    sys.path.insert(0, "tests")
    from uffd_stall import PAGE, stalled_buffer
    NPAGES = 512
    dst = bytearray(NPAGES * PAGE)
    {send}
    def stalled():
        print("inside the copy", flush=True)
        send(copier)
    with stalled_buffer(NPAGES, bytes(NPAGES * PAGE), {{300: stalled}}) as src:
        copier = threading.Thread(target=mcsafe.copy, args=(dst, src))
        copier.start()
        copier.join()
    print("survived", mcsafe.claimed_faults(), flush=True)
"""


def stalled_copy(send: str) -> subprocess.CompletedProcess[str]:
    """A child that runs STALLED_COPY with `send` (defining send(thread))."""
    if uffd_stall.unavailable():
        pytest.skip(uffd_stall.unavailable())
    return child(STALLED_COPY.format(send=textwrap.indent(textwrap.dedent(send), " " * 4)
                                     .strip()))


def test_signal_sent_with_kill_during_a_copy_thread_is_not_claimed() -> None:
    p = stalled_copy("""
        def send(thread):
            signal.pthread_kill(thread.ident, signal.SIGBUS)
    """)
    assert p.returncode == -signal.SIGBUS, p.stdout + p.stderr
    assert p.stdout.split("\n")[0] == "inside the copy" and "survived" not in p.stdout


def test_ignored_signal_from_a_process_stays_ignored() -> None:
    p = child("""
        import os, signal
        signal.signal(signal.SIGBUS, signal.SIG_IGN)
        import mcsafe
        os.kill(os.getpid(), signal.SIGBUS)
        print("survived", flush=True)
    """)
    assert p.returncode == 0 and "survived" in p.stdout


PREVIOUS_HANDLER = r"""
#define _GNU_SOURCE
#include <signal.h>
#include <string.h>
#include <unistd.h>
static void on_fault(int sig, siginfo_t *info, void *ctx) {
    (void)info; (void)ctx;
    static const char msg[] = "previous handler ran\n";
    write(2, msg, sizeof msg - 1);
    _exit(40 + sig);
}
int install_previous(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO;
    return sigaction(SIGSEGV, &sa, 0) | sigaction(SIGBUS, &sa, 0);
}
"""


@pytest.fixture(scope="module")
def previous_handler_lib(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("prev")
    (d / "prev.c").write_text(PREVIOUS_HANDLER)
    return compile_so(d / "prev.c", d / "prev.so")


def test_unclaimed_fault_goes_to_the_previous_siginfo_handler(previous_handler_lib) -> None:
    p = child(f"""
        import ctypes
        ctypes.CDLL({str(previous_handler_lib)!r}).install_previous()
        import mcsafe
        ctypes.string_at(16)
    """)
    assert p.returncode == 40 + signal.SIGSEGV, p.stderr
    assert "previous handler ran" in p.stderr


def test_claimed_fault_does_not_reach_the_previous_handler(previous_handler_lib) -> None:
    p = child(f"""
        import ctypes
        ctypes.CDLL({str(previous_handler_lib)!r}).install_previous()
        import mcsafe
        from mcsafe import inject
        with inject.region("mprotect", 3, [1]) as r:
            print(mcsafe.copy(bytearray(r.size), r.buffer))
    """)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["4096"] and "previous handler" not in p.stderr


def test_chaining_to_a_handler_that_longjmps_keeps_working(tmp_path) -> None:
    import importlib.util

    # Only find it: importing cysignals here would install its handlers in pytest's
    # process, over mcsafe's (the very case docs/HANDLER.md describes).
    assert importlib.util.find_spec("cysignals"), "cysignals is missing: the test extra has it"
    p = child(f"""
        import pathlib, mcsafe
        from benchmarks.conftest import build_cysignals_peer
        from cysignals.signals import SignalError
        from mcsafe import inject
        cy = build_cysignals_peer(pathlib.Path({str(tmp_path)!r}))   # then mcsafe.install()
        with inject.region("mprotect", 2, [1]) as r:
            bad = r.buffer[inject.PAGE:inject.PAGE + 64]
            for round in range(3):
                try:
                    cy.copy(bytearray(64), bad)          # not ours: forwarded, cysignals longjmps
                    print("no fault")
                except SignalError:
                    print("cysignals raised")
                print("mcsafe", mcsafe.copy(bytearray(r.size), r.buffer))
            del bad
    """)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split("\n")[:6] == ["cysignals raised", "mcsafe 4096"] * 3


def test_queued_signal_naming_the_copy_buffer_is_not_claimed() -> None:
    # A user-sent SIGBUS (SI_QUEUE) whose si_addr is the very source page the copy
    # waits on, sent to the copying thread while it is inside the copy (so a
    # handler that checked the PC and the address alone would claim it): only
    # the kernel's word counts, so it is not claimed and the process dies of it,
    # as it would without mcsafe.
    import platform as _platform

    syscall = {"x86_64": 297, "aarch64": 240}[_platform.machine()]   # rt_tgsigqueueinfo
    p = stalled_copy(f"""
        def send(thread):
            target = mcsafe._mcsafe.buffer_address(src) + 300 * PAGE    # where it waits
            info = struct.pack("iiii", signal.SIGBUS, 0, -1, 0) + struct.pack("Q", target)
            info += bytes(128 - len(info))
            rc = ctypes.CDLL(None).syscall({syscall}, os.getpid(), thread.native_id,
                                           signal.SIGBUS, ctypes.c_char_p(info))
            assert rc == 0
    """)
    assert p.returncode == -signal.SIGBUS, p.stdout + p.stderr
    assert p.stdout.split("\n")[0] == "inside the copy" and "survived" not in p.stdout


def test_copy_on_a_thread_that_blocks_the_fault_signals_raises_instead_of_dying() -> None:
    # The kernel kills a process that takes a synchronous fault with the signal
    # blocked, whatever handler is installed: mcsafe must refuse such a copy (one
    # large enough for the check to be cheap) rather than let it die.
    p = child("""
        import signal, threading, mcsafe
        from mcsafe import inject
        out = []
        def run():
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGBUS})
            with inject.region("uffd", 512, [300]) as r:
                for f in (mcsafe.copy, mcsafe.copy_report):
                    try:
                        f(bytearray(r.size), r.buffer)
                        out.append("copied")
                    except RuntimeError as e:
                        out.append("refused" if "blocks SIGBUS or SIGSEGV" in str(e) else str(e))
        t = threading.Thread(target=run)
        t.start()
        t.join()
        with inject.region("uffd", 512, [300]) as r:       # this thread does not block them
            print(*out, mcsafe.copy(bytearray(r.size), r.buffer), flush=True)
    """)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["refused", "refused", str(300 * 4096)]
