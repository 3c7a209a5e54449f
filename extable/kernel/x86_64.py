"""x86-64: ``struct exception_table_entry { int insn, fixup, data; }``.

Since 5.17 ``data`` is type (bits 0-7), register (8-11), flags (12-15) and a
signed immediate (16-31); in 5.16 it is the type alone.
"""

from __future__ import annotations

from .types import NONE, WRITE, X86_FLAGS, X86_IMM_REG_ALIASES, X86_REGS, TypeTable, X86Usage

ARCH = "x86_64"
FORMAT = "linux-x86_64"
R_PC32 = 2          # R_X86_64_PC32
R_NAMES = {R_PC32: "R_X86_64_PC32"}
_RSP = 4


def _usage(types: TypeTable, name: str | None) -> X86Usage:
    u = types.usage.get(name or "")
    return u if isinstance(u, X86Usage) else X86Usage()


def kinds(word: list[int], types: TypeTable) -> list[int]:
    """The type number of each entry."""
    return [w & 0xFF for w in word] if types.fields else list(word)


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


def check_word(word: int, types: TypeTable) -> list[str]:
    """Every register, flag or immediate of one entry that its type does not allow."""
    out: list[str] = []
    if not types.fields:
        return out
    kind, reg, flags, imm = _fields(word)
    if flags & ~3:
        out.append(f"unknown flag bits {flags & ~3:#x} (only CLEAR_AX 1, CLEAR_DX 2)")
    name = types.names.get(kind)
    if name is None:
        return out
    usage = _usage(types, name)
    if usage.reg == NONE and reg:
        out.append(f"{name} does not use a register, but reg={X86_REGS[reg]}")
    elif usage.reg == WRITE and reg == _RSP:
        out.append(f"{name} would write %rsp")
    if not usage.imm and imm:
        out.append(f"{name} does not use an immediate, but imm={imm}")
    elif usage.imm and usage.imm_values and imm not in usage.imm_values:
        allowed = ", ".join(map(str, usage.imm_values))
        out.append(f"{name} immediate {imm} is not one of {allowed}")
    return out
