"""x86-64: ``struct exception_table_entry { int insn, fixup, data; }``.

Since 5.17 ``data`` is type (bits 0-7), register (8-11), flags (12-15) and a
signed immediate (16-31); in 5.16 it is the type alone.
"""

from __future__ import annotations

import numpy as np

from .types import NONE, WRITE, X86_FLAGS, X86_IMM_REG_ALIASES, X86_REGS, TypeTable, X86Usage

ARCH = "x86_64"
FORMAT = "linux-x86_64"
R_PC32 = 2          # R_X86_64_PC32
R_NAMES = {R_PC32: "R_X86_64_PC32"}
_RSP = 4


def _usage(types: TypeTable, name: str | None) -> X86Usage:
    u = types.usage.get(name or "")
    return u if isinstance(u, X86Usage) else X86Usage()


def kinds(word: np.ndarray, types: TypeTable) -> np.ndarray:
    """The type number of each entry."""
    return (word & 0xFF if types.fields else word).astype(np.int64)


def _fields(word: int) -> tuple[int, int, int, int]:
    """(type, reg, flags, signed imm) of a 5.17+ data word."""
    imm = word >> 16
    return (word & 0xFF, (word >> 8) & 0xF, (word >> 12) & 0xF,
            imm - (1 << 16) if imm & 0x8000 else imm)


def decode(word: int, types: TypeTable) -> dict[str, object]:
    """The entry's type and fields, as dump shows them."""
    if not types.fields:
        return {"type": types.name(word), "type_number": word, "data": word}
    kind, reg, flags, imm = _fields(word)
    name = types.name(kind)
    usage = _usage(types, name)
    out: dict[str, object] = {"type": name, "type_number": kind, "data": word,
                              "reg": X86_REGS[reg] if (usage.reg != NONE or reg) else None,
                              "flags": [X86_FLAGS.get(b, f"{b:#x}") for b in (1, 2, 4, 8)
                                        if flags & b],
                              "imm": imm}
    if name == "IMM_REG" and imm in X86_IMM_REG_ALIASES:
        out["alias"] = X86_IMM_REG_ALIASES[imm]
    return out


def text(d: dict[str, object]) -> str:
    name = d["type"] or f"type {d['type_number']}?"
    parts = [str(d.get("alias") or name)]
    if d.get("reg"):
        parts.append(f"reg={d['reg']}")
    if d.get("imm") and not d.get("alias"):
        parts.append(f"imm={d['imm']}")
    if d.get("flags"):
        flags = d["flags"]
        assert isinstance(flags, list)
        parts.append("flags=" + "|".join(map(str, flags)))
    return " ".join(parts)


def check_fields(word: np.ndarray, types: TypeTable) -> list[tuple[int, str]]:
    """(index, problem) for every register, flag or immediate the type does not allow."""
    out: list[tuple[int, str]] = []
    if not types.fields:
        return out
    kind = word & 0xFF
    reg = (word >> 8) & 0xF
    flags = (word >> 12) & 0xF
    imm = (word >> 16).astype(np.int32)
    imm = np.where(imm >= 0x8000, imm - 0x10000, imm)
    for i in np.flatnonzero(flags & ~np.uint32(3)).tolist():
        out.append((i, f"unknown flag bits {int(flags[i]) & ~3:#x} (only CLEAR_AX 1, CLEAR_DX 2)"))
    for number, name in types.names.items():
        usage = _usage(types, name)
        mine = kind == number
        if not mine.any():
            continue
        if usage.reg == NONE:
            out += [(i, f"{name} does not use a register, but reg={X86_REGS[int(reg[i])]}")
                    for i in np.flatnonzero(mine & (reg != 0)).tolist()]
        elif usage.reg == WRITE:
            out += [(i, f"{name} would write %rsp") for i in
                    np.flatnonzero(mine & (reg == _RSP)).tolist()]
        if not usage.imm:
            out += [(i, f"{name} does not use an immediate, but imm={int(imm[i])}")
                    for i in np.flatnonzero(mine & (imm != 0)).tolist()]
        elif usage.imm_values:
            bad = mine & ~np.isin(imm, np.array(usage.imm_values))
            allowed = ", ".join(map(str, usage.imm_values))
            out += [(i, f"{name} immediate {int(imm[i])} is not one of {allowed}")
                    for i in np.flatnonzero(bad).tolist()]
    return out
