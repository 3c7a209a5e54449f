"""Objects assembled here with the kernel's ``.pushsection __ex_table`` idiom, with the
entries they must hold written out: modules (ET_REL) and linked images, both machines."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import run_cli
from kernel_helpers import assemble, extable_json

# Entries in file order; insn and fixup in different sections; not sorted.
X86_GOOD = r"""
.text
.globl probe
.type probe, @function
probe:
    nop
10: movl (%rdi), %eax
11: movq (%rsi), %rdx
12: rep movsb
13: movl %eax, (%rdi)
14: ret
.size probe, .-probe
.section .text.unlikely,"ax"
.type probe_cold, @function
probe_cold:
20: mov $-14, %eax
    ret
.size probe_cold, .-probe_cold
.pushsection __ex_table,"a"
.balign 4
.long 13b - .
.long 14b - .
.long 0x3001                     # DEFAULT, flags CLEAR_AX|CLEAR_DX
.long 10b - .
.long 20b - .
.long 0xfff20011                 # IMM_REG rax, -14: EFAULT_REG
.long 11b - .
.long 14b - .
.long 0x0211                     # IMM_REG rdx, 0: ZERO_REG
.long 12b - .
.long 20b - .
.long 0x00040113                 # UCOPY_LEN4, reg rcx
.popsection
"""

X86_BAD = r"""
.text
.globl probe
.type probe, @function
probe:
10: movl (%rdi), %eax
11: movl (%rdi), %eax
12: movl (%rdi), %eax
13: movl (%rdi), %eax
14: movl (%rdi), %eax
15: movl (%rdi), %eax
16: ret
.size probe, .-probe
.data
30: .long 0
.pushsection __ex_table,"a"
.balign 4
.long 10b - .; .long 16b - .; .long 99          # 0: unknown type
.long 11b - .; .long 16b - .; .long 0x0411      # 1: IMM_REG writes rsp
.long 12b - .; .long 16b - .; .long 0x00030113  # 2: UCOPY_LEN imm 3
.long 13b - .; .long 16b - .; .long 0x0301      # 3: DEFAULT with a register
.long 14b - .; .long 16b - .; .long 0x4001      # 4: unknown flag
.long 10b - .; .long 16b - .; .long 0x1         # 5: second entry for 10b
.long 30b - .; .long 16b - .; .long 0x1         # 6: insn in .data
.long 15b - .; .long ext_fixup - .; .long 0x3   # 7: fixup outside the module
.long 15b - .; .long 16b - .; .long 0x0         # 8: NONE (and a duplicate of 7)
.popsection
"""

ARM64 = r"""
.text
.globl probe
.type probe, %function
probe:
10: ldr w0, [x1]
11: ldr x3, [x4]
12: str w2, [x5]
13: ret
.size probe, .-probe
.pushsection __ex_table,"a"
.align 2
.long 11b - .; .long 13b - .; .short 4; .short (3 | (4 << 5))    // ZEROPAD data=x3 addr=x4
.long 10b - .; .long 13b - .; .short 2; .short (0 | (31 << 5))   // UACCESS_ERR_ZERO x0, xzr
.long 12b - .; .long 13b - .; .short 3; .short (2 | (5 << 5))    // KACCESS_ERR_ZERO x2, x5
.popsection
"""


def entries(path: Path, *extra: str) -> list[tuple]:
    d = extable_json("dump", path, *extra)
    return [(e["insn"].get("symbol") or f"{e['insn']['section']}+{e['insn']['offset']:#x}",
             e["fixup"].get("symbol") or f"{e['fixup']['section']}+{e['fixup']['offset']:#x}",
             e["type"], e.get("reg"), e.get("imm"), e.get("alias"), tuple(e.get("flags", ())))
            for e in d["entries"]]


def test_x86_module(tmp_path: Path) -> None:
    obj = assemble(tmp_path, "x86_64", "good", X86_GOOD)
    assert entries(obj) == [
        ("probe+0x8", "probe+0xa", "DEFAULT", None, 0, None, ("CLEAR_AX", "CLEAR_DX")),
        ("probe+0x1", "probe_cold", "IMM_REG", "rax", -14, "EFAULT_REG", ()),
        ("probe+0x3", "probe+0xa", "IMM_REG", "rdx", 0, "ZERO_REG", ()),
        ("probe+0x6", "probe_cold", "UCOPY_LEN", "rcx", 4, None, ()),
    ]
    d = extable_json("dump", obj)
    assert d["format"] == "linux-x86_64" and d["kernel"] == "6.1.0-test"
    assert d["entries"][1]["fixup"] == {"section": ".text.unlikely", "offset": 0,
                                        "symbol": "probe_cold"}
    assert run_cli("verify", obj).returncode == 0
    assert [e["index"] for e in extable_json("lookup", obj, "probe+0x6")["entries"]] == [3]


def test_x86_module_findings(tmp_path: Path) -> None:
    obj = assemble(tmp_path, "x86_64", "bad", X86_BAD)
    p = run_cli("verify", obj)
    assert p.returncode == 1 and p.stdout == ""
    assert p.stderr.startswith(f"extable: {obj}: entry 0: unknown type 99 for kernel 5.17+ "
                               "(x86_64) at .text+0x0 <probe>")
    assert len(p.stderr.splitlines()) == 1
    d = extable_json("verify", obj)
    assert d["ok"] is False
    got = [(f["index"], f["check"]) for f in d["findings"]]
    assert got == [(0, "type"), (1, "fields"), (2, "fields"), (3, "fields"), (4, "fields"),
                   (5, "duplicate"), (6, "location"), (7, "location"), (8, "type"),
                   (8, "duplicate")]
    msgs = [f["message"] for f in d["findings"]]
    assert msgs[1].startswith("IMM_REG would write %rsp")
    assert msgs[2].startswith("UCOPY_LEN immediate 3 is not one of 1, 4, 8")
    assert msgs[3].startswith("DEFAULT does not use a register, but reg=rbx")
    assert msgs[4].startswith("unknown flag bits 0x4")
    assert msgs[5] == "insn .text+0x0 <probe> already has entry 0"
    assert msgs[6] == "insn .data+0x0 is not in an executable section"
    assert msgs[7].startswith("fixup refers to ext_fixup outside the module")


def test_arm64_module(tmp_path: Path) -> None:
    obj = assemble(tmp_path, "arm64", "arm", ARM64)
    d = extable_json("dump", obj)
    assert d["format"] == "linux-arm64" and d["types"] == "6.0"
    got = [(e["insn"]["symbol"], e["type"], e["registers"]) for e in d["entries"]]
    assert got == [("probe+0x4", "LOAD_UNALIGNED_ZEROPAD", {"data": "x3", "addr": "x4"}),
                   ("probe", "UACCESS_ERR_ZERO", {"err": "x0", "zero": "xzr"}),
                   ("probe+0x8", "KACCESS_ERR_ZERO", {"err": "x2", "zero": "x5"})]
    assert run_cli("verify", obj).returncode == 0
    # 5.16..5.19 numbered them differently: 3 was UACCESS_ERR_ZERO, 2 BPF
    old = extable_json("dump", obj, "--kernel-version", "5.19")
    assert [e["type"] for e in old["entries"]] == ["LOAD_UNALIGNED_ZEROPAD", "BPF",
                                                   "UACCESS_ERR_ZERO"]


def test_arm64_bad_fields(tmp_path: Path) -> None:
    obj = assemble(tmp_path, "arm64", "armbad", ARM64.replace("(3 | (4 << 5))", "(3 | (31 << 5))")
                   .replace("(2 | (5 << 5))", "(2 | (5 << 5) | (1 << 12))"))
    d = extable_json("verify", obj)
    assert [(f["index"], f["check"], f["message"].split(" at ")[0]) for f in d["findings"]] == [
        (0, "fields", "LOAD_UNALIGNED_ZEROPAD: the addr register is xzr"),
        (2, "fields", "KACCESS_ERR_ZERO: data bits 10-15 set (0x10a2)")]


LINK = {"x86_64": ["-static", "-no-pie", "-Wl,-Ttext-segment=0xffffffff81000000", "-Wl,-e,0"],
        "arm64": ["-pie", "-Wl,--no-dynamic-linker", "-Wl,-Ttext-segment=0xffff800008000000",
                  "-Wl,-e,0", "-Wl,-z,norelro"]}


@pytest.mark.parametrize("arch,asm", [("x86_64", X86_GOOD), ("arm64", ARM64)])
def test_linked_image_must_be_sorted(tmp_path: Path, arch: str, asm: str) -> None:
    image = assemble(tmp_path, arch, "vmlinux", asm, vermagic="6.1.99-test", link=LINK[arch])
    d = extable_json("dump", image)
    assert d["object"] == "image" and d["kernel"] == "6.1.99-test"
    assert d["kernel_source"] == "banner"
    addrs = [e["insn"]["address"] for e in d["entries"]]
    assert all(a >= (0xffffffff81000000 if arch == "x86_64" else 0xffff800008000000)
               for a in addrs)
    assert all(e["insn"]["section"] == ".text" for e in d["entries"])
    # the assembler keeps file order; sorttable has not run: entry 1 sorts before entry 0
    p = run_cli("verify", image)
    assert p.returncode == 1
    assert p.stderr.startswith(f"extable: {image}: entry 1: insn {addrs[1]:#018x} <probe")
    assert "is not sorted (scripts/sorttable)" in p.stderr
    lk = extable_json("lookup", image, f"{addrs[2]:#x}")
    assert [e["index"] for e in lk["entries"]] == [2]
    if arch == "arm64":       # probe's first instruction has an entry there, not on x86
        assert [e["index"] for e in extable_json("lookup", image, "probe")["entries"]] == [1]
    else:
        assert run_cli("lookup", image, "probe").returncode == 1


def test_lookup_of_an_ambiguous_static_name(tmp_path: Path) -> None:
    """ld -r of two objects can leave two static functions of one name: say so, do not guess."""
    asm = X86_GOOD + r"""
.text
.type dup, @function
dup: ret
.size dup, .-dup
.section .text.unlikely,"ax"
.type dup_b, @function
dup_b: ret
.size dup_b, .-dup_b
"""
    obj = assemble(tmp_path, "x86_64", "dup", asm)
    # one .s cannot define a name twice: rename dup_b to dup in the string table
    data = bytearray(obj.read_bytes())
    at = data.find(b"\0dup_b\0")
    data[at + 1:at + 6] = b"dup\0\0"
    obj.write_bytes(bytes(data))
    p = run_cli("lookup", obj, "dup")
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.strip() == (f"extable: {obj}: dup: 2 symbols are called 'dup' "
                                "(.text+0xb, .text.unlikely+0x6); give SECTION+OFF")


def test_no_version_uses_the_newest_table_and_says_so(tmp_path: Path) -> None:
    obj = assemble(tmp_path, "x86_64", "nover", X86_GOOD, vermagic=None)
    p = run_cli("verify", obj)
    assert p.returncode == 0
    assert p.stderr == (f"extable: note: {obj}: kernel version unknown; "
                        "using the 6.10+ types\n")
    d = extable_json("dump", obj)
    assert (d["kernel"], d["kernel_source"], d["types"]) == (None, "unknown", "6.10")


def test_relocation_kind_and_a_target_past_the_end(tmp_path: Path) -> None:
    asm = r"""
.text
.globl probe
.type probe, @function
probe:
10: movl (%rdi), %eax
11: ret
.size probe, .-probe
12:
.pushsection __ex_table,"a"
.balign 4
.long 10b; .long 11b - .; .long 1          # 0: absolute, not PC-relative
.long 12b - .; .long 11b - .; .long 1      # 1: insn one past the end of .text
.popsection
"""
    obj = assemble(tmp_path, "x86_64", "rel", asm)
    d = extable_json("verify", obj)
    assert [(f["index"], f["check"], f["message"]) for f in d["findings"]] == [
        (0, "relocation", "insn relocation type 10, expected R_X86_64_PC32"),   # said once
        (1, "location", "insn .text+0x3 lies past the end of .text")]
