"""Kernel exception tables, whole process as a user runs it: ``extable dump`` and
``extable verify`` against ``objdump -s -j __ex_table`` (+ ``readelf -r`` for a
module) on the same files, with each child's peak RSS.

Files: a synthetic 600 MB x86-64 vmlinux (100k entries, 100k function symbols:
the size of a debug build), the Debian vmlinux that tests/test_kernel_debian.py
caches (if present), and the kvm-amd module fixture. MCSAFE_BENCH=full is not
needed: the large file is built once per session in a temporary folder.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
KVM = ROOT / "tests" / "fixtures" / "kernel" / "kvm-amd-6.1.0-50-amd64.ko.xz"
CACHE = Path(os.path.expanduser("~/.cache/mcsafe/kernel"))
ENTRIES, STRIDE = 100_000, 6000            # 100k functions of 6000 bytes: a 600 MB .text


def _big_vmlinux(folder: Path) -> Path:
    lines = ['.section .rodata,"a"', '.asciz "Linux version 6.1.0-bench (b@b) (gcc) #1 SMP"',
             ".text"]
    for i in range(ENTRIES):
        lines += [f".globl f{i}", f".type f{i}, @function", f"f{i}:", "nop", f"1: movl (%rdi), %eax",
                  "2: ret", f".skip {STRIDE - 4}, 0xcc", f".size f{i}, .-f{i}",
                  '.pushsection __ex_table,"a"', ".balign 4", ".long 1b - .", ".long 2b - .",
                  ".long 0xfff20011", ".popsection"]
    src = folder / "big.s"
    src.write_text("\n".join(lines) + "\n")
    obj, out = folder / "big.o", folder / "vmlinux-big"
    subprocess.run(["gcc", "-c", str(src), "-o", str(obj)], check=True)
    obj_size = obj.stat().st_size
    subprocess.run(["gcc", "-nostdlib", "-static", "-no-pie", "-Wl,-e,0",
                    "-Wl,-Ttext-segment=0xffffffff81000000", str(obj), "-o", str(out)], check=True)
    os.unlink(obj)
    os.unlink(src)
    assert out.stat().st_size > 500 << 20, obj_size
    return out


@pytest.fixture(scope="session")
def big_vmlinux(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not shutil.which("gcc"):
        pytest.skip("gcc is not installed")
    return _big_vmlinux(tmp_path_factory.mktemp("kernel-bench"))


def _debian_vmlinux() -> Path:
    found = sorted(CACHE.glob("vmlinux-*"))
    if not found:
        pytest.skip(f"no Debian vmlinux cached in {CACHE} (tests/test_kernel_debian.py makes one)")
    return found[-1]


def _plain_kvm(folder: Path) -> Path:
    out = folder / "kvm-amd.ko"
    with open(out, "wb") as f:
        subprocess.run(["xz", "-dc", str(KVM)], stdout=f, check=True)
    return out


def _run(argv: list[str]) -> int:
    """Run argv in a fresh child; return its peak RSS in KiB."""
    probe = ("import resource, subprocess, sys\n"
             "p = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL)\n"
             "assert p.returncode == 0, p\n"
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n")
    out = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True,
                         check=True)
    return int(out.stdout)


EXTABLE = [sys.executable, "-m", "extable"]
PEERS = {
    "extable dump": lambda f: [EXTABLE + ["dump", f]],
    "extable dump --json": lambda f: [EXTABLE + ["dump", f, "--json"]],
    "extable verify": lambda f: [EXTABLE + ["verify", f]],
    "objdump -s + readelf -r": lambda f: [["objdump", "-s", "-j", "__ex_table", f],
                                          ["readelf", "-rW", f]],
}


def _measure(benchmark, path: Path, peer: str) -> None:
    cmds = PEERS[peer](str(path))
    rss: list[int] = []
    benchmark.pedantic(lambda: rss.append(max(_run(c) for c in cmds)), rounds=3, iterations=1,
                       warmup_rounds=1)
    benchmark.extra_info["file_mib"] = round(path.stat().st_size / (1 << 20), 1)
    benchmark.extra_info["peak_rss_mib"] = round(max(rss) / 1024, 1)


@pytest.mark.parametrize("peer", list(PEERS))
def test_kernel_big_vmlinux(benchmark, big_vmlinux: Path, peer: str) -> None:
    benchmark.group = "kernel: 600 MB vmlinux, 100k entries"
    _measure(benchmark, big_vmlinux, peer)


@pytest.mark.parametrize("peer", list(PEERS))
def test_kernel_debian_vmlinux(benchmark, peer: str) -> None:
    benchmark.group = "kernel: Debian amd64 vmlinux"
    _measure(benchmark, _debian_vmlinux(), peer)


@pytest.mark.parametrize("peer", list(PEERS))
def test_kernel_module(benchmark, tmp_path: Path, peer: str) -> None:
    benchmark.group = "kernel: kvm-amd.ko"
    _measure(benchmark, _plain_kvm(tmp_path), peer)
