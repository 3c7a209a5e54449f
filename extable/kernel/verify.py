"""The checks of ``extable verify`` on a kernel table.

Every insn and fixup inside an executable section; every type known for the
kernel version; the data fields valid for the type; no two entries for one
instruction; a linked image's table sorted by insn, as scripts/sorttable
leaves it (the kernel's binary search depends on it). Read a chunk at a time:
a table of millions of entries (a hostile section header) stops at the
findings limit having read little of it.
"""

from __future__ import annotations

from collections import defaultdict
from types import ModuleType
from typing import Callable

from .image import KernelImage
from .table import Columns, Finding, KernelTable
from .types import TypeTable

_ORDER = {"relocation": 0, "location": 1, "type": 2, "fields": 3, "duplicate": 4, "order": 5}
Where = Callable[[Columns, str, int], str]
#: A table of garbage (a hostile file's whole body called __ex_table) has findings by the
#: million; past this many, verify says so and stops reading instead of filling memory.
MAX_FINDINGS = 10_000


def verify(image: KernelImage, table: KernelTable, fmt: ModuleType, types: TypeTable,
           where: Where, limit: int = MAX_FINDINGS) -> list[Finding]:
    """The findings, entry by entry, a chunk of the table at a time; ``where(chunk, field,
    j)`` names the insn or fixup of the chunk's entry j.

    Duplicates: a module's entries are in any order, so every insn is remembered (a
    module's table is small); a linked image's must be sorted, so a duplicate is its
    neighbour, and memory stays one chunk whatever the table's size (an unsorted image
    has its order finding first).
    """
    read: dict[int, list[Finding]] = defaultdict(list)
    for f in table.findings:
        read[f.index].append(f)
    out = sorted(read.pop(-1, []), key=lambda f: _ORDER.get(f.check, 9))
    none = {n for n, name in types.names.items() if name == "NONE"}
    first: dict[tuple[int, int], int] = {}
    problems: dict[int, list[str]] = {}     # by data word: a table has few distinct ones
    sizes = [sec.size if sec.executable else -1 for sec in image.sections]
    names, previous, previous_key = types.names, 0, (-1, -1)
    for chunk in table.chunks():
        if len(out) > limit:
            break
        kinds = fmt.kinds(chunk.word, types)
        addr = chunk.insn_addr if chunk.insn_addr is not None else [0] * len(chunk)
        columns = zip(chunk.insn_sec, chunk.insn_off, chunk.fixup_sec, chunk.fixup_off, kinds,
                      chunk.word, addr)
        for j, (si, oi, sf, of, kind, word, a) in enumerate(columns):
            if len(out) > limit:
                break
            i = chunk.base + j

            def at(field: str = "insn", j: int = j) -> str:
                return where(chunk, field, j)

            mine = read.get(i, [])
            if not (si >= 0 and sf >= 0 and 0 <= oi < sizes[si] and 0 <= of < sizes[sf]):
                mine += _locations(image, table, chunk, j, where)
            if kind not in names:
                mine.append(Finding(i, "type", f"unknown type {kind} for kernel {types.label}+ "
                                               f"({fmt.ARCH}) at {at()}"))
            elif kind in none:
                mine.append(Finding(i, "type", f"type NONE at {at()}: it fixes nothing"))
            if word not in problems:
                problems[word] = fmt.check_word(word, types)
            if problems[word]:
                mine += [Finding(i, "fields", f"{problem} at {at()}")
                         for problem in problems[word]]
            if si >= 0:
                if table.linked:
                    if (si, oi) == previous_key:
                        mine.append(Finding(i, "duplicate", f"insn {at()} already has entry "
                                                            f"{i - 1}"))
                else:
                    seen = first.setdefault((si, oi), i)
                    if seen != i:
                        mine.append(Finding(i, "duplicate", f"insn {at()} already has entry "
                                                            f"{seen}"))
            previous_key = (si, oi)
            if a < previous:
                before = where(table.entry(i - 1), "insn", 0)
                mine.append(Finding(i, "order", f"insn {at()} sorts before entry {i - 1}'s "
                                                f"{before}: the table is not sorted "
                                                "(scripts/sorttable)"))
            previous = a
            if mine:
                out += sorted(mine, key=lambda f: _ORDER.get(f.check, 9))
    if len(out) > limit:
        stop = out[limit].index
        del out[limit:]
        place = f"at entry {stop} of {len(table)}" if stop >= 0 else "before the first entry"
        out.append(Finding(-1, "limit", f"stopped after {limit} findings, {place}"))
    return out


def _locations(image: KernelImage, table: KernelTable, chunk: Columns, j: int,
               where: Where) -> list[Finding]:
    out = []
    i = chunk.base + j
    for field, secs, offs in (("insn", chunk.insn_sec, chunk.insn_off),
                              ("fixup", chunk.fixup_sec, chunk.fixup_off)):
        s = secs[j]
        if s < 0:
            if table.linked:
                out.append(Finding(i, "location", f"{field} {where(chunk, field, j)} lies in "
                                                  "no loaded section"))
            continue
        sec = image.sections[s]
        if not sec.executable:
            out.append(Finding(i, "location", f"{field} {where(chunk, field, j)} is not in an "
                                              "executable section"))
        elif not 0 <= offs[j] < sec.size:
            side = "before the start" if offs[j] < 0 else "past the end"
            out.append(Finding(i, "location", f"{field} {where(chunk, field, j)} lies {side} "
                                              f"of {sec.name}"))
    return out
