"""scripts/arm64-sysroot.sh, the shared state of every clone on a machine: runs
at once do not spoil each other, and a broken or half-built sysroot is rebuilt.
Each test unpacks its own sysroot (MCSAFE_ARM64_SYSROOT), about 2 s a run."""

from __future__ import annotations

import os
import platform
import signal
import subprocess
import time
from pathlib import Path

import pytest

from toolchain import SYSROOT_NEEDED as NEEDED
from toolchain import SYSROOT_STAMP

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "arm64-sysroot.sh"
STAMP = SYSROOT_STAMP.name


def _arm64_packages_reachable() -> str | None:
    if platform.machine() != "x86_64":
        return "the arm64 sysroot is for x86-64 hosts"
    try:
        archs = subprocess.run(["dpkg", "--print-foreign-architectures"], capture_output=True,
                               text=True).stdout.split()
    except FileNotFoundError:
        return "not a Debian machine (no dpkg)"
    if "arm64" not in archs:
        return "dpkg has no arm64 architecture here (make test's setup adds it)"
    return None


pytestmark = pytest.mark.skipif(bool(_arm64_packages_reachable()),
                                reason=_arm64_packages_reachable() or "")


def start(root: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(["bash", str(SCRIPT)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "MCSAFE_ARM64_SYSROOT": str(root)},
                            start_new_session=True)


def sysroot(root: Path) -> subprocess.CompletedProcess[str]:
    p = start(root)
    out, _ = p.communicate(timeout=600)
    return subprocess.CompletedProcess(p.args, p.returncode, out)


def assert_complete(root: Path) -> None:
    assert (root / STAMP).exists()
    assert [f for f in NEEDED if not (root / f).exists()] == []
    leftovers = [p.name for p in root.parent.iterdir() if ".tmp." in p.name]
    assert leftovers == [], "temporary folders left behind"


def test_runs_at_once_all_succeed_with_one_complete_sysroot(tmp_path: Path) -> None:
    root = tmp_path / "sysroot"
    procs = [start(root) for _ in range(3)]
    results = [(p.wait(timeout=600), p.stdout.read() if p.stdout else "") for p in procs]
    assert [rc for rc, _ in results] == [0, 0, 0], results
    assert sum("arm64 Python for emulated tests" in out for _, out in results) == 1, results
    assert_complete(root)


def test_the_broken_cache_of_the_issue_is_rebuilt(tmp_path: Path) -> None:
    # What two racing runs of the old script left: an interpreter, no Python.h.
    root = tmp_path / "sysroot"
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "usr" / "bin" / "python3.11").write_bytes(b"")
    (root / "usr" / "bin" / "python3.11").chmod(0o755)
    p = sysroot(root)
    assert p.returncode == 0 and "incomplete; rebuilding" in p.stdout, p.stdout
    assert_complete(root)
    assert (root / "usr" / "bin" / "python3.11").stat().st_size > 1000


def test_a_file_lost_later_is_noticed_and_rebuilt(tmp_path: Path) -> None:
    root = tmp_path / "sysroot"
    assert sysroot(root).returncode == 0
    (root / "usr" / "include" / "python3.11" / "Python.h").unlink()
    p = sysroot(root)
    assert p.returncode == 0 and "rebuilding" in p.stdout
    assert_complete(root)


def test_a_run_killed_half_way_leaves_nothing_that_counts(tmp_path: Path) -> None:
    root = tmp_path / "sysroot"
    p = start(root)
    time.sleep(0.7)                      # downloading or unpacking
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    assert not (root / STAMP).exists()
    # SIGKILL runs no trap: a temporary folder may stay; the next run removes it.
    p = sysroot(root)
    assert p.returncode == 0, p.stdout
    assert_complete(root)


def test_a_complete_sysroot_from_before_the_stamp_is_adopted_untouched(tmp_path: Path) -> None:
    root = tmp_path / "sysroot"
    assert sysroot(root).returncode == 0
    (root / STAMP).unlink()
    inode = (root / "usr" / "bin" / "python3.11").stat().st_ino
    p = sysroot(root)
    assert (p.returncode, p.stdout) == (0, "")
    assert (root / STAMP).exists() and (root / "usr" / "bin" / "python3.11").stat().st_ino == inode
    assert_complete(root)


def test_the_script_and_the_tests_check_the_same_files() -> None:
    text = SCRIPT.read_text()
    listed = text[text.index("needed=(") + len("needed=("):].split(")", 1)[0].split()
    assert tuple(listed) == NEEDED
