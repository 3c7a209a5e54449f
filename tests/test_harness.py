"""The C harness (no Python): the copy core and the handler built for x86-64 and
aarch64 from the project's sources, the table compiled by extable from the
harness's own ELF, thousands of random faulting copies. aarch64 runs under
qemu-user."""

from __future__ import annotations

import json
import platform
import re
import subprocess
from pathlib import Path

import pytest

import expected
import extable
from conftest import run_cli
from toolchain import missing

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "mcsafe" / "_core"
CASES = 3000

TARGETS = {       # how to build and run for a machine that is not the host
    "x86_64": {"cc": "x86_64-linux-gnu-gcc", "run": ["qemu-x86_64"], "flags": ["-static"]},
    "aarch64": {"cc": "aarch64-linux-gnu-gcc", "run": ["qemu-aarch64"], "flags": ["-static"]},
}


def build(arch: str, out: Path) -> Path:
    t = TARGETS[arch]
    if platform.machine() == arch:
        t = {"cc": "gcc", "run": [], "flags": []}
    absent = missing([t["cc"], *t["run"]])
    if absent:
        pytest.skip(absent)
    exe = out / f"harness_{arch}"
    subprocess.run([t["cc"], "-O2", "-std=gnu11", *t["flags"], "-I", extable.include_dir(),
                    "-I", str(CORE), "-I", str(CORE / "arch" / arch),
                    str(ROOT / "tests" / "harness" / "harness.c"), str(CORE / "handler.c"),
                    str(CORE / "registry.c"), str(CORE / "unwind.c"),
                    str(CORE / "arch" / arch / "copy.c"),
                    "-o", str(exe)], check=True)
    run_cli("build", exe, "--in-place", check=True)
    return exe


@pytest.mark.parametrize("arch", list(TARGETS))
def test_harness_holds_every_case(tmp_path, arch: str) -> None:
    exe = build(arch, tmp_path)
    assert run_cli("verify", exe).returncode == 0
    runner = TARGETS[arch]["run"] if platform.machine() != arch else []
    p = subprocess.run([*runner, str(exe), str(CASES), "7"], capture_output=True, text=True,
                       timeout=600)
    print(p.stdout)
    assert p.returncode == 0, p.stdout + p.stderr
    assert f"{CASES} passed, 0 failed" in p.stdout
    lines = dict(line.split(": ", 1) for line in p.stdout.splitlines() if ": " in line)
    assert int(lines["faults claimed"]) > CASES // 4
    # Case k uses method k % 3 (mprotect, truncate, uffd); where uffd is not to be
    # had (qemu-user has no userfaultfd), its cases run with mprotect, and only there.
    emulator = None if platform.machine() == arch else "qemu-user"
    uffd = expected.injection_methods(emulator)["uffd"] is None
    third = CASES // 3
    cases = {m: int(n) for m, n in re.findall(r"^(\w+): (\d+) cases$", p.stdout, re.M)}
    assert cases == {"mprotect": third if uffd else 2 * third, "truncate": third,
                     "uffd": third if uffd else 0}, p.stdout
    refused = re.findall(r"^(\w+): unavailable here", p.stdout, re.M)
    assert refused == ([] if uffd else ["uffd"]), p.stdout


def test_aarch64_table_names_arm64_registers(tmp_path) -> None:
    exe = build("aarch64", tmp_path)
    d = json.loads(run_cli("dump", "--json", exe, check=True).stdout)
    assert d["machine"] == "aarch64" and expected.sites(d) == expected.expected_sites("aarch64")
    copies, regs, scans = expected.SITES["aarch64"]
    assert regs == ("x2", "x1", "x0", "x3")
    for desc in d["descriptors"]:
        # the scan's sites (loads only) name no destination
        assert (desc["reg"], desc["src_reg"], desc["dst_reg"], desc["rec_reg"]) == \
            (("x2", "x1", None, "x3") if desc["name"] in scans else regs)
    assert "reg=x2 src=x1 dst=x0 rec=x3" in run_cli("dump", exe, check=True).stdout
