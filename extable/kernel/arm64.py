"""arm64: ``struct exception_table_entry { int insn, fixup; short type, data; }``.

``data`` holds two register numbers, bits 0-4 and 5-9 (31 is xzr); which
registers they are depends on the type (:mod:`.types`).
"""

from __future__ import annotations

import numpy as np

from .types import Arm64Usage, TypeTable

ARCH = "arm64"
FORMAT = "linux-arm64"
R_PC32 = 261        # R_AARCH64_PREL32
R_NAMES = {R_PC32: "R_AARCH64_PREL32"}
XZR = 31


def reg_name(n: int) -> str:
    return "xzr" if n == XZR else f"x{n}"


def kinds(word: np.ndarray, types: TypeTable) -> np.ndarray:
    return (word & 0xFFFF).astype(np.int64)


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


def check_fields(word: np.ndarray, types: TypeTable) -> list[tuple[int, str]]:
    """(index, problem) for data the type's handler would misread."""
    kind, data = word & 0xFFFF, word >> 16
    out: list[tuple[int, str]] = []
    for number, name in types.names.items():
        usage = types.usage.get(name)
        mine = kind == number
        if not isinstance(usage, Arm64Usage) or usage.any_data or not mine.any():
            continue
        if not usage.low:
            out += [(i, f"{name} takes no data, but data={int(data[i]):#x}")
                    for i in np.flatnonzero(mine & (data != 0)).tolist()]
            continue
        out += [(i, f"{name}: data bits 10-15 set ({int(data[i]):#x})")
                for i in np.flatnonzero(mine & (data >> 10 != 0)).tolist()]
        if not usage.xzr_ok:
            for field, shift in ((usage.low, 0), (usage.high, 5)):
                hit = mine & (((data >> shift) & 0x1F) == XZR)
                out += [(i, f"{name}: the {field} register is xzr")
                        for i in np.flatnonzero(hit).tolist()]
    return out
