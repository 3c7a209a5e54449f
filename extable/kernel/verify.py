"""The checks of ``extable verify`` on a kernel table.

Every insn and fixup inside an executable section; every type known for the
kernel version; the data fields valid for the type; no two entries for one
instruction; a linked image's table sorted by insn, as scripts/sorttable
leaves it (the kernel's binary search depends on it).
"""

from __future__ import annotations

from types import ModuleType
from typing import Callable

from .image import KernelImage
from .table import Finding, KernelTable
from .types import TypeTable

_ORDER = {"relocation": 0, "location": 1, "type": 2, "fields": 3, "duplicate": 4, "order": 5}
Where = Callable[[str, int], str]


def verify(image: KernelImage, table: KernelTable, fmt: ModuleType, types: TypeTable,
           where: Where) -> list[Finding]:
    """Every finding, sorted by entry; ``where(field, i)`` names an entry's insn or fixup."""
    out = list(table.findings)
    out += _locations(image, table, where)
    kinds = fmt.kinds(table.word, types)
    out += [Finding(i, "type", f"unknown type {k} for kernel {types.label}+ ({fmt.ARCH}) at "
                               f"{where('insn', i)}")
            for i, k in enumerate(kinds) if k not in types.names]
    none = {n for n, name in types.names.items() if name == "NONE"}
    out += [Finding(i, "type", f"type NONE at {where('insn', i)}: it fixes nothing")
            for i, k in enumerate(kinds) if k in none]
    out += [Finding(i, "fields", f"{problem} at {where('insn', i)}")
            for i, problem in fmt.check_fields(table.word, types)]
    out += _duplicates(table, where)
    a = table.insn_addr
    if table.linked and a is not None:
        out += [Finding(i, "order", f"insn {where('insn', i)} sorts before entry {i - 1}'s "
                                    f"{where('insn', i - 1)}: the table is not sorted "
                                    "(scripts/sorttable)")
                for i in range(1, len(a)) if a[i] < a[i - 1]]
    out.sort(key=lambda f: (f.index, _ORDER.get(f.check, 9)))
    return out


def _locations(image: KernelImage, table: KernelTable, where: Where) -> list[Finding]:
    out = []
    for field, secs, offs in (("insn", table.insn_sec, table.insn_off),
                              ("fixup", table.fixup_sec, table.fixup_off)):
        if table.linked:
            out += [Finding(i, "location", f"{field} {where(field, i)} lies in no loaded section")
                    for i, s in enumerate(secs) if s < 0]
        out += [Finding(i, "location", f"{field} {where(field, i)} is not in an executable "
                                       "section")
                for i, s in enumerate(secs) if s >= 0 and not image.sections[s].executable]
        for i, (s, off) in enumerate(zip(secs, offs)):
            sec = image.sections[s] if s >= 0 else None
            if sec is not None and sec.executable and not 0 <= off < sec.size:
                out.append(Finding(i, "location", f"{field} {where(field, i)} lies past the end "
                                                  f"of {sec.name}"))
    return out


def _duplicates(table: KernelTable, where: Where) -> list[Finding]:
    first: dict[tuple[int, int], int] = {}
    out = []
    for i, key in enumerate(zip(table.insn_sec, table.insn_off)):
        if key[0] < 0:
            continue
        if key in first:
            out.append(Finding(i, "duplicate", f"insn {where('insn', i)} already has entry "
                                               f"{first[key]}"))
        else:
            first[key] = i
    return out
