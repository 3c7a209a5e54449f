"""The checks of ``extable verify`` on a kernel table.

Every insn and fixup inside an executable section; every type known for the
kernel version; the data fields valid for the type; no two entries for one
instruction; a linked image's table sorted by insn, as scripts/sorttable
leaves it (the kernel's binary search depends on it).
"""

from __future__ import annotations

from collections import defaultdict
from types import ModuleType
from typing import Callable

from .image import KernelImage
from .table import Finding, KernelTable
from .types import TypeTable

_ORDER = {"relocation": 0, "location": 1, "type": 2, "fields": 3, "duplicate": 4, "order": 5}
Where = Callable[[str, int], str]
#: A table of garbage (a hostile file's whole body called __ex_table) has findings by the
#: million; past this many, verify says so and stops instead of filling memory.
MAX_FINDINGS = 10_000


def verify(image: KernelImage, table: KernelTable, fmt: ModuleType, types: TypeTable,
           where: Where, limit: int = MAX_FINDINGS) -> list[Finding]:
    """The findings, entry by entry; ``where(field, i)`` names an entry's insn or fixup."""
    read: dict[int, list[Finding]] = defaultdict(list)
    for f in table.findings:
        read[f.index].append(f)
    out = sorted(read.pop(-1, []), key=lambda f: _ORDER.get(f.check, 9))
    none = {n for n, name in types.names.items() if name == "NONE"}
    kinds = fmt.kinds(table.word, types)
    first: dict[tuple[int, int], int] = {}
    addr = table.insn_addr if table.insn_addr is not None else [0] * len(table)
    problems: dict[int, list[str]] = {}     # by data word: a table has few distinct ones
    sizes = [sec.size if sec.executable else -1 for sec in image.sections]
    names, previous = types.names, 0
    columns = zip(table.insn_sec, table.insn_off, table.fixup_sec, table.fixup_off, kinds,
                  table.word, addr)
    for i, (si, oi, sf, of, kind, word, a) in enumerate(columns):
        if len(out) > limit:
            break
        mine = read.get(i, [])
        if not (si >= 0 and sf >= 0 and 0 <= oi < sizes[si] and 0 <= of < sizes[sf]):
            mine += _locations(image, table, i, where)
        if kind not in names:
            mine.append(Finding(i, "type", f"unknown type {kind} for kernel {types.label}+ "
                                           f"({fmt.ARCH}) at {where('insn', i)}"))
        elif kind in none:
            mine.append(Finding(i, "type", f"type NONE at {where('insn', i)}: it fixes nothing"))
        if word not in problems:
            problems[word] = fmt.check_word(word, types)
        if problems[word]:
            mine += [Finding(i, "fields", f"{problem} at {where('insn', i)}")
                     for problem in problems[word]]
        if si >= 0:
            seen = first.setdefault((si, oi), i)
            if seen != i:
                mine.append(Finding(i, "duplicate", f"insn {where('insn', i)} already has entry "
                                                    f"{seen}"))
        if a < previous:
            mine.append(Finding(i, "order", f"insn {where('insn', i)} sorts before entry "
                                            f"{i - 1}'s {where('insn', i - 1)}: the table is not "
                                            "sorted (scripts/sorttable)"))
        previous = a
        if mine:
            out += sorted(mine, key=lambda f: _ORDER.get(f.check, 9))
    if len(out) > limit:
        at = out[limit].index
        del out[limit:]
        place = f"at entry {at} of {len(table)}" if at >= 0 else "before the first entry"
        out.append(Finding(-1, "limit", f"stopped after {limit} findings, {place}"))
    return out


def _locations(image: KernelImage, table: KernelTable, i: int, where: Where) -> list[Finding]:
    out = []
    for field, secs, offs in (("insn", table.insn_sec, table.insn_off),
                              ("fixup", table.fixup_sec, table.fixup_off)):
        s = secs[i]
        if s < 0:
            if table.linked:
                out.append(Finding(i, "location", f"{field} {where(field, i)} lies in no loaded "
                                                  "section"))
            continue
        sec = image.sections[s]
        if not sec.executable:
            out.append(Finding(i, "location", f"{field} {where(field, i)} is not in an "
                                              "executable section"))
        elif not 0 <= offs[i] < sec.size:
            side = "before the start" if offs[i] < 0 else "past the end"
            out.append(Finding(i, "location", f"{field} {where(field, i)} lies {side} of "
                                              f"{sec.name}"))
    return out
