"""The chain of generations, beyond the matrix (tests/test_handler_matrix.py):
reuse and exhaustion of generations, the flags and mask each entry is installed
with, a chain another handler bends into a cycle, signals sent with fault codes,
and mcsafe put in front again of a handler that replaced it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from test_handler_place import ROOT, child, handlers, with_lib  # noqa: F401  (fixture)


def both(lib, scenario: str, timeout: float = 60) -> tuple[subprocess.CompletedProcess[str],
                                                           subprocess.CompletedProcess[str]]:
    """The scenario with mcsafe (MCSAFE() installs it) and without."""
    runs = []
    for on in (True, False):
        code = scenario.replace("MCSAFE()", "import mcsafe; mcsafe.install()" if on else "pass")
        runs.append(with_lib(lib, code, timeout=timeout))
    return runs[0], runs[1]


def end(p: subprocess.CompletedProcess[str]) -> tuple[int, str, str]:
    return p.returncode, p.stdout, p.stderr


# -- generations -----------------------------------------------------------------

def test_install_in_front_of_the_same_handler_again_reuses_its_generation() -> None:
    # faulthandler enabled and disabled 200 times, mcsafe installed in front of it
    # each time: one generation for faulthandler, besides the first (SIG_DFL).
    p = child("""
        import faulthandler, mcsafe
        for _ in range(200):
            faulthandler.enable()
            mcsafe.install()
            faulthandler.disable()
            mcsafe.install()
        print(*mcsafe._mcsafe._generations_taken(), mcsafe.handler_installed())
    """)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["2", "2", "True"]


def test_a_one_shot_handler_armed_again_and_again_reuses_its_generations(handlers) -> None:
    # A one-shot (SA_RESETHAND) handler, armed again after each signal spent it,
    # mcsafe put in front each time: the kernel resets a one-shot action as it
    # delivers it, never the struct a handler saved, so the same action armed
    # again is the same generation (and its reset form one more). A generation
    # marked spent forever took a new one each time: the 48th install() raised.
    with_, without = both(handlers, """
        import os, signal
        for _ in range(100):
            lib.install_oneshot(7)
            MCSAFE()
            os.kill(os.getpid(), signal.SIGBUS)
        print("calls", lib.inert_count(), flush=True)
        if "mcsafe" in globals():
            print("taken", mcsafe._mcsafe._generations_taken()[1], mcsafe.handler_installed(),
                  flush=True)
        os.kill(os.getpid(), signal.SIGBUS)          # spent: SIG_DFL applies
        print("survived", flush=True)
    """)
    assert without.returncode == with_.returncode == -signal.SIGBUS, with_.stderr
    assert without.stdout == "calls 100\n"
    assert with_.stdout == "calls 100\ntaken 2 True\n"      # it, and its reset form


def test_generations_run_out_with_a_clear_error(handlers) -> None:
    # 47 distinct handlers (each its own mask or flags), mcsafe put in front of each:
    # 48 generations with the first. The next install() raises and changes nothing;
    # mcsafe's last generation stays out of the way of the handler installed last.
    p = with_lib(handlers, """
        import mcsafe
        assert mcsafe._mcsafe.GENERATIONS == 48
        for n in range(47):
            lib.install_distinct(7, n)
            mcsafe.install()
        print("taken", mcsafe._mcsafe._generations_taken()[1], flush=True)
        lib.install_distinct(7, 47)
        try:
            mcsafe.install()
        except RuntimeError as exc:
            print("refused", exc, flush=True)
        print("installed", mcsafe.handler_installed(), flush=True)
    """)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0] == "taken 48"
    assert lines[1] == ("refused mcsafe cannot put itself in front of the signal handlers "
                        "again: all 48 generations are taken (one per distinct handler it "
                        "was put in front of)")
    assert lines[2] == "installed False"


def test_a_copy_that_finds_the_generations_spent_raises_and_copies_nothing(handlers) -> None:
    p = with_lib(handlers, """
        import mcsafe
        from mcsafe import inject
        for n in range(48):
            lib.install_distinct(7, n)
            try:
                mcsafe.install()
            except RuntimeError:
                pass
        with inject.region("uffd", 257, [256]) as r:
            dst = bytearray(r.size)
            try:
                mcsafe.copy(dst, r.buffer)
            except RuntimeError as exc:
                print("refused", "generations are taken" in str(exc), any(dst), flush=True)
    """)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["refused", "True", "False"]


# -- what each entry is installed with ----------------------------------------------

def test_entries_block_every_signal_while_they_run() -> None:
    # Issue 17, item 13: nothing can interrupt a table lookup and leave it by
    # siglongjmp with the readers count raised. The installed action's mask, read
    # back from the kernel, holds every signal it can: not SIGKILL and SIGSTOP, nor
    # the two glibc keeps for itself below SIGRTMIN (thread cancellation, setxid),
    # which its sigaction() leaves out of any mask.
    p = child("""
        import ctypes, mcsafe
        class Sigaction(ctypes.Structure):           # glibc's struct sigaction
            _fields_ = [("handler", ctypes.c_void_p), ("mask", ctypes.c_ulong * 16),
                        ("flags", ctypes.c_int), ("restorer", ctypes.c_void_p)]
        libc = ctypes.CDLL(None, use_errno=True)
        for sig in (7, 11):
            sa = Sigaction()
            assert libc.sigaction(sig, None, ctypes.byref(sa)) == 0
            print(sig, [s for s in range(1, 65) if not sa.mask[0] >> (s - 1) & 1])
    """)
    assert p.returncode == 0, p.stderr
    open_ = [9, 19, *range(32, signal.SIGRTMIN)]
    assert p.stdout.splitlines() == [f"7 {open_}", f"11 {open_}"]


def test_a_previous_handler_without_sa_restart_sees_its_system_call_interrupted(
        handlers) -> None:
    # Python's signal handlers are installed without SA_RESTART (PEP 475 retries in
    # Python, after running the handler). mcsafe in front of one must not make the
    # kernel restart the read the signal interrupts, or the handler, which writes
    # what the read waits for, would never run.
    scenario = """
        import os, signal, threading
        r, w = os.pipe()
        signal.signal(signal.SIGBUS, lambda s, f: os.write(w, b"x"))
        MCSAFE()
        main = threading.get_native_id()
        def send():                      # once the main thread sits in read(2)
            while open(f"/proc/self/task/{main}/syscall").read().split()[0] != READ:
                os.sched_yield()
            signal.pthread_kill(threading.main_thread().ident, signal.SIGBUS)
        threading.Thread(target=send).start()
        print(os.read(r, 1), flush=True)
    """.replace("READ", repr("0" if __import__("platform").machine() == "x86_64" else "63"))
    with_, without = both(handlers, scenario, timeout=30)
    assert end(with_) == end(without)
    assert without.stdout.split() == ["b'x'"]


@pytest.mark.parametrize("onstack", [0, 1])
def test_a_previous_handler_runs_on_the_stack_it_asked_for(handlers, onstack: int) -> None:
    # A thread with an alternate stack; the previous handler with or without
    # SA_ONSTACK: mcsafe in front of it is installed with the same, so the kernel
    # puts the handler on the same stack as it would without mcsafe.
    with_, without = both(handlers, f"""
        lib.install_where(7, {onstack})
        MCSAFE()
        print("on the alternate stack", lib.where_of_raise(7), flush=True)
    """)
    assert end(with_) == end(without)
    assert without.stdout.split()[-1] == str(onstack)


# -- a cycle ---------------------------------------------------------------------------

def test_a_handler_reinstalled_over_its_own_generation_ends_after_one_extra_pass(
        handlers) -> None:
    # A chaining handler, then mcsafe, then the handler installed again: its guard
    # (do not save yourself) saves mcsafe's generation, whose previous action is the
    # handler itself. Without mcsafe it keeps SIG_DFL and dies at once; with it,
    # the cycle would recurse until the stack overflowed. The delivery's mark stops
    # it when it comes back to the generation: death by SIGBUS after one extra pass.
    with_, without = both(handlers, """
        import os, signal
        lib.install_reinstaller(7)
        MCSAFE()
        lib.install_reinstaller(7)
        print("armed", flush=True)
        os.kill(os.getpid(), signal.SIGBUS)
        print("survived", flush=True)
    """)
    assert without.returncode == with_.returncode == -signal.SIGBUS
    assert without.stdout == with_.stdout == "armed\n"
    assert without.stderr.count("reinstaller") == 1
    assert with_.stderr.count("reinstaller") == 2


# -- signals that carry fault codes but are not faults ------------------------------------

def test_f_setsig_sigbus_is_dropped_when_ignored_as_without_mcsafe() -> None:
    # F_SETSIG makes I/O readiness arrive as SIGBUS (the kernel codes it SI_SIGIO,
    # not POLL_IN, for a signal with codes of its own), here after a claimed fault
    # left this thread's fault record naming another address. SIGBUS is ignored:
    # without mcsafe the kernel drops the signal; mcsafe must drop it too.
    scenario = """
        import fcntl, os, signal
        signal.signal(signal.SIGBUS, signal.SIG_IGN)
        MCSAFE
        r, w = os.pipe()
        fcntl.fcntl(r, fcntl.F_SETOWN, os.getpid())
        fcntl.fcntl(r, 10, signal.SIGBUS)                      # F_SETSIG
        fcntl.fcntl(r, fcntl.F_SETFL, os.O_ASYNC | os.O_NONBLOCK)
        for _ in range(3):
            os.write(w, b"x")
            os.read(r, 1)
        print("alive", flush=True)
    """
    mcsafe_part = """
        import mcsafe
        from mcsafe import inject
        with inject.region("uffd", 3, [1]) as reg:
            assert mcsafe.copy(bytearray(reg.size), reg.buffer) == inject.PAGE
    """
    with_ = child(scenario.replace("MCSAFE", textwrap.indent(textwrap.dedent(mcsafe_part),
                                                             " " * 8).strip()))
    without = child(scenario.replace("MCSAFE", "pass"))
    assert end(with_) == end(without) == (0, "alive\n", "")


# -- in front again ----------------------------------------------------------------------

def _has_symbol(path: str, name: str) -> bool:
    from extable.elf import ElfImage

    with ElfImage(path) as image:
        return name in image.functions.names


def test_faulthandler_enabled_after_import_is_named_when_a_large_copy_puts_mcsafe_in_front(
        ) -> None:
    p = child("""
        import faulthandler, warnings, mcsafe
        from mcsafe import inject
        faulthandler.enable()
        with inject.region("uffd", 257, [256]) as r:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                print("copied", mcsafe.copy(bytearray(r.size), r.buffer), flush=True)
        print("installed", mcsafe.handler_installed())
        for w in caught:
            print(w.category.__name__, w.filename, w.lineno, w.message, sep="|")
        import mcsafe._mcsafe, ctypes
        origin = mcsafe._mcsafe._handler_origin(
            ctypes.cast(ctypes.pythonapi.Py_Initialize, ctypes.c_void_p).value)
        print("python", origin[0])
    """)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[:2] == ["copied 1048576", "installed True"]
    category, filename, lineno, message = lines[2].split("|")
    assert (category, filename, lineno) == ("RuntimeWarning", "<string>", "8")
    python = lines[3].split(" ", 1)[1] or sys.executable
    named = ("faulthandler_fatal_error" if _has_symbol(python, "faulthandler_fatal_error")
             else "0x")     # an interpreter stripped of its symbol table: an address
    assert message.startswith(f"mcsafe's handler was replaced (SIGSEGV by {named}")
    assert f"SIGBUS by {named}" in message
    assert "Call mcsafe.install() after installing signal handlers" in message


def test_a_python_handler_installed_after_import_is_named_with_its_callable() -> None:
    p = child("""
        import signal, warnings, mcsafe
        from mcsafe import inject
        def on_bus(sig, frame):
            print("python handler ran")
        signal.signal(signal.SIGBUS, on_bus)
        with inject.region("uffd", 257, [256]) as r:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                print("copied", mcsafe.copy(bytearray(r.size), r.buffer), flush=True)
        print(caught[0].message)
    """)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0] == "copied 1048576"
    assert "SIGBUS by signal_handler" in lines[1] or "SIGBUS by 0x" in lines[1]
    assert "which runs the Python handler 'on_bus'" in lines[1] or "SIGBUS by 0x" in lines[1]
    assert "SIGSEGV" not in lines[1]


@pytest.mark.parametrize("call", ["open", "scrub"])
def test_mapped_file_open_and_scrub_put_mcsafe_in_front_again(tmp_path, call: str) -> None:
    path = tmp_path / "f"
    path.write_bytes(bytes(3 * 4096))
    p = child(f"""
        import faulthandler, warnings, mcsafe
        if {call!r} == "scrub":
            f = mcsafe.MappedFile({str(path)!r})
        faulthandler.enable()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if {call!r} == "open":
                f = mcsafe.MappedFile({str(path)!r})
            else:
                print("bad", f.scrub())
        print("warned", [(w.category.__name__, w.filename) for w in caught])
        print("installed", mcsafe.handler_installed())
        f.close()
    """)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[-2:] == ["warned [('RuntimeWarning', '<string>')]",
                                          "installed True"]


CONFTEST_TEST = """
import faulthandler, warnings, mcsafe
from mcsafe import inject

def test_in_front(tmp_path):
    assert faulthandler.is_enabled()
    print("in front", mcsafe.handler_installed())
    (tmp_path / "f").write_bytes(bytes(4096))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mcsafe.MappedFile(str(tmp_path / "f")).close()
    for w in caught:
        print("warned:", w.message)
    with inject.region("uffd", 3, [1]) as r:
        print("copied", mcsafe.copy(bytearray(r.size), r.buffer))
"""


@pytest.mark.parametrize("plugin", [True, False])
def test_pytest_enables_faulthandler_after_a_conftest_imported_mcsafe(tmp_path,
                                                                       plugin: bool) -> None:
    # A suite whose root conftest imports mcsafe (or a package built on it):
    # pytest's faulthandler plugin enables faulthandler afterwards, in its
    # pytest_configure. With mcsafe.pytest_plugin, mcsafe is in front when the
    # tests run. Without it, the first MappedFile puts it in front with a warning
    # that says how to have the plugin.
    (tmp_path / "conftest.py").write_text(
        "import mcsafe\n" + ("pytest_plugins = ['mcsafe.pytest_plugin']\n" if plugin else ""))
    (tmp_path / "test_it.py").write_text(CONFTEST_TEST)
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
                        str(tmp_path)], capture_output=True, text=True, cwd=tmp_path, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONFAULTHANDLER": ""})
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    lines = [line for line in p.stdout.splitlines() if line.startswith(("in front", "warned",
                                                                         "copied"))]
    if plugin:
        assert lines == ["in front True", f"copied {4096}"]
    else:
        assert lines[0] == "in front False" and lines[2] == f"copied {4096}"
        assert lines[1].startswith("warned: mcsafe's handler was replaced (SIGSEGV by ")
        assert lines[1].endswith("Under pytest, which enables faulthandler after conftest files "
                                 "are imported, add pytest_plugins = ['mcsafe.pytest_plugin'] to "
                                 "the root conftest (or run pytest -p mcsafe.pytest_plugin).")
