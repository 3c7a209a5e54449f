"""Modules (ET_REL): the table's fields are zero, ``.rela__ex_table`` says what they are.

Each entry has two relocations, at 12i (insn) and 12i + 4 (fixup), of the
machine's 32-bit PC-relative kind, usually against a section symbol: the
target is (the symbol's section, st_value + addend). Entries are in file
order; the kernel sorts them when it loads the module.
"""

from __future__ import annotations

from types import ModuleType

import numpy as np

from ..errors import ExtableError
from .image import (SHN_LORESERVE, SHN_UNDEF, SHT_REL, SHT_RELA, SHT_SYMTAB, SYM_DTYPE, KernelImage,
                    Section)
from .table import ENTRY_SIZE, RAW_DTYPE, Finding, KernelTable

RELA_DTYPE = np.dtype([("offset", "<u8"), ("info", "<u8"), ("addend", "<i8")])


def read(image: KernelImage, fmt: ModuleType) -> KernelTable:
    """The module's table, with every relocation problem as a finding."""
    sec = image.section("__ex_table")
    assert sec is not None
    raw = image.array(sec, RAW_DTYPE)
    n = len(raw)
    targets = [s for s in image.sections if s.info == sec.index and s.type in (SHT_RELA, SHT_REL)]
    if any(s.type == SHT_REL for s in targets):
        raise image.error("__ex_table has SHT_REL relocations (the kernel uses RELA)")
    sections = [np.full(n, -1, np.int32), np.full(n, -1, np.int32)]
    offsets = [np.zeros(n, np.int64), np.zeros(n, np.int64)]
    findings: list[Finding] = []
    if not targets:
        if n:
            findings.append(Finding(-1, "relocation", "__ex_table has no relocation section: "
                                                      "no entry can be resolved"))
        return _table(fmt, sec, sections, offsets, raw, findings)
    for rsec in targets:
        rela = image.array(rsec, RELA_DTYPE)
        if rsec.link >= len(image.sections):
            raise image.error(f"{rsec.name}: symbol table index {rsec.link} out of range")
        linked = image.sections[rsec.link]
        if linked.type != SHT_SYMTAB:
            raise image.error(f"{rsec.name}: its symbol table (sh_link {rsec.link}) is "
                              f"{linked.name or 'a nameless section'}, not a SHT_SYMTAB")
        symtab = image.array(linked, SYM_DTYPE)
        findings += _apply(image, fmt, rela, symtab, n, sections, offsets)
    for field, name in ((0, "insn"), (1, "fixup")):
        for i in np.flatnonzero(sections[field] == -1).tolist():
            if not any(f.index == i and name in f.message for f in findings):
                findings.append(Finding(i, "relocation", f"no relocation for its {name} field"))
    return _table(fmt, sec, sections, offsets, raw, findings)


def _table(fmt: ModuleType, sec: Section, sections: list[np.ndarray], offsets: list[np.ndarray],
           raw: np.ndarray, findings: list[Finding]) -> KernelTable:
    return KernelTable(fmt.ARCH, False, sec, sections[0], offsets[0], sections[1], offsets[1],
                       raw["word"].copy(), findings=findings)


def _apply(image: KernelImage, fmt: ModuleType, rela: np.ndarray, symtab: np.ndarray, n: int,
           sections: list[np.ndarray], offsets: list[np.ndarray]) -> list[Finding]:
    out: list[Finding] = []
    # r_offset is unsigned: as int64 an offset of 2**64 - 12 would be slot -1, the last entry
    inside = rela["offset"] < np.uint64(ENTRY_SIZE * n)
    off = np.where(inside, rela["offset"], 0).astype(np.int64)
    sym = (rela["info"] >> np.uint64(32)).astype(np.int64)
    rtype = (rela["info"] & np.uint64(0xFFFFFFFF)).astype(np.int64)
    slot, rem = off // ENTRY_SIZE, off % ENTRY_SIZE
    good = ((rem == 0) | (rem == 4)) & inside
    for j in np.flatnonzero(~good).tolist():
        where = int(slot[j]) if inside[j] else -1
        out.append(Finding(where, "relocation", f"relocation at __ex_table+"
                                                f"{int(rela['offset'][j]):#x} is not at an insn "
                                                "or fixup field"))
    for j in np.flatnonzero(good & (rtype != fmt.R_PC32)).tolist():
        want = fmt.R_NAMES[fmt.R_PC32]
        out.append(Finding(int(slot[j]), "relocation", f"{_field(rem[j])} relocation type "
                                                       f"{int(rtype[j])}, expected {want}"))
    good &= rtype == fmt.R_PC32
    bad_sym = good & (sym >= len(symtab))
    for j in np.flatnonzero(bad_sym).tolist():
        out.append(Finding(int(slot[j]), "relocation",
                           f"{_field(rem[j])} relocation names symbol {int(sym[j])} of "
                           f"{len(symtab)}"))
    good &= ~bad_sym
    idx = np.flatnonzero(good)
    s = symtab[sym[idx]]
    shndx = s["shndx"].astype(np.int64)
    target = s["value"].astype(np.int64) + rela["addend"][idx]
    undefined = (shndx == SHN_UNDEF) | (shndx >= min(SHN_LORESERVE, len(image.sections)))
    for k in np.flatnonzero(undefined).tolist():
        j = int(idx[k])
        name = _symbol_name(image, int(s["name"][k]))
        out.append(Finding(int(slot[j]), "location",
                           f"{_field(rem[j])} refers to {name or 'a symbol'} outside the module "
                           f"(section index {int(shndx[k])})"))
    keep = ~undefined
    idx, shndx, target = idx[keep], shndx[keep], target[keep]
    for field in (0, 1):
        mine = rem[idx] == 4 * field
        where = slot[idx][mine]
        counts = np.bincount(where, minlength=n)
        for i in np.flatnonzero(counts > 1).tolist():
            out.append(Finding(i, "relocation", f"{_field(4 * field)} field has "
                                                f"{int(counts[i])} relocations"))
        sections[field][where] = shndx[mine]
        offsets[field][where] = target[mine]
    return out


def _field(rem: int) -> str:
    return "insn" if rem == 0 else "fixup"


def _symbol_name(image: KernelImage, name_off: int) -> str | None:
    if image.symtab is None or name_off == 0:
        return None
    try:
        return image.cstring(image.symtab[1], name_off)
    except ExtableError:
        return None
