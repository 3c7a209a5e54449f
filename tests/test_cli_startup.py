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

    def run(module: str, argv: list[str], sig: str = "SIGINT") -> subprocess.CompletedProcess:
        env = dict(os.environ, SIGINT_AT_IMPORT=module, SIGNAL=sig, PYTHONPATH=str(tmp_path))
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
