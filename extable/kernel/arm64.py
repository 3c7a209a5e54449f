"""arm64: ``struct exception_table_entry { int insn, fixup; short type, data; }``.

``data`` holds two register numbers, bits 0-4 and 5-9 (31 is xzr); which
registers they are depends on the type (:mod:`.types`).
"""

from __future__ import annotations

from .types import Arm64Usage, TypeTable

ARCH = "arm64"
FORMAT = "linux-arm64"
R_PC32 = 261        # R_AARCH64_PREL32
R_NAMES = {R_PC32: "R_AARCH64_PREL32"}
XZR = 31


def reg_name(n: int) -> str:
    return "xzr" if n == XZR else f"x{n}"


def kinds(word: list[int], types: TypeTable) -> list[int]:
    """The type number of each entry."""
    return [w & 0xFFFF for w in word]


def decode(word: int, types: TypeTable) -> dict[str, object]:
    kind, data = word & 0xFFFF, word >> 16
    name = types.name(kind)
    usage = types.usage.get(name or "")
    out: dict[str, object] = {"type": name, "type_number": kind, "data": data}
    if isinstance(usage, Arm64Usage) and usage.low and usage.high:
        out["registers"] = {usage.low: reg_name(data & 0x1F),
                            usage.high: reg_name((data >> 5) & 0x1F)}
    return out


def text(d: dict[str, object]) -> str:
    name = str(d["type"] or f"type {d['type_number']}?")
    regs = d.get("registers")
    if isinstance(regs, dict):
        return name + " " + " ".join(f"{k}={v}" for k, v in regs.items())
    return name + (f" data={d['data']:#x}" if d["data"] else "")


def check_word(word: int, types: TypeTable) -> list[str]:
    """What in one entry's data the type's handler would misread."""
    kind, data = word & 0xFFFF, word >> 16
    name = types.names.get(kind)
    usage = types.usage.get(name or "")
    if not isinstance(usage, Arm64Usage) or usage.any_data:
        return []
    if not usage.low:
        return [f"{name} takes no data, but data={data:#x}"] if data else []
    out = [f"{name}: data bits 10-15 set ({data:#x})"] if data >> 10 else []
    if not usage.xzr_ok:
        out += [f"{name}: the {field} register is xzr"
                for field, shift in ((usage.low, 0), (usage.high, 5))
                if (data >> shift) & 0x1F == XZR]
    return out
