"""The handler among other handlers: faulthandler installed after mcsafe,
install() and handler_installed(), and asynchronous poison notices."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# rt_sigqueueinfo and rt_tgsigqueueinfo
SYSCALLS = {"x86_64": (129, 297), "aarch64": (138, 240)}[__import__("platform").machine()]


def child(*parts: str) -> subprocess.CompletedProcess[str]:
    code = "".join(textwrap.dedent(part) for part in parts)
    code = code.replace("SYS_RT_TGSIGQUEUEINFO", str(SYSCALLS[1]))
    code = code.replace("SYS_RT_SIGQUEUEINFO", str(SYSCALLS[0]))
    return subprocess.run([sys.executable, "-c", code], capture_output=True,
                          text=True, timeout=60, cwd=ROOT,
                          env={**os.environ, "PYTHONFAULTHANDLER": ""})


POISONED_COPY = """
    from mcsafe import inject
    with inject.region("uffd", 3, [1]) as r:
        print("copied", mcsafe.copy(bytearray(r.size), r.buffer), flush=True)
"""


def test_faulthandler_enabled_after_import_fails_loudly() -> None:
    p = child("""
        import faulthandler, mcsafe
        faulthandler.enable()
        print("installed", mcsafe.handler_installed(), flush=True)
    """, POISONED_COPY)
    assert "installed False" in p.stdout
    assert p.returncode == -signal.SIGBUS              # dies of the original signal
    assert "Fatal Python error: Bus error" in p.stderr  # after faulthandler's report
    assert "copied" not in p.stdout


def test_install_after_faulthandler_restores_the_guarantees() -> None:
    p = child("""
        import faulthandler, mcsafe
        faulthandler.enable()
        mcsafe.install()
        mcsafe.install()
        print("installed", mcsafe.handler_installed(), flush=True)
    """, POISONED_COPY, """
    import ctypes
    ctypes.string_at(16)    # not ours: faulthandler reports it once, then death by SIGSEGV
    """)
    assert "installed True" in p.stdout and "copied 4096" in p.stdout
    assert p.returncode == -signal.SIGSEGV
    assert p.stderr.count("Fatal Python error: Segmentation fault") == 1




def test_ao_notice_is_logged_and_forwarded_not_claimed() -> None:
    p = child("""
        import ctypes, os, signal, struct, threading
        hits = []
        signal.signal(signal.SIGBUS, lambda *a: hits.append(1))   # the previous handler
        import mcsafe
        claimed = mcsafe.claimed_faults()
        # siginfo_t: signo, errno, code, pad; then si_addr (union at offset 16)
        info = struct.pack("iiii", signal.SIGBUS, 0, 5, 0) + struct.pack("Q", 0xdead000)
        info += bytes(128 - len(info))
        libc = ctypes.CDLL(None, use_errno=True)
        rc = libc.syscall(SYS_RT_TGSIGQUEUEINFO, os.getpid(), threading.get_native_id(), signal.SIGBUS,
                          ctypes.c_char_p(info))        # to ourselves
        print("rc", rc, ctypes.get_errno())
        print("claimed", mcsafe.claimed_faults() - claimed)
        print("hits", len(hits))
        log = mcsafe.poison_log()
        print("log", [hex(n.address) for n in log], all(n.time > 1.6e9 for n in log))
    """)
    assert p.returncode == 0, p.stderr
    assert "rc 0 0" in p.stdout
    assert "claimed 0" in p.stdout and "hits 1" in p.stdout
    assert "log ['0xdead000'] True" in p.stdout


def test_ao_sent_with_sigqueue_is_neither_claimed_nor_logged() -> None:
    p = child("""
        import ctypes, os, signal
        hits = []
        signal.signal(signal.SIGBUS, lambda *a: hits.append(1))
        import mcsafe
        libc = ctypes.CDLL(None, use_errno=True)
        assert libc.sigqueue(os.getpid(), signal.SIGBUS, ctypes.c_void_p(5)) == 0   # SI_QUEUE
        print("hits", len(hits), "log", mcsafe.poison_log(), "claimed", mcsafe.claimed_faults())
    """)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["hits", "1", "log", "[]", "claimed", "0"]


def test_ao_from_another_process_is_refused_by_the_kernel() -> None:
    # A positive si_code (a forged kernel notice) may only be sent to oneself.
    p = child("""
        import ctypes, os, signal, struct, subprocess, sys
        target = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        info = struct.pack("iiii", signal.SIGBUS, 0, 5, 0) + bytes(112)
        libc = ctypes.CDLL(None, use_errno=True)
        rc = libc.syscall(SYS_RT_SIGQUEUEINFO, target.pid, signal.SIGBUS, ctypes.c_char_p(info))
        print(rc, ctypes.get_errno())
        target.kill()
    """)
    assert p.stdout.split() == ["-1", "1"]          # EPERM


def test_ao_with_default_previous_action_still_kills() -> None:
    p = child("""
        import ctypes, os, signal, struct, threading, mcsafe
        info = struct.pack("iiii", signal.SIGBUS, 0, 5, 0) + struct.pack("Q", 0x1000)
        info += bytes(128 - len(info))
        ctypes.CDLL(None).syscall(SYS_RT_TGSIGQUEUEINFO, os.getpid(), threading.get_native_id(), signal.SIGBUS,
                                  ctypes.c_char_p(info))
        print("survived", flush=True)
    """)
    assert p.returncode == -signal.SIGBUS and "survived" not in p.stdout
