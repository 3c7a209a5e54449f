"""A hostile reviewer's inputs: fuzzed modules, odd lookup arguments, decompression
bombs, failures under --json. Each case was seen going wrong before its fix."""

from __future__ import annotations

import json
import os
import resource
import struct
import subprocess
import sys
from pathlib import Path

from conftest import run_cli
from kernel_helpers import SH_LINK, SH_OFFSET, SH_SIZE, Elf, decompress, small_module


def test_relocation_offset_near_2_64_names_no_entry(tmp_path: Path) -> None:
    """r_offset 2**64 - 12 is not entry -1 (the last one): it lies past the table."""
    elf = small_module(tmp_path)
    elf.rela(".rela__ex_table", 0, offset=2**64 - 12)
    ko = elf.write(tmp_path / "far.ko")
    p = run_cli("verify", ko, "--json")
    assert p.returncode == 1, p.stderr
    assert "Traceback" not in p.stderr
    findings = json.loads(p.stdout)["findings"]
    assert findings == [
        {"index": -1, "check": "relocation",
         "message": "relocation at __ex_table+0xfffffffffffffff4 is not at an insn or fixup "
                    "field"},
        {"index": 0, "check": "relocation", "message": "no relocation for its insn field"}]
    dump = run_cli("dump", ko)
    assert dump.returncode == 0
    assert dump.stdout.splitlines()[1].split()[:2] == ["0", "?"]


VMLINUX_LIKE_ARGS = ["-5", "0x10000000000000000", "99999999999999999999999"]
BAD_SYMBOLIC = [".text+", ".text+junk", ".text+-1", ".text++3", ".text+0x10000000000000000",
                "+", ""]


def test_lookup_arguments_that_are_not_addresses(tmp_path: Path) -> None:
    """No silent wrap to 64 bits, no empty name matching the null section, no traceback."""
    from kernel_helpers import assemble
    image = assemble(tmp_path, "x86_64", "linked", X86_LINKED, link=["-static", "-Wl,-e,f"])
    module = small_module(tmp_path).write(tmp_path / "m.ko")
    for path, args in ((image, VMLINUX_LIKE_ARGS + BAD_SYMBOLIC), (module, BAD_SYMBOLIC),
                       (image, ["--"])):
        for arg in args:
            p = run_cli("lookup", path, "--", arg)
            assert p.returncode == 2, (arg, p.stdout, p.stderr)
            assert p.stdout == "" and len(p.stderr.splitlines()) == 1, (arg, p.stderr)
            assert p.stderr.startswith(f"extable: {path}: "), p.stderr
    ok = run_cli("lookup", image, "f+1")
    assert ok.returncode == 0 and " <f+0x1> " in ok.stdout, ok.stderr


X86_LINKED = """
.text
.globl f
.type f, @function
f:  nop
1:  movl (%rdi), %eax
2:  ret
.size f, . - f
.pushsection __ex_table, "a"
.balign 4
.long 1b - ., 2b - ., 1
.popsection
"""


def _json_failure(p, code: int) -> dict:
    assert p.returncode == code, p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr.splitlines()) == 1, p.stderr
    return json.loads(p.stdout)


def test_every_failure_under_json_is_a_json_object(tmp_path: Path) -> None:
    """Bad input (exit 2) and a failed check (exit 1): JSON on stdout, one line on stderr."""
    bad = small_module(tmp_path)
    bad.set(".rela__ex_table", SH_SIZE, 43)
    bad_ko = bad.write(tmp_path / "bad.ko")
    reason = ".rela__ex_table: size 43 is not a multiple of 24"
    for cmd in (["dump"], ["verify"], ["lookup", ".init.text+0x6a9"]):
        p = run_cli(cmd[0], bad_ko, *cmd[1:], "--json")
        assert _json_failure(p, 2) == {"error": reason, "file": str(bad_ko), "exit": 2}
        assert p.stderr == f"extable: {bad_ko}: {reason}\n"
    good = small_module(tmp_path).write(tmp_path / "good.ko")
    p = run_cli("lookup", good, ".init.text+0x6aa", "--json")
    assert _json_failure(p, 1) == {
        "error": "no entry for the instruction at .init.text+0x6aa", "file": str(good), "exit": 1}
    unresolved = small_module(tmp_path)
    unresolved.set(".rela__ex_table", SH_SIZE, 24)
    ko = unresolved.write(tmp_path / "half.ko")
    p = run_cli("verify", ko, "--json")
    doc = _json_failure(p, 1)
    assert doc["ok"] is False
    assert doc["findings"] == [{"index": 0, "check": "relocation",
                                "message": "no relocation for its fixup field"}]
    assert p.stderr == f"extable: {ko}: entry 0: no relocation for its fixup field\n"


def test_a_bad_symbol_table_fails_dump_before_any_output(tmp_path: Path) -> None:
    """Not half a JSON document followed by an error."""
    elf = small_module(tmp_path)
    symtab = elf.headers[elf.index(".symtab")]
    for i in range(symtab[SH_SIZE] // 24):
        struct.pack_into("<I", elf.data, symtab[SH_OFFSET] + 24 * i, 0xFFFFFFFF)
    ko = elf.write(tmp_path / "names.ko")
    reason = ".strtab: string offset 4294967295 out of range"
    p = run_cli("dump", ko, "--json")
    assert _json_failure(p, 2) == {"error": reason, "file": str(ko), "exit": 2}
    p = run_cli("dump", ko)
    assert (p.returncode, p.stdout, p.stderr) == (2, "", f"extable: {ko}: {reason}\n")


def test_a_module_with_broken_section_headers_is_read_as_a_module(tmp_path: Path) -> None:
    """Not handed to our own format's reader ('unsupported ELF type 1'), nor read as a
    module with nameless sections and no table (exit 0)."""
    cases = {"e_shstrndx": (62, "<H", 999), "e_shentsize": (58, "<H", 40),
             "e_shoff": (40, "<Q", 2**63)}
    for name, (at, fmt, value) in cases.items():
        elf = small_module(tmp_path)
        struct.pack_into(fmt, elf.data, at, value)
        ko = elf.write(tmp_path / f"{name}.ko")
        p = run_cli("dump", ko)
        assert p.returncode == 2 and "ELF type" not in p.stderr, (name, p.stderr)
        assert len(p.stderr.splitlines()) == 1 and "Traceback" not in p.stderr, p.stderr
    elf = small_module(tmp_path)
    for i in range(len(elf.headers)):
        struct.pack_into("<I", elf.data, elf.shoff + 64 * i, 0xFFFFFFF0)
    ko = elf.write(tmp_path / "names.ko")
    p = run_cli("dump", ko)
    assert (p.returncode, p.stderr) == (2, f"extable: {ko}: section 0: name offset 0xfffffff0 "
                                           "lies outside the section name table\n")


def _zstd_of(path: Path, head: bytes, zeros: int) -> Path:
    import zstandard
    with open(path, "wb") as f, zstandard.ZstdCompressor(level=1).stream_writer(f) as w:
        w.write(head)
        block = bytes(1 << 20)
        for _ in range(zeros >> 20):
            w.write(block)
    return path


def _run_with_file_limit(*args: str | Path,
                         limit: int = 100 << 20) -> subprocess.CompletedProcess[str]:
    """The CLI unable to write more than ``limit`` bytes to any file (SIGXFSZ past it)."""
    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return subprocess.run([sys.executable, "-m", "extable", *map(str, args)],
                          capture_output=True, text=True, preexec_fn=cap)


def test_a_decompression_bomb_is_refused_early(tmp_path: Path) -> None:
    """A module header and 256 MiB of zeros (about 10 KB of zstd) stops at 64 MiB."""
    head = bytes(small_module(tmp_path).data[:64])
    bomb = _zstd_of(tmp_path / "bomb.ko.zst", head, 256 << 20)
    packed = bomb.stat().st_size
    assert packed < 100_000
    p = _run_with_file_limit("dump", bomb, "--json")
    assert p.returncode == 2, p.stderr
    error = json.loads(p.stdout)["error"]
    assert error.startswith("zstd data decompresses to more than 64 MiB (")
    assert f"times its {packed} bytes): a decompression bomb?" in error


def test_compressed_data_that_is_not_elf_is_refused_at_its_first_bytes(tmp_path: Path) -> None:
    """Said after the first chunk, not after inflating a gigabyte of zeros."""
    zeros = _zstd_of(tmp_path / "zeros.ko.zst", b"", 1 << 30)
    p = _run_with_file_limit("verify", zeros, limit=8 << 20)
    assert (p.returncode, p.stderr) == (2, f"extable: {zeros}: zstd-compressed data is not an "
                                           "ELF file\n")


def test_no_room_for_the_decompressed_module_is_not_corrupt_data(tmp_path: Path) -> None:
    """A full temporary directory (here: a 256 KiB file size limit) says so."""
    kvm = Path(__file__).parent / "fixtures" / "kernel" / "kvm-amd-6.1.0-50-amd64.ko.xz"
    p = _run_with_file_limit("dump", kvm, limit=256 << 10)
    assert p.returncode == 2
    assert p.stderr.startswith(f"extable: {kvm}: cannot decompress into "), p.stderr
    assert p.stderr.endswith(": File too large\n"), p.stderr


def test_relocations_whose_symbol_table_is_another_section(tmp_path: Path) -> None:
    """sh_link naming __ex_table itself: not '__ex_table: size 12 is not a multiple of 24'."""
    elf = small_module(tmp_path)
    table = elf.index("__ex_table")
    elf.set(".rela__ex_table", SH_LINK, table)
    ko = elf.write(tmp_path / "link.ko")
    p = run_cli("verify", ko)
    assert (p.returncode, p.stderr) == (2, f"extable: {ko}: .rela__ex_table: its symbol table "
                                           f"(sh_link {table}) is __ex_table, not a SHT_SYMTAB\n")


def test_detecting_a_fifo_does_not_wait_for_a_writer(tmp_path: Path) -> None:
    """The detector runs before every dump: it must not block in open()."""
    fifo = tmp_path / "pipe.ko"
    os.mkfifo(fifo)
    code = ("from extable.kernel.detect import is_kernel_object; "
            f"print(is_kernel_object({str(fifo)!r}))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=20)
    assert p.stdout == "False\n", p.stderr


def test_a_table_of_garbage_stops_at_the_findings_limit(tmp_path: Path) -> None:
    """kvm-amd.ko's whole body called __ex_table: 33k entries, 66k findings; verify lists
    the first 10000 and says where it stopped (it used to hold every one: 8 GB for a
    vmlinux treated the same way)."""
    kvm = Path(__file__).parent / "fixtures" / "kernel" / "kvm-amd-6.1.0-50-amd64.ko.xz"
    elf = Elf(decompress(kvm, tmp_path / "kvm.ko").read_bytes())
    n = len(elf.data) // 12
    elf.set("__ex_table", SH_OFFSET, 0)
    elf.set("__ex_table", SH_SIZE, 12 * n)
    ko = elf.write(tmp_path / "garbage.ko")
    p = run_cli("verify", ko, "--json")
    assert p.returncode == 1, p.stderr
    findings = json.loads(p.stdout)["findings"]
    assert len(findings) == 10_001
    assert findings[-1]["check"] == "limit"
    assert findings[-1]["message"].startswith("stopped after 10000 findings, at entry ")
    assert findings[-1]["message"].endswith(f" of {n}")


def test_a_target_before_its_section_reads_section_minus_offset(tmp_path: Path) -> None:
    elf = small_module(tmp_path)
    elf.rela(".rela__ex_table", 0, addend=-0x10)
    ko = elf.write(tmp_path / "before.ko")
    p = run_cli("verify", ko)
    assert (p.returncode, p.stderr) == (1, f"extable: {ko}: entry 0: insn .init.text-0x10 lies "
                                           "before the start of .init.text\n")


def _peak(*args: str | Path) -> tuple[subprocess.CompletedProcess[bytes], int]:
    """The CLI's result and its peak resident memory in KiB (VmHWM: ru_maxrss would keep
    the parent's peak across fork and exec)."""
    code = ("import sys\nfrom extable.cli import main\nrc = main(sys.argv[1:])\n"
            "hwm = next(l for l in open('/proc/self/status') if l.startswith('VmHWM'))\n"
            "print(hwm.split()[1], file=sys.stderr)\nsys.exit(rc)\n")
    p = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True)
    return p, int(p.stderr.splitlines()[-1])


def test_a_section_header_claiming_millions_of_entries_costs_one_chunk(tmp_path: Path) -> None:
    """A vmlinux whose __ex_table claims 12 MB (a million entries of whatever lies there;
    issue 20 saw 31.7 MB): verify held every entry (841 MB for 2.6M) before stopping at the
    findings limit, dump too (935 MB). Now entries are read a chunk at a time: verify stops
    reading at the limit, dump streams, and neither's memory depends on the claimed size."""
    from test_kernel_synthetic import LINK, X86_GOOD
    from kernel_helpers import assemble

    filler = ".data\n.fill 3145728, 4, 0x9abcdef0\n"            # 12 MiB of one word
    image = assemble(tmp_path, "x86_64", "vmlinux", X86_GOOD + filler, vermagic="6.1.99-test",
                     link=LINK["x86_64"])
    elf = Elf(image.read_bytes())
    n = 3145728 * 4 // 12
    elf.set("__ex_table", SH_OFFSET, elf.headers[elf.index(".data")][SH_OFFSET])
    elf.set("__ex_table", SH_SIZE, 12 * n)
    big = elf.write(tmp_path / "claims.vmlinux")
    p, verify_kb = _peak("verify", "--json", big)
    assert p.returncode == 1, p.stderr
    findings = json.loads(p.stdout)["findings"]
    assert findings[-1]["message"].startswith("stopped after 10000 findings, at entry ")
    assert findings[-1]["message"].endswith(f" of {n}")
    p, dump_kb = _peak("dump", big)
    assert p.returncode == 0
    assert p.stdout.count(b"\n") == n + 1                      # every entry, and the header
    _, small_kb = _peak("dump", image)
    assert verify_kb < small_kb + (64 << 10), (verify_kb, small_kb)
    assert dump_kb < small_kb + (96 << 10), (dump_kb, small_kb)
