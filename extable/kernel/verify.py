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
    addr = table.insn_addr if table.linked else None
    problems: dict[int, list[str]] = {}     # by data word: a table has few distinct ones
    sizes = [sec.size if sec.executable else -1 for sec in image.sections]
    for i in range(len(table)):
        if len(out) > limit:
            break
        mine = read.get(i, [])
        si, sf = table.insn_sec[i], table.fixup_sec[i]
        if not (si >= 0 and sf >= 0 and 0 <= table.insn_off[i] < sizes[si]
                and 0 <= table.fixup_off[i] < sizes[sf]):
            mine += _locations(image, table, i, where)
        if kinds[i] not in types.names:
            mine.append(Finding(i, "type", f"unknown type {kinds[i]} for kernel {types.label}+ "
                                           f"({fmt.ARCH}) at {where('insn', i)}"))
        elif kinds[i] in none:
            mine.append(Finding(i, "type", f"type NONE at {where('insn', i)}: it fixes nothing"))
        word = table.word[i]
        if word not in problems:
            problems[word] = fmt.check_word(word, types)
        mine += [Finding(i, "fields", f"{problem} at {where('insn', i)}")
                 for problem in problems[word]]
        key = (table.insn_sec[i], table.insn_off[i])
        if key[0] >= 0:
            if key in first:
                mine.append(Finding(i, "duplicate", f"insn {where('insn', i)} already has entry "
                                                    f"{first[key]}"))
            else:
                first[key] = i
        if addr is not None and i and addr[i] < addr[i - 1]:
            mine.append(Finding(i, "order", f"insn {where('insn', i)} sorts before entry "
                                            f"{i - 1}'s {where('insn', i - 1)}: the table is not "
                                            "sorted (scripts/sorttable)"))
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
