"""extable/framecheck.py reads each instruction's effect on the frame from capstone's
text (twenty times faster than its detailed decoding). The reference is capstone's
detailed decoding itself: over every instruction of many functions of real libraries,
the registers the text reading says an instruction writes (callee-saved slots, the
stack pointer) are exactly the ones capstone's regs_access() says it writes."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from extable.elf import EM_AARCH64, EM_X86_64, ElfImage
from extable.framecheck import FP_SLOT, SLOT_OF, _checker
from extable.unwind import RA_SLOT
from toolchain import SYSROOT

X86_LIBS = ["/usr/lib/x86_64-linux-gnu/libstdc++.so.6", "/usr/lib/x86_64-linux-gnu/libLLVM-15.so.1",
            "/lib/x86_64-linux-gnu/libc.so.6"]
ARM_LIBS = [str(SYSROOT / "usr/lib/aarch64-linux-gnu/libcrypto.so.3"),
            str(SYSROOT / "usr/lib/aarch64-linux-gnu/libsqlite3.so.0")]


def corpus(machine: int, paths: list[str], functions: int = 400) -> list[tuple[bytes, int]]:
    out = []
    for path in paths:
        if not Path(path).exists():
            continue
        with ElfImage(path) as image:
            f = image.functions
            picks = random.Random(0).sample(range(len(f)), min(functions, len(f)))
            out += [(image.code_bytes(f.start[i], f.start[i] + f.size[i]), f.start[i])
                    for i in picks if f.size[i] < 20000]
    if not out:
        pytest.skip(f"none of {', '.join(paths)} is on this machine")
    return out


def text_reading(machine: int, mnemonic: str, op_str: str) -> tuple[set[int], bool]:
    eff = _checker(machine).effect(mnemonic, op_str, {})
    slots = set(eff.writes) | {s for s, _b, _d in eff.loads}
    if eff.fp is not None:
        slots.add(FP_SLOT[machine])
    return slots, eff.sp is not None


#: capstone 5's arm64 errata, checked against the Arm ARM: cmp/cmn/tst (aliases of subs,
#: adds, ands to the zero register) write no general register, though regs_access() lists
#: their first operand; the flag-setting forms (adds, subs, ands...) write theirs, though it
#: does not list it.
_ARM_COMPARES = {"cmp", "cmn", "tst", "ccmp", "ccmn"}
_ARM_FLAG_SETTING = {"adds", "subs", "ands", "bics", "adcs", "sbcs", "negs", "ngcs"}


def detailed(machine: int, ins) -> tuple[set[int], bool]:
    _, written = ins.regs_access()
    names = {ins.reg_name(r) for r in written}
    if machine == EM_AARCH64 and ins.mnemonic in _ARM_COMPARES | _ARM_FLAG_SETTING:
        first = ins.op_str.split(",", 1)[0].strip()
        names = (names - {first, "x" + first[1:]} if ins.mnemonic in _ARM_COMPARES
                 else names | {first})
    slots = {SLOT_OF[machine][n] for n in names if n in SLOT_OF[machine]}
    sp = bool(names & {"rsp", "sp", "wsp"})
    if machine == EM_X86_64 and (ins.mnemonic in ("call", "ret") or
                                 ins.mnemonic.startswith("j")):
        sp = False                  # the call's push and the callee's ret cancel in the caller

    return slots, sp


@pytest.mark.parametrize("machine,paths", [(EM_X86_64, X86_LIBS), (EM_AARCH64, ARM_LIBS)],
                         ids=["x86_64", "aarch64"])
def test_the_text_reading_writes_what_capstone_says(machine, paths) -> None:
    import capstone

    arch = (capstone.CS_ARCH_X86, capstone.CS_MODE_64) if machine == EM_X86_64 else \
        (capstone.CS_ARCH_ARM64, capstone.CS_MODE_ARM)
    md = capstone.Cs(*arch)
    md.detail = True
    checked, differ = 0, []
    for code, start in corpus(machine, paths):
        for ins in md.disasm(code, start):
            if ins.mnemonic == "nop":
                continue
            ours, ours_sp = text_reading(machine, ins.mnemonic, ins.op_str)
            theirs, theirs_sp = detailed(machine, ins)
            if machine == EM_AARCH64 and ins.mnemonic in ("bl", "blr"):
                theirs.add(RA_SLOT[machine])
            checked += 1
            if ours != theirs or ours_sp != theirs_sp:
                differ.append(f"{ins.address:#x} {ins.mnemonic} {ins.op_str}: text "
                              f"{sorted(ours)} sp={ours_sp}, capstone {sorted(theirs)} "
                              f"sp={theirs_sp}")
    assert checked > 20000
    assert not differ, f"{len(differ)} of {checked} differ:\n" + "\n".join(differ[:30])
