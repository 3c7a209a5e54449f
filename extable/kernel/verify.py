"""The checks of ``extable verify`` on a kernel table, all vectorised.

Every insn and fixup inside an executable section; every type known for the
kernel version; the data fields valid for the type; no two entries for one
instruction; a linked image's table sorted by insn, as scripts/sorttable
leaves it (the kernel's binary search depends on it).
"""

from __future__ import annotations

from types import ModuleType
from typing import Callable

import numpy as np

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
    kind = fmt.kinds(table.word, types)
    known = np.array(sorted(types.names), dtype=np.int64)
    for i in np.flatnonzero(~np.isin(kind, known)).tolist():
        out.append(Finding(i, "type", f"unknown type {int(kind[i])} for kernel {types.label}+ "
                                      f"({fmt.ARCH}) at {where('insn', i)}"))
    none = [n for n, name in types.names.items() if name == "NONE"]
    for i in np.flatnonzero(np.isin(kind, none)).tolist():
        out.append(Finding(i, "type", f"type NONE at {where('insn', i)}: it fixes nothing"))
    for i, problem in fmt.check_fields(table.word, types):
        out.append(Finding(i, "fields", f"{problem} at {where('insn', i)}"))
    out += _duplicates(table, where)
    if table.linked and table.insn_addr is not None and len(table) > 1:
        a = table.insn_addr
        for i in np.flatnonzero(a[1:] < a[:-1]).tolist():
            out.append(Finding(i + 1, "order", f"insn {where('insn', i + 1)} sorts before entry "
                                               f"{i}'s {where('insn', i)}: the table is not "
                                               "sorted (scripts/sorttable)"))
    out.sort(key=lambda f: (f.index, _ORDER.get(f.check, 9)))
    return out


def _locations(image: KernelImage, table: KernelTable, where: Where) -> list[Finding]:
    out = []
    executable = np.array([s.executable for s in image.sections] + [False])
    sizes = np.array([s.size for s in image.sections] + [0], dtype=np.int64)
    for field, sec, off in (("insn", table.insn_sec, table.insn_off),
                            ("fixup", table.fixup_sec, table.fixup_off)):
        resolved = sec >= 0
        if table.linked:
            for i in np.flatnonzero(~resolved).tolist():
                out.append(Finding(i, "location", f"{field} {where(field, i)} lies in no "
                                                  "loaded section"))
        s = np.where(resolved, sec, len(image.sections))
        for i in np.flatnonzero(resolved & ~executable[s]).tolist():
            out.append(Finding(i, "location", f"{field} {where(field, i)} is not in an "
                                              "executable section"))
        for i in np.flatnonzero(resolved & executable[s] & ((off < 0) | (off >= sizes[s]))
                                ).tolist():
            out.append(Finding(i, "location", f"{field} {where(field, i)} lies past the end "
                                              f"of {image.sections[int(sec[i])].name}"))
    return out


def _duplicates(table: KernelTable, where: Where) -> list[Finding]:
    resolved = np.flatnonzero(table.insn_sec >= 0)
    key = (table.insn_sec[resolved].astype(np.uint64) << np.uint64(44)) | (
        table.insn_off[resolved].astype(np.uint64) & np.uint64((1 << 44) - 1))
    order = np.argsort(key, kind="stable")
    k = key[order]
    out = []
    for j in np.flatnonzero(k[1:] == k[:-1]).tolist():
        first, again = int(resolved[order[j]]), int(resolved[order[j + 1]])
        out.append(Finding(again, "duplicate", f"insn {where('insn', again)} already has "
                                               f"entry {first}"))
    return out
