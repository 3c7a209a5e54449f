"""A hostile reviewer's inputs: fuzzed modules, odd lookup arguments, decompression
bombs, failures under --json. Each case was seen going wrong before its fix."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import run_cli
from kernel_helpers import small_module


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
