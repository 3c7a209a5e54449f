"""SIGINT while the ``mcsafe`` command starts (issue 21): before its stop handling
is installed the process dies of SIGINT as cat does (the shell sees 128 + 2, nothing
is printed); after it, the documented clean stop with the partial report.

The signal is sent at a fixed point: a ``sitecustomize`` on PYTHONPATH puts an
import hook first on sys.meta_path that, when the named module is first looked
for, sends SIGINT to its own process (and removes itself)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

WAIT = 120          # seconds: a deadline for a child that should end, never a pace

SITECUSTOMIZE = '''\
import os, signal, sys

class SigintAtImport:
    def find_spec(self, name, path=None, target=None):
        if name == os.environ["SIGINT_AT_IMPORT"]:
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.Signals[os.environ.get("SIGNAL", "SIGINT")])
        return None

sys.meta_path.insert(0, SigintAtImport())
'''

LAUNCHERS = {"console script": [str(Path(sys.executable).parent / "mcsafe")],
             "python -m mcsafe": [sys.executable, "-m", "mcsafe"]}


@pytest.fixture
def hooked(tmp_path):
    """Run a command with SIGINT sent to itself when `module` is first imported."""
    (tmp_path / "sitecustomize.py").write_text(SITECUSTOMIZE)

    def run(module: str, argv: list[str], sig: str = "SIGINT",
            **extra: str) -> subprocess.CompletedProcess:
        env = dict(os.environ, SIGINT_AT_IMPORT=module, SIGNAL=sig, PYTHONPATH=str(tmp_path),
                   **extra)
        return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=WAIT)
    return run


def reference(hooked, tmp_path: Path) -> subprocess.CompletedProcess:
    """The same signal in a plain Python script, without mcsafe, importing a plain
    module: the interpreter dies of SIGINT too (after printing the
    KeyboardInterrupt's traceback, which is what the command must not print)."""
    (tmp_path / "plain_module.py").write_text("X = 1\n")
    return hooked("plain_module", [sys.executable, "-c", "import plain_module"])


@pytest.mark.parametrize("launcher", LAUNCHERS)
@pytest.mark.parametrize("command", ["scan", "rescue"])
@pytest.mark.parametrize("module", [
    "mcsafe._mcsafe",           # the package's extension, under `import mcsafe`
    "argparse",                 # mcsafe.cli, before main() runs
    "mcsafe.cli.output",        # main(), importing the command
    "mcsafe.cli.stop",          # the last module before the stop handling
])
def test_sigint_during_start_up_dies_of_sigint_without_a_word(hooked, tmp_path, launcher,
                                                              command, module) -> None:
    ref = reference(hooked, tmp_path)
    assert ref.returncode == -signal.SIGINT and "KeyboardInterrupt" in ref.stderr, ref
    src = tmp_path / "src"
    src.write_bytes(os.urandom(3 << 20))
    args = [str(src)] if command == "scan" else [str(src), str(tmp_path / "dst")]
    got = hooked(module, [*LAUNCHERS[launcher], command, *args])
    assert (got.returncode, got.stdout, got.stderr) == (ref.returncode, "", ""), got
    assert not (tmp_path / "dst").exists() and not (tmp_path / "dst.map").exists()


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_sigint_after_the_stop_handling_is_the_clean_stop(hooked, tmp_path, launcher) -> None:
    """SIGINT while the progress module is imported, after the stop handling is in
    place, before the first file is read: scan stops cleanly (no file reported,
    the summary says stopped, exit 130), rescue stops with DST and the mapfile
    consistent and says how to go on (exit 130)."""
    src = tmp_path / "src"
    src.write_bytes(os.urandom(40 << 20))
    scan = hooked("mcsafe.cli.progress",
                  [*LAUNCHERS[launcher], "scan", "--json", "--progress", str(src)])
    assert scan.returncode == 128 + signal.SIGINT, scan
    lines = [json.loads(x) for x in scan.stdout.splitlines()]
    assert [(o["type"], o["stopped"], o["signal"], o["files"]) for o in lines] == \
        [("summary", True, "SIGINT", 0)], lines
    assert "Traceback" not in scan.stderr

    dst, mapfile = tmp_path / "dst", tmp_path / "dst.map"
    rescue = hooked("mcsafe.cli.progress",
                    [*LAUNCHERS[launcher], "rescue", "--progress", str(src), str(dst)])
    assert rescue.returncode == 128 + signal.SIGINT, rescue
    assert rescue.stdout.startswith("rescued ") and "Traceback" not in rescue.stderr
    assert rescue.stderr.splitlines()[-1].startswith("stopped by SIGINT: "), rescue.stderr
    assert mapfile.exists() and dst.read_bytes() == src.read_bytes()[:dst.stat().st_size]


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_signal_ignored_since_exec_stays_ignored(hooked, tmp_path, jobs) -> None:
    """`nohup mcsafe scan` (SIGHUP ignored, as nohup leaves it for the program it
    runs) sent SIGHUP once running, as a closed terminal sends it: the scan goes on
    to the end (exit 0, the file clean), as nohup promises and as programs that
    catch signals honour (main: stopped, exit 129)."""
    src = tmp_path / "src"
    src.write_bytes(os.urandom(3 << 20))
    got = hooked("mcsafe.cli.progress",
                 ["nohup", *LAUNCHERS["python -m mcsafe"], "scan", "--json", "--progress",
                  "--jobs", jobs, str(src)], sig="SIGHUP")
    assert got.returncode == 0, got
    lines = [json.loads(x) for x in got.stdout.splitlines()]
    assert (lines[-1]["type"], lines[-1]["stopped"], lines[-1]["files"], lines[-1]["clean"]) \
        == ("summary", False, 1, 1), lines


# CPython's own command line, as its getopt reads it: each runs `module` (or no -m).
SPELLINGS = ["-m mcsafe", "-mmcsafe", "-um mcsafe", "-Bm mcsafe", "-Om mcsafe", "-ummcsafe",
             "-W ignore -m mcsafe", "-Wdefault -mmcsafe", "-X dev -m mcsafe", "-Xdev -Bm mcsafe",
             "-b -s -m mcsafe", "--check-hash-based-pycs never -m mcsafe"]


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_every_spelling_of_python_m_mcsafe_is_the_command(hooked, tmp_path, spelling) -> None:
    """`python -um mcsafe`, `-Bm mcsafe`, `-ummcsafe` ...: a SIGINT during start-up
    dies of SIGINT without a word, as `-m mcsafe` does (main: only "-m mcsafe" and
    "-mmcsafe" were recognised; the others printed a KeyboardInterrupt traceback)."""
    src = tmp_path / "src"
    src.write_bytes(os.urandom(1 << 20))
    got = hooked("mcsafe._mcsafe", [sys.executable, *spelling.split(), "scan", str(src)])
    assert (got.returncode, got.stdout, got.stderr) == (-signal.SIGINT, "", ""), got


@pytest.mark.parametrize("spelling, runs", [
    *[(s.replace("mcsafe", "x"), "x") for s in SPELLINGS], ("-mmx", "mx"), ("-ummx", "mx"),
    ("-Wdmx -mx", "x"), ("-X mx -m x", "x"), ("-c import_x -m x", "None"),
    ("-uc import_x", "None"), ("x.py -m x", "None"), ("- -m x", "None"),
    ("-- x.py -m x", "None"), ("-Bum x", "x")])
def test_the_module_run_is_found_as_cpython_finds_it(tmp_path, spelling, runs) -> None:
    """Differential against the interpreter: the module CPython runs for each
    command line (its __main__'s __spec__.name; none for a script, -c or stdin) is
    the one mcsafe._module_run reads from sys.orig_argv."""
    import mcsafe

    tree = str(Path(mcsafe.__file__).parent.parent)
    probe = (f"import sys\nsys.path.insert(0, {tree!r})\nfrom mcsafe import _module_run\n"
             "spec = sys.modules['__main__'].__spec__\n"
             "print(spec.name if spec else None, _module_run(sys.orig_argv))\n")
    for name in ("x", "mx"):
        (tmp_path / f"{name}.py").write_text(probe)
    argv = [sys.executable, *[w.replace("_", " ") for w in spelling.split()]]
    got = subprocess.run(argv, cwd=tmp_path, input=probe, capture_output=True, text=True,
                         timeout=WAIT)
    assert got.returncode == 0, (spelling, got)
    assert got.stdout.split() == [runs, runs], (spelling, got)


def test_an_embedding_host_without_argv_imports_mcsafe(tmp_path) -> None:
    """A host that embeds Python may leave sys.argv unset (main: AttributeError
    from `import mcsafe`)."""
    got = subprocess.run([sys.executable, "-c", "import sys; del sys.argv; import mcsafe; "
                          "import signal; print(signal.getsignal(signal.SIGINT).__name__)"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=WAIT)
    assert (got.returncode, got.stdout, got.stderr) == (0, "default_int_handler\n", ""), got


SCRIPT = f"""#!{sys.executable}
import os, signal, sys
{{body}}
try:
    os.kill(os.getpid(), signal.SIGINT)     # Ctrl-C, once the library is imported
    signal.pthread_sigmask(signal.SIG_BLOCK, [])    # a call that lets the handler run
except KeyboardInterrupt:
    print("interrupted: state saved")
    sys.exit(130)
print("not interrupted")
"""


@pytest.mark.parametrize("body", ["import mcsafe", "from mcsafe import MappedFile, copy",
                                  "import mcsafe.cli"])
def test_a_program_of_ones_own_named_mcsafe_keeps_its_keyboard_interrupt(tmp_path,
                                                                        body) -> None:
    """A user's program that happens to be called mcsafe (a site wrapper in
    /usr/local/bin) and uses the library: Ctrl-C is its KeyboardInterrupt, as in
    any Python program; only the console script generated for mcsafe.cli:main is the
    command (main: the program died of SIGINT, its clean-up never ran)."""
    (tmp_path / "bin").mkdir()
    program = tmp_path / "bin" / "mcsafe"
    program.write_text(SCRIPT.format(body=body))
    program.chmod(0o755)
    got = subprocess.run([str(program)], capture_output=True, text=True, timeout=WAIT)
    assert (got.returncode, got.stdout, got.stderr) == (130, "interrupted: state saved\n", ""), \
        got


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_ctrl_c_during_the_demo_cleans_up_and_dies_of_sigint(hooked, tmp_path, launcher) -> None:
    """The demo has no stop handling of its own: once the command is known it gets
    Python's KeyboardInterrupt back, so its temporary files go on Ctrl-C (here while
    registering the checksum.so it built in one), and it then dies of SIGINT as cat
    does, without a traceback (main: SIGINT stayed at its default for the whole run,
    leaving tmpXXXX/checksum.{c,so} behind)."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    got = hooked("mcsafe.registry", [*LAUNCHERS[launcher], "demo"], TMPDIR=str(tmp))
    assert got.returncode == -signal.SIGINT and got.stderr == "", got
    assert "a plain C function" in got.stdout and "still alive" not in got.stdout, got.stdout
    assert os.listdir(tmp) == []


GC_PROBE = '''\
import atexit, gc, os, sys

at_argparse = []

class Probe:
    def find_spec(self, name, path=None, target=None):
        if name == "argparse" and not at_argparse:
            at_argparse.append(gc.isenabled())
        return None

sys.meta_path.insert(0, Probe())
atexit.register(lambda: open(os.environ["GC_PROBE"], "w").write(
    f"{at_argparse} {gc.isenabled()} {gc.get_freeze_count() > 0}"))
'''


@pytest.mark.parametrize("launcher", [*LAUNCHERS, "import mcsafe"])
def test_the_command_starts_without_the_cyclic_collector(tmp_path, launcher) -> None:
    """The command starts with the cyclic garbage collector off (nothing it makes
    then is garbage; about 3 ms of a 30 ms start), and runs with it on again, what
    the start made frozen; a program that imports mcsafe (and argparse) keeps it on,
    nothing frozen."""
    (tmp_path / "sitecustomize.py").write_text(GC_PROBE)
    src = tmp_path / "src"
    src.write_bytes(os.urandom(5000))
    argv = ([*LAUNCHERS[launcher], "scan", str(src)] if launcher in LAUNCHERS else
            [sys.executable, "-c", "import mcsafe, argparse"])
    env = dict(os.environ, PYTHONPATH=str(tmp_path), GC_PROBE=str(tmp_path / "gc"))
    got = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=WAIT)
    assert got.returncode == 0, got
    assert (tmp_path / "gc").read_text() == ("[False] True True" if launcher in LAUNCHERS
                                             else "[True] True False")
