"""The set-up scripts and the state every clone on a machine shares.

scripts/arm64-sysroot.sh: runs at once do not spoil each other, and a broken or
half-built sysroot is rebuilt; each test unpacks its own (MCSAFE_ARM64_SYSROOT),
about 2 s a run. scripts/setup.sh: apt runs under a lock, once, however many
runs start together, checked with a recording stand-in for apt-get and
dpkg-query; and the gcc-multilib conflict is reported, not forced."""

from __future__ import annotations

import os
import platform
import signal
import subprocess
import sys
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


needs_arm64_packages = pytest.mark.skipif(bool(_arm64_packages_reachable()),
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


@needs_arm64_packages
def test_runs_at_once_all_succeed_with_one_complete_sysroot(tmp_path: Path) -> None:
    root = tmp_path / "sysroot"
    procs = [start(root) for _ in range(3)]
    results = [(p.wait(timeout=600), p.stdout.read() if p.stdout else "") for p in procs]
    assert [rc for rc, _ in results] == [0, 0, 0], results
    assert sum("arm64 Python for emulated tests" in out for _, out in results) == 1, results
    assert_complete(root)


@needs_arm64_packages
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


@needs_arm64_packages
def test_a_file_lost_later_is_noticed_and_rebuilt(tmp_path: Path) -> None:
    root = tmp_path / "sysroot"
    assert sysroot(root).returncode == 0
    (root / "usr" / "include" / "python3.11" / "Python.h").unlink()
    p = sysroot(root)
    assert p.returncode == 0 and "rebuilding" in p.stdout
    assert_complete(root)


@needs_arm64_packages
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


@needs_arm64_packages
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


FAKE_APT = """#!/bin/sh
# apt-get stand-in: records each call, notices a call overlapping another.
state="$FAKE_STATE"
echo "start $*" >> "$state/log"
[ -e "$state/busy" ] && echo "OVERLAP $*" >> "$state/log"
touch "$state/busy"; sleep 0.3; rm -f "$state/busy"
if [ "$1" = install ]; then
    for a in "$@"; do case "$a" in -*|install) ;; *) echo "$a" >> "$state/installed" ;; esac; done
fi
"""
FAKE_DPKG_QUERY = """#!/bin/sh
# dpkg-query stand-in: installed are the packages listed in $FAKE_STATE/installed.
for pkg; do :; done
if grep -qx "$pkg" "$FAKE_STATE/installed" 2>/dev/null; then
    printf 'install ok installed'
else
    exit 1
fi
"""


@pytest.fixture
def fake_apt(tmp_path: Path) -> dict[str, str]:
    """An environment where apt-get and dpkg-query are recording stand-ins; the
    sysroot step is pointed at a complete sysroot so it does nothing."""
    if not (SYSROOT_STAMP.exists() or platform.machine() != "x86_64"):
        pytest.skip(f"no complete arm64 sysroot at {SYSROOT_STAMP.parent} "
                    "(make test unpacks it)")
    bin_dir, state = tmp_path / "bin", tmp_path / "state"
    bin_dir.mkdir()
    state.mkdir()
    for name, text in (("apt-get", FAKE_APT), ("dpkg-query", FAKE_DPKG_QUERY)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "FAKE_STATE": str(state), "XDG_CACHE_HOME": str(tmp_path / "cache"),
            "PYTHON": sys.executable, "MCSAFE_ARM64_SYSROOT": str(SYSROOT_STAMP.parent)}


def setup_sh(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(["bash", str(ROOT / "scripts" / "setup.sh")], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_setup_runs_at_once_update_and_install_once(fake_apt: dict[str, str]) -> None:
    procs = [setup_sh(fake_apt) for _ in range(3)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    log = Path(fake_apt["FAKE_STATE"], "log").read_text().splitlines()
    assert not [line for line in log if "OVERLAP" in line], log
    assert [line.split()[1] for line in log] == ["update", "install"], log
    assert sum("installing Debian packages" in out for out in outs) == 1, outs


def test_setup_leaves_gcc_multilib_and_says_what_is_skipped(fake_apt: dict[str, str]) -> None:
    if platform.machine() != "x86_64":
        pytest.skip("the conflicting cross compiler named here is x86-64's")
    Path(fake_apt["FAKE_STATE"], "installed").write_text("gcc-multilib\n")
    p = setup_sh(fake_apt)
    out = p.communicate(timeout=120)[0]
    assert p.returncode == 0, out
    assert "gcc-multilib is installed and conflicts with gcc-aarch64-linux-gnu" in out
    installed = Path(fake_apt["FAKE_STATE"], "installed").read_text().split()
    assert "gcc-multilib" in installed and "gcc-aarch64-linux-gnu" not in installed
    assert {"qemu-user", "elfutils", "patchelf", "zstd", "xz-utils"} <= set(installed)
