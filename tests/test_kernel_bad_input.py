"""Kernel objects that are not what they seem: one line, exit 2, no traceback, nothing written."""

from __future__ import annotations

import lzma
import shutil
from pathlib import Path

from conftest import run_cli
from kernel_helpers import KERNEL_FIXTURES, decompress

KVM = KERNEL_FIXTURES / "kvm-amd-6.1.0-50-amd64.ko.xz"


def one_line_error(p, code: int = 2) -> str:
    assert p.returncode == code, p.stderr
    assert p.stdout == "" and "Traceback" not in p.stderr
    assert len(p.stderr.splitlines()) == 1
    return p.stderr.strip()


def test_truncated_xz(tmp_path: Path) -> None:
    bad = tmp_path / "kvm-amd.ko.xz"
    bad.write_bytes(KVM.read_bytes()[:5000])
    for cmd in ("dump", "verify"):
        msg = one_line_error(run_cli(cmd, bad))
        assert msg.startswith(f"extable: {bad}: corrupt xz data")


def test_xz_of_something_else(tmp_path: Path) -> None:
    bad = tmp_path / "notes.ko.xz"
    bad.write_bytes(lzma.compress(b"just some text\n" * 100))
    assert one_line_error(run_cli("dump", bad)) == (
        f"extable: {bad}: xz-compressed data is not an ELF file")


def test_name_does_not_matter(tmp_path: Path) -> None:
    """A plain module called .xz, and an xz module called .ko, read the same."""
    plain = decompress(KVM, tmp_path / "looks-compressed.ko.xz")
    packed = tmp_path / "looks-plain.ko"
    shutil.copyfile(KVM, packed)
    assert run_cli("verify", plain).returncode == 0
    assert run_cli("verify", packed).returncode == 0


def test_table_size_not_a_multiple_of_12(tmp_path: Path) -> None:
    ko = decompress(KVM, tmp_path / "kvm-amd.ko")
    data = bytearray(ko.read_bytes())
    # shrink __ex_table's sh_size by 4 in the section header table
    import struct
    shoff, = struct.unpack_from("<Q", data, 40)
    shnum, shstrndx = struct.unpack_from("<HH", data, 60)
    names_off = struct.unpack_from("<Q", data, shoff + 64 * shstrndx + 24)[0]
    for i in range(shnum):
        h = shoff + 64 * i
        name = data[names_off + struct.unpack_from("<I", data, h)[0]:].split(b"\0")[0]
        if name == b"__ex_table":
            size, = struct.unpack_from("<Q", data, h + 32)
            struct.pack_into("<Q", data, h + 32, size - 4)
    ko.write_bytes(bytes(data))
    msg = one_line_error(run_cli("dump", ko))
    assert msg == f"extable: {ko}: __ex_table: size 224 is not a multiple of 12"


def test_module_without_a_table(tmp_path: Path) -> None:
    from kernel_helpers import assemble
    obj = assemble(tmp_path, "x86_64", "empty", ".text\nnop\n")
    p = run_cli("dump", obj)
    assert p.returncode == 0
    assert p.stdout.endswith("5.17+ types, 0 entries (no __ex_table)\n")
    assert run_cli("verify", obj).returncode == 0
    assert one_line_error(run_cli("lookup", obj, ".text"), 1).endswith(
        "no __ex_table: no entry for anything")


def test_options_that_do_not_apply(tmp_path: Path, built) -> None:
    msg = one_line_error(run_cli("dump", KVM, "--section", "foo"))
    assert "--section does not apply to kernel objects" in msg
    msg = one_line_error(run_cli("dump", built["plain"], "--kernel-version", "6.1"))
    assert msg == f"extable: {built['plain']}: --kernel-version applies only to Linux kernel objects"


def test_our_own_format_is_untouched(built) -> None:
    """A shared object of ours still goes to the user-space reader."""
    p = run_cli("dump", built["plain"])
    assert "linux-" not in p.stdout + p.stderr


def test_gzip_module(tmp_path: Path) -> None:
    import gzip
    gz = tmp_path / "kvm-amd.ko.gz"
    gz.write_bytes(gzip.compress(lzma.decompress(KVM.read_bytes())))
    p = run_cli("dump", gz)
    assert p.returncode == 0 and p.stdout.splitlines()[0].endswith("5.17+ types, 19 entries")


def test_file_truncated_while_being_read(tmp_path: Path) -> None:
    """Another process truncates the module after we opened it: an error, not a SIGBUS."""
    import subprocess
    import sys
    ko = decompress(KVM, tmp_path / "kvm-amd.ko")
    code = ("import os, sys\n"
            "from extable.errors import ExtableError\n"
            "from extable.kernel import module, x86_64\n"
            "from extable.kernel.image import KernelImage\n"
            "image = KernelImage(sys.argv[1])\n"
            "os.truncate(sys.argv[1], image.section('__ex_table').offset + 12)\n"
            "try:\n"
            "    module.read(image, x86_64)\n"
            "except ExtableError as exc:\n"
            "    print(exc)\n")
    p = subprocess.run([sys.executable, "-c", code, str(ko)], capture_output=True, text=True)
    assert p.returncode == 0, p        # a mapping would have died of SIGBUS here (-7)
    assert p.stdout.startswith(f"{ko}: the file ends at ")
    assert p.stdout.rstrip().endswith("was it truncated while being read?")
