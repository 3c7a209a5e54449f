"""The handler among other handlers: faulthandler installed after mcsafe,
install() and handler_installed(), and asynchronous poison notices."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import compile_so, python_child

ROOT = Path(__file__).resolve().parent.parent
# rt_sigqueueinfo and rt_tgsigqueueinfo
SYSCALLS = {"x86_64": (129, 297), "aarch64": (138, 240)}[__import__("platform").machine()]


def child(*parts: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """python_child, with the system call numbers of this machine filled in."""
    code = "".join(textwrap.dedent(part) for part in parts)
    code = code.replace("SYS_RT_TGSIGQUEUEINFO", str(SYSCALLS[1]))
    code = code.replace("SYS_RT_SIGQUEUEINFO", str(SYSCALLS[0]))
    return python_child(code, timeout=timeout)


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


SENDER = """
    import ctypes, signal, struct, sys
    libc = ctypes.CDLL(None, use_errno=True)

    def send(code):
        info = struct.pack("iiii", signal.SIGBUS, 0, code, 0) + struct.pack("Q", 0xdead000)
        info += bytes(128 - len(info))
        rc = libc.syscall(SYS_RT_SIGQUEUEINFO, int(sys.argv[1]), signal.SIGBUS,
                          ctypes.c_char_p(info))
        return rc, ctypes.get_errno() if rc else 0

    print(*send(5), *send(-1))           # BUS_MCEERR_AO, then SI_QUEUE
"""


def test_ao_from_another_process_arrives_as_a_user_signal_and_is_forwarded() -> None:
    # A positive si_code (a forged kernel notice) may only be sent to oneself: from
    # another process the kernel refuses it (EPERM), so what another process can
    # deliver is a user signal (SI_QUEUE) carrying an AO notice's fields. mcsafe
    # neither logs it as a poison notice nor claims it: the previous handler gets it.
    sender = textwrap.dedent(SENDER).replace("SYS_RT_SIGQUEUEINFO", str(SYSCALLS[0]))
    p = child(f"""
        import os, signal, subprocess, sys
        hits = []
        signal.signal(signal.SIGBUS, lambda *a: hits.append(1))   # the previous handler
        import mcsafe
        sent = subprocess.run([sys.executable, "-c", {sender!r}, str(os.getpid())],
                              capture_output=True, text=True)
        print("sender", sent.stdout.strip(), sent.stderr.strip())
        print("hits", len(hits), "log", mcsafe.poison_log(), "claimed", mcsafe.claimed_faults())
    """)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["sender", "-1", "1", "0", "0",         # EPERM, then sent
                                "hits", "1", "log", "[]", "claimed", "0"], p.stdout


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


# Handlers of other kinds, from tests/fixtures/handlers.c: each case runs in a child.

@pytest.fixture(scope="module")
def handlers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import sysconfig

    import mcsafe

    out = tmp_path_factory.mktemp("handlers") / "handlers.so"
    incs = [f"-I{d}" for d in mcsafe.get_include() + [sysconfig.get_paths()["include"]]]
    return compile_so(ROOT / "tests" / "fixtures" / "handlers.c", out, extra=[*incs, "-pthread"])


def with_lib(lib: Path, *parts: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return child(f"""
        import ctypes
        lib = ctypes.CDLL({str(lib)!r})
    """, *parts, timeout=timeout)


def test_crash_forwarded_to_a_handler_that_returns_dies_instead_of_spinning() -> None:
    # faulthandler, once disabled, returns from its handler at once: the NULL read
    # faults again and again. It must end in death by SIGSEGV, not a hang.
    p = child("""
        import ctypes, faulthandler, mcsafe
        faulthandler.enable()
        mcsafe.install()
        faulthandler.disable()
        print("armed", mcsafe.handler_installed(), flush=True)
        ctypes.string_at(0)
        print("survived", flush=True)
    """, timeout=20)
    assert p.returncode == -signal.SIGSEGV, p.stderr
    assert "armed True" in p.stdout and "survived" not in p.stdout


def test_guard_page_handler_that_fixes_and_returns_keeps_working(handlers) -> None:
    # A JIT guard page: the handler makes the page writable and returns. The same
    # store, with the same registers, faults 500 times, and each reaches the
    # handler, as without mcsafe.
    p = with_lib(handlers, """
        import mcsafe
        lib.install_guard.restype = ctypes.c_void_p
        page = lib.install_guard()
        mcsafe.install()
        for _ in range(500):
            lib.protect_guard()
            lib.poke(ctypes.c_void_p(page), 7)
        print("hits", lib.guard_count(), ctypes.string_at(page, 1), mcsafe.handler_installed())
    """)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["hits", "500", "b'\\x07'", "True"]


SIGQUEUE_SEGV_MAPERR = """
    import os, signal, struct, threading
    info = struct.pack("iiii", signal.SIGSEGV, 0, 1, 0) + struct.pack("Q", 0x1000)  # SEGV_MAPERR
    info += bytes(128 - len(info))
    rc = ctypes.CDLL(None).syscall(SYS_RT_TGSIGQUEUEINFO, os.getpid(), threading.get_native_id(),
                                   signal.SIGSEGV, ctypes.c_char_p(info))
    print("rc", rc, "installed", mcsafe.handler_installed(), flush=True)
"""


def test_non_recurring_kernel_signal_with_default_action_kills() -> None:
    # A kernel-coded SIGSEGV that does not recur (forged here; the kernel sends such
    # ones when it cannot build a signal frame, or a fault another thread fixed
    # before the retry). Without mcsafe SIG_DFL kills the process: so it must now,
    # rather than leave it alive with SIG_DFL installed in mcsafe's place.
    p = child("import ctypes, mcsafe\n", SIGQUEUE_SEGV_MAPERR, """
        print("survived", flush=True)
    """)
    assert p.returncode == -signal.SIGSEGV, p.stdout + p.stderr
    assert "rc" not in p.stdout and "survived" not in p.stdout


def test_non_recurring_kernel_signal_reaches_the_previous_handler_and_keeps_mcsafe(
        handlers) -> None:
    p = with_lib(handlers, "lib.install_inert(11)\nimport mcsafe\n", SIGQUEUE_SEGV_MAPERR,
                 POISONED_COPY, """
        print("inert", lib.inert_count())
    """)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["rc", "0", "installed", "True", "copied", "4096", "inert", "1"]


def test_previous_action_is_always_seen_whole(handlers) -> None:
    # Four threads forward user-sent SIGBUS while the main thread swaps the previous
    # action between a counting SA_SIGINFO handler and SIG_IGN: a forward must see
    # one or the other, never the flags of one with the handler of the other.
    p = with_lib(handlers, """
        import mcsafe, time
        lib.set_storm_action(1)
        mcsafe.install()
        lib.start_storm()
        end = time.monotonic() + 2
        n = 0
        while time.monotonic() < end:
            lib.set_storm_action(n & 1)
            mcsafe.install()
            n += 1
        print("forwarded", lib.stop_storm() > 0, flush=True)
    """)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["forwarded", "True"]


def test_user_signal_after_a_handler_left_by_longjmp_is_forwarded(handlers) -> None:
    # The previous handler leaves a forwarded fault by siglongjmp (as cysignals
    # does). A later raise(SIGSEGV) on that thread is an ordinary user-sent signal:
    # it must reach that handler, not SIG_DFL.
    p = with_lib(handlers, """
        lib.install_jumper()
        import mcsafe
        for _ in range(3):
            print("jumped", lib.fault_and_jump(), flush=True)
            lib.raise_segv()
        print("counted", lib.jumper_count(), mcsafe.handler_installed())
    """)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.split() == ["jumped", "1"] * 3 + ["counted", "3", "True"]


def test_runtime_owning_the_handler_calls_mcsafe_first(handlers) -> None:
    # A handler installed after mcsafe (a JVM, a wasm runtime) calls
    # mcsafe_handle_fault first: copies recover, other faults stay the runtime's.
    p = with_lib(handlers, """
        import mcsafe
        get = ctypes.pythonapi.PyCapsule_GetPointer
        get.restype, get.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
        api = get(mcsafe._mcsafe._C_API, b"mcsafe._mcsafe._C_API")
        lib.install_runtime.argtypes = [ctypes.c_void_p]
        print("version", ctypes.c_int.from_address(api).value, lib.install_runtime(api))
        print("installed", mcsafe.handler_installed(), flush=True)
    """, POISONED_COPY, """
        from mcsafe import inject
        with inject.region("mprotect", 4, [3]) as r:
            print("report", mcsafe.copy_report(bytearray(r.size), r.buffer).copied, flush=True)
        ctypes.string_at(16)
    """)
    assert p.stdout.split() == ["version", "2", "0", "installed", "False", "copied", "4096",
                                "report", str(3 * 4096)], p.stderr
    assert p.returncode == 50 + signal.SIGSEGV and "runtime: not mcsafe's" in p.stderr


def test_extension_binds_every_symbol_at_load() -> None:
    # The handler calls libc (sigaction, syscall, ...): lazy binding would run the
    # dynamic linker's resolver inside the handler.
    import mcsafe

    d = subprocess.run(["readelf", "-d", mcsafe._mcsafe.__file__], capture_output=True,
                       text=True, check=True).stdout
    assert "BIND_NOW" in d or "Flags: NOW" in d


def test_copy_range_that_wraps_the_address_space_is_not_claimed(tmp_path) -> None:
    # A short_copy entry's source register names the top of the address space and
    # a count that runs past 2^64: a fault at a low address is not in that buffer.
    from conftest import run_cli

    so = compile_so(ROOT / "tests" / "fixtures" / "misattributed.c", tmp_path / "mis.so")
    run_cli("build", so, "--in-place", check=True)
    p = child(f"""
        import ctypes, mcsafe
        lib = ctypes.CDLL({str(so)!r})
        mcsafe.register({str(so)!r})
        f = lib.misattributed
        f.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
        print("armed", flush=True)
        f((1 << 64) - 4096, 1 << 63, 16)          # fault at 16: below the named buffer
        print("survived", mcsafe.claimed_faults(), flush=True)
    """)
    assert p.returncode == -signal.SIGSEGV, p.stdout + p.stderr
    assert "armed" in p.stdout and "survived" not in p.stdout


def test_one_shot_previous_handler_runs_once_then_the_default_applies(handlers) -> None:
    # SA_RESETHAND on the previous action: mcsafe swaps in SIG_DFL (atomically, as
    # the kernel would) before the first forward; the second signal kills.
    p = with_lib(handlers, """
        lib.install_oneshot(11)
        import mcsafe
        lib.raise_segv()
        print("once", lib.inert_count(), flush=True)
        lib.raise_segv()
        print("survived", flush=True)
    """)
    assert p.returncode == -signal.SIGSEGV, p.stderr
    assert p.stdout.split() == ["once", "1"]


@pytest.mark.parametrize("altstack,copies", [(False, False), (True, False), (True, True)])
def test_handler_that_chains_back_to_mcsafe_after_a_second_install_dies_once(
        handlers, altstack: bool, copies: bool) -> None:
    # mcsafe, then a handler that saved mcsafe and calls it directly for faults
    # not its own, then install() again: the new generation in front forwards to
    # that handler, which calls the generation it saved, whose previous action is
    # SIG_DFL: death by the original signal after one pass through the chain, as
    # without mcsafe (it used to recurse until the stack, or the small alternate
    # stack faulthandler leaves, overflowed), also when it passes a copy of the
    # siginfo on.
    p = with_lib(handlers, """
        import faulthandler
        if ALTSTACK:
            faulthandler.enable()
            faulthandler.disable()          # leaves its alternate stack installed
        import mcsafe
        lib.install_chainer(COPIES)
        mcsafe.install()
        from mcsafe import inject
        with inject.region("mprotect", 2, [1]) as r:       # copies still recover
            print("copied", mcsafe.copy(bytearray(r.size), r.buffer), flush=True)
        print("armed", mcsafe.handler_installed(), flush=True)
        ctypes.string_at(16)
        print("survived", flush=True)
    """.replace("ALTSTACK", str(altstack)).replace("COPIES", str(int(copies))), timeout=30)
    assert p.returncode == -signal.SIGSEGV, p.stderr[-300:]
    assert p.stdout.split() == ["copied", "4096", "armed", "True"]
    assert p.stderr.count("chainer") == 1, p.stderr.count("chainer")


def test_reraise_reaches_the_generation_below_while_other_threads_forward(
        handlers) -> None:
    # One thread sits in a faulthandler-like handler (it will restore what it saved,
    # mcsafe's first generation, and re-raise) while 70 other threads each have a
    # signal forwarded to it and return. The re-raise then reaches the generation
    # it restored, whose previous action is SIG_DFL: death by SIGBUS after one
    # pass, as without mcsafe, not a loop through the handler.
    p = with_lib(handlers, """
        import signal, threading
        import mcsafe
        lib.install_reraiser()
        mcsafe.install()
        lib.start_reraiser()
        for _ in range(70):
            t = threading.Thread(target=lambda: signal.pthread_kill(threading.get_ident(),
                                                                   signal.SIGBUS))
            t.start()
            t.join()
        print("others done", flush=True)
        print("forwarded", lib.release_reraiser(), flush=True)
    """, timeout=30)
    assert p.returncode == -signal.SIGBUS, p.stderr[-300:]
    assert p.stdout.split() == ["others", "done"]
    assert p.stderr.count("reraiser") == 1, p.stderr.count("reraiser")


def test_handler_chaining_to_mcsafe_without_siginfo_is_forwarded(handlers) -> None:
    # A plain handler installed over mcsafe calls it with NULL siginfo and
    # context: nothing can be attributed, so it is forwarded as a user-sent
    # signal (here to a counting handler), never dereferenced.
    p = with_lib(handlers, """
        import signal
        lib.install_inert(signal.SIGSEGV)
        import mcsafe
        lib.install_plain_chainer(signal.SIGSEGV)
        lib.raise_segv()
        print("counted", lib.inert_count(), flush=True)
    """)
    assert p.returncode == 0, p.stderr[-300:]
    assert p.stdout.split() == ["counted", "1"] and p.stderr.count("plain chainer") == 1


def test_fork_while_a_c_thread_churns_the_registry(handlers, tmp_path) -> None:
    # A C thread registers and unregisters through the C API (no GIL) while the
    # main thread forks: every child finds the registry whole, and registers and
    # unregisters once more (a child forked while a writer was freeing retired
    # arrays must never free them again).
    so = compile_so(ROOT / "examples" / "protected" / "protected.c", tmp_path / "p.so")
    subprocess.run([sys.executable, "-m", "extable", "build", str(so), "--in-place"],
                   check=True, capture_output=True, cwd=ROOT)
    p = with_lib(handlers, f"""
        import os, mcsafe
        from mcsafe import registry
        from elftools.elf.elffile import ELFFile
        ctypes.CDLL({str(so)!r})
        mcsafe.register({str(so)!r})
        key = registry._key_of({str(so)!r})
        with open({str(so)!r}, "rb") as f:
            size = ELFFile(f).get_section_by_name("extable_table")["sh_size"]
        assert mcsafe.unregister({str(so)!r})
        get = ctypes.pythonapi.PyCapsule_GetPointer
        get.restype, get.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
        api = get(mcsafe._mcsafe._C_API, b"mcsafe._mcsafe._C_API")
        lib.start_churn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
        lib.start_churn(api, key, size)
        bad = []
        for _ in range(300):
            pid = os.fork()
            if pid == 0:
                os._exit(lib.churn_once())
            _, status = os.waitpid(pid, 0)
            if status:
                bad.append(status)
        print("cycles", lib.stop_churn() > 0, "bad", bad, flush=True)
    """, timeout=60)
    assert p.returncode == 0, p.stderr[-500:]
    assert p.stdout.split() == ["cycles", "True", "bad", "[]"]


def test_forwarding_adds_little_stack_under_the_previous_handler(handlers) -> None:
    # The previous handler runs on the same (often small) alternate stack as
    # mcsafe's forward: whatever mcsafe keeps in its frame meanwhile is taken
    # from it. Only mcsafe_on_fault's and forward()'s own frames may be there,
    # not the buffer that reads /proc/self/maps after the handler returns.
    p = with_lib(handlers, """
        lib.install_depth()
        direct = lib.depth_of_raise()
        import mcsafe
        forwarded = lib.depth_of_raise()
        print("extra", forwarded - direct, flush=True)
    """)
    assert p.returncode == 0, p.stderr
    extra = int(p.stdout.split()[1])
    assert 0 < extra <= 768, extra
