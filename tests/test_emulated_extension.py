"""The real Python extension on arm64, under qemu-aarch64: built for aarch64
from the same sources, its table compiled by extable, imported by Debian's
arm64 Python (unpacked by scripts/arm64-sysroot.sh), and put through the same
property tests as on x86-64."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import expected
import extable
from conftest import run_cli
from toolchain import SYSROOT, SYSROOT_NEEDED, SYSROOT_STAMP, missing

ROOT = Path(__file__).resolve().parent.parent
PYTHON = SYSROOT / "usr" / "bin" / "python3.11"
PURE = sysconfig.get_paths()["purelib"]   # pytest and hypothesis, run by the arm64 Python

pytestmark = pytest.mark.skipif(platform.machine() != "x86_64",
                                reason="emulation is for x86-64 hosts; arm64 runs natively")


def check_sysroot() -> None:
    """Skip when the emulation is not set up here; fail, saying what is wrong, when
    it is set up but broken (scripts/arm64-sysroot.sh repairs it)."""
    absent = missing(["qemu-aarch64", "aarch64-linux-gnu-gcc"])
    if absent:
        pytest.skip(absent)
    if not SYSROOT.exists():
        pytest.skip(f"no arm64 sysroot at {SYSROOT} (make test unpacks it: "
                    "scripts/arm64-sysroot.sh)")
    lacking = [f for f in SYSROOT_NEEDED if not (SYSROOT / f).exists()]
    if lacking or not SYSROOT_STAMP.exists():
        pytest.fail(f"the arm64 sysroot {SYSROOT} is incomplete (lacks "
                    f"{', '.join(lacking) or SYSROOT_STAMP.name}); scripts/arm64-sysroot.sh rebuilds it")
    compiled = sorted(str(p.relative_to(PURE)) for p in Path(PURE, "hypothesis").rglob("*.so"))
    if compiled:
        pytest.fail(f"hypothesis in {PURE} has compiled modules ({', '.join(compiled)}) "
                    "that the arm64 Python cannot load: the test extra pins a pure-Python "
                    "release (pip install -e '.[test]')")


@pytest.fixture(scope="module")
def arm64_package(tmp_path_factory) -> Path:
    check_sysroot()
    pkg = tmp_path_factory.mktemp("arm64")
    for name in ("mcsafe", "extable"):
        shutil.copytree(ROOT / name, pkg / name,
                        ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    c_file = pkg / "mcsafe" / "_mcsafe.c"
    subprocess.run([sys.executable, "-m", "cython", "-3", str(pkg / "mcsafe" / "_mcsafe.pyx"),
                    "-I", str(ROOT / "extable" / "include"), "-o", str(c_file)], check=True)
    core = ROOT / "mcsafe" / "_core"
    so = pkg / "mcsafe" / "_mcsafe.cpython-311-aarch64-linux-gnu.so"
    subprocess.run(["aarch64-linux-gnu-gcc", "-O2", "-std=gnu11", "-fPIC", "-shared",
                    "-fno-strict-aliasing", "-I", extable.include_dir(), "-I", str(core),
                    "-I", str(core / "arch" / "aarch64"),
                    "-I", str(SYSROOT / "usr" / "include" / "python3.11"),
                    "-I", str(SYSROOT / "usr" / "include"), str(c_file),
                    str(core / "handler.c"), str(core / "registry.c"), str(core / "unwind.c"),
                    str(core / "arch" / "aarch64" / "copy.c"), "-o", str(so)], check=True)
    run_cli("build", so, "--in-place", check=True)
    assert run_cli("verify", so).returncode == 0
    return pkg


def emulated(pkg: Path, *args: str, timeout: int = 900, env: dict[str, str] | None = None,
             page: int | None = None) -> subprocess.CompletedProcess[str]:
    """The arm64 Python run on args under qemu-aarch64 (with pages of `page` bytes,
    if given: arm64 kernels are built with 4, 16 or 64 KiB pages)."""
    env = {**os.environ, "PYTHONPATH": f"{pkg}{os.pathsep}{PURE}", "PYTHONDONTWRITEBYTECODE": "1",
           **(env or {})}
    return subprocess.run(["qemu-aarch64", *(["-p", str(page)] if page else []),
                           "-L", str(SYSROOT), str(PYTHON), *args],
                          capture_output=True, text=True, env=env, cwd=pkg, timeout=timeout)


def test_extension_imports_and_recovers_on_arm64(arm64_package) -> None:
    p = emulated(arm64_package, "-c", (
        "import platform, mcsafe\nfrom mcsafe import inject\n"
        "print(platform.machine(), mcsafe.table_status(), mcsafe.published_table_count())\n"
        "with inject.region('mprotect', 4, [2]) as r:\n"
        "    res = mcsafe.copy_report(bytearray(r.size), r.buffer, src_offset=100)\n"
        "    print(res.copied, res.fault.side, res.fault.signal)\n"))
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["aarch64", "ok", "1", str(2 * 4096 - 100), "src", "11"]


@pytest.mark.parametrize("page", [4096, 16384, 65536])
def test_mcsafe_scan_on_arm64_pages_of_every_size(arm64_package, tmp_path, page: int) -> None:
    """`mcsafe scan` on arm64 kernels' three page sizes (qemu-aarch64 -p): a folder of
    small files (empty, a byte, a page and a bit, up to the batch reader's limit)
    and a larger one, every file clean and read whole, exit 0; and the batch
    reader takes a residency buffer of a byte per page of that size. (main, with 16
    or 64 KiB pages: "ValueError: residency holds fewer bytes than the file has
    pages".) With --keep-cache: qemu 7.2's mincore(2) writes a byte per host page
    (4 KiB) into a buffer sized for the guest's, corrupting the emulated process,
    so the page cache left is judged on this host's own pages only (test_cli_scan)."""
    from mcsafe.cli.scanfile import SMALL
    sizes = {"empty": 0, "byte": 1, "page": 4097, "mid": 70_000, "limit": SMALL,
             "large": SMALL + 1}
    for name, size in sizes.items():
        (tmp_path / name).write_bytes(os.urandom(size))
    p = emulated(arm64_package, "-c", "import sys; from mcsafe.cli import main; "
                 "sys.exit(main(sys.argv[1:]))", "scan", "--json", "--keep-cache",
                 str(tmp_path), page=page)
    assert p.returncode == 0, p.stderr
    import json
    got = {o["path"]: (o["status"], o["size"], o["done"])
           for o in map(json.loads, p.stdout.splitlines()) if o["type"] == "file"}
    assert got == {str(tmp_path / n): ("clean", size, size) for n, size in sizes.items()}
    p = emulated(arm64_package, "-c", (
        "import mmap, os, sys\nfrom mcsafe._mcsafe import _scan_small\n"
        "fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)\n"
        f"print(mmap.PAGESIZE, _scan_small(fd, [], False, bytearray(64), {SMALL}, -1, "
        f"bytearray({SMALL} // mmap.PAGESIZE), 0, True, 1 << 30))\n"), str(tmp_path),
        page=page)
    assert (p.returncode, p.stdout.split()) == (0, [str(page), "[]"]), p.stderr


def test_property_tests_pass_on_arm64(arm64_package) -> None:
    """tests/test_mcsafe_faults.py whole, under qemu-user, where its cases are known
    in advance: the injection methods qemu-user offers (tests/expected.py says which
    and why) times the arm64 copy paths. Every case that should run must pass: a
    method that went missing would otherwise turn its cases into skips."""
    tests = arm64_package / "tests"
    tests.mkdir()
    for name in ("test_mcsafe_faults.py", "expected.py"):
        shutil.copyfile(ROOT / "tests" / name, tests / name)
    methods = expected.injection_methods("qemu-user")
    working = [m for m, why in methods.items() if why is None]
    paths = expected.COPY_PATHS["aarch64"] + expected.SCAN_PATHS["aarch64"]
    # the machine's methods, the probe without the copy, the copy and scan paths,
    # uffd's si_code, source and destination properties, the fault counter, the
    # scan's property; each method's signal; the first byte: method x (copy and
    # scan) path
    passed = 9 + len(working) + len(working) * len(paths)
    skipped = len(methods) - len(working)
    p = emulated(arm64_package, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                 "--noconftest", str(tests / "test_mcsafe_faults.py"),
                 env={expected.EMULATOR_VARIABLE: "qemu-user"})
    print(p.stdout[-3000:])
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
    summary = p.stdout.strip().splitlines()[-1]
    assert re.fullmatch(rf"{passed} passed, {skipped} skipped in [\d.]+s( \([\d:]+\))?",
                        summary), summary


def test_another_module_registered_on_arm64(arm64_package) -> None:
    so = arm64_package / "protected.so"
    subprocess.run(["aarch64-linux-gnu-gcc", "-O2", "-shared", "-fPIC", "-I",
                    extable.include_dir(), str(ROOT / "examples" / "protected" / "protected.c"),
                    "-o", str(so)], check=True)
    run_cli("build", so, "--in-place", check=True)
    p = emulated(arm64_package, "-c", (
        "import ctypes, mcsafe\nfrom mcsafe import inject\n"
        f"lib = ctypes.CDLL({str(so)!r})\n"
        "lib.probe_read.argtypes = [ctypes.c_void_p]; lib.probe_read.restype = ctypes.c_long\n"
        "lib.sum_bytes.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]\n"
        "lib.sum_bytes.restype = ctypes.c_size_t\n"
        f"mcsafe.register({str(so)!r})\n"
        "with inject.region('mprotect', 2, [1]) as r:\n"
        "    r.buffer[inject.PAGE - 2:inject.PAGE] = bytes([5, 6])\n"
        "    left = ctypes.c_size_t(0)\n"
        "    total = lib.sum_bytes(r.address + inject.PAGE - 2, 10, ctypes.byref(left))\n"
        "    print(lib.probe_read(r.address + inject.PAGE), total, left.value)\n"))
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["-14", "11", "8"]


@pytest.mark.parametrize("order", ["before", "under"])
def test_a_delivery_and_a_call_are_told_apart_on_arm64(arm64_package, order: str) -> None:
    # A one-shot (SA_RESETHAND) handler that returns, then import mcsafe ("before"),
    # and for "under" a V8-style chainer above both, which *calls* mcsafe's entry;
    # three kills. Delivered, the handler's one call is spent on the first and the
    # second kills; called, the kernel resets nothing and all three reach it. The
    # entry tells them apart by the frame it runs on (arch/aarch64/context.h),
    # which qemu-user builds as the kernel does. Compared with the same process
    # without mcsafe.
    so = arm64_package / "chain.so"
    if not so.exists():
        subprocess.run(["aarch64-linux-gnu-gcc", "-O2", "-shared", "-fPIC", "-pthread",
                        str(ROOT / "tests" / "fixtures" / "chain.c"), "-o", str(so)], check=True)
    ends = []
    for with_mcsafe in (True, False):
        p = emulated(arm64_package, "-c", (
            f"import ctypes\nchain = ctypes.CDLL({str(so)!r})\n"
            "chain.chain_reset()\nchain.chain_install(9)\n"            # chain.c's RESETHAND
            + ("import mcsafe\n" if with_mcsafe else "")
            + ("chain.chain_install_above(0)\n" if order == "under" else "")
            + "chain.chain_source(3, 11, 3)\n"))                       # kill(SIGSEGV) x3
        ends.append((p.returncode, p.stderr.splitlines()))
    assert ends[0] == ends[1]
    calls = [line for line in ends[1][1] if line.startswith("K:")]
    assert (ends[1][0], len(calls)) == ((-11, 1) if order == "before" else (0, 3)), ends[1]
