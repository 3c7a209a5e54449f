"""Modules (ET_REL): the table's fields are zero, ``.rela__ex_table`` says what they are.

Each entry has two relocations, at 12i (insn) and 12i + 4 (fixup), of the
machine's 32-bit PC-relative kind, usually against a section symbol: the
target is (the symbol's section, st_value + addend). Entries are in file
order; the kernel sorts them when it loads the module.
"""

from __future__ import annotations

import struct
from collections import Counter
from types import ModuleType

from ..errors import ExtableError
from .image import (SHN_LORESERVE, SHN_UNDEF, SHT_REL, SHT_RELA, SHT_SYMTAB, SYM, KernelImage,
                    Section, Sym)
from .table import ENTRY_SIZE, RAW_ENTRY, Columns, Finding, KernelTable

#: Elf64_Rela: offset, info (symbol << 32 | type), addend.
RELA = struct.Struct("<QQq")


def read(image: KernelImage, fmt: ModuleType) -> KernelTable:
    """The module's table, with every relocation problem as a finding."""
    sec = image.section("__ex_table")
    assert sec is not None
    raw = image.records(sec, RAW_ENTRY)
    n = len(raw)
    targets = [s for s in image.sections if s.info == sec.index and s.type in (SHT_RELA, SHT_REL)]
    if any(s.type == SHT_REL for s in targets):
        raise image.error("__ex_table has SHT_REL relocations (the kernel uses RELA)")
    sections = [[-1] * n, [-1] * n]
    offsets = [[0] * n, [0] * n]
    findings: list[Finding] = []
    if not targets:
        if n:
            findings.append(Finding(-1, "relocation", "__ex_table has no relocation section: "
                                                      "no entry can be resolved"))
        return _table(fmt, sec, sections, offsets, raw, findings)
    for rsec in targets:
        rela = image.records(rsec, RELA)
        if rsec.link >= len(image.sections):
            raise image.error(f"{rsec.name}: symbol table index {rsec.link} out of range")
        linked = image.sections[rsec.link]
        if linked.type != SHT_SYMTAB:
            raise image.error(f"{rsec.name}: its symbol table (sh_link {rsec.link}) is "
                              f"{linked.name or 'a nameless section'}, not a SHT_SYMTAB")
        symtab: list[Sym] = image.records(linked, SYM)   # type: ignore[assignment]
        findings += _apply(image, fmt, rela, symtab, n, sections, offsets)
    said = {(f.index, name) for f in findings for name in ("insn", "fixup") if name in f.message}
    for field, name in ((0, "insn"), (1, "fixup")):
        findings += [Finding(i, "relocation", f"no relocation for its {name} field")
                     for i, s in enumerate(sections[field]) if s == -1 and (i, name) not in said]
    return _table(fmt, sec, sections, offsets, raw, findings)


def _table(fmt: ModuleType, sec: Section, sections: list[list[int]], offsets: list[list[int]],
           raw: list[tuple[int, ...]], findings: list[Finding]) -> KernelTable:
    whole = Columns(0, sections[0], offsets[0], sections[1], offsets[1], [r[2] for r in raw])
    return KernelTable(fmt.ARCH, False, sec, len(raw), whole.slice, findings)


def _apply(image: KernelImage, fmt: ModuleType, rela: list[tuple[int, ...]], symtab: list[Sym],
           n: int, sections: list[list[int]], offsets: list[list[int]]) -> list[Finding]:
    """Resolve one relocation section into ``sections``/``offsets``; what is wrong, as findings.

    One pass per kind of problem, so findings come out grouped as verify reports them.
    """
    out: list[Finding] = []
    good = []                     # (slot, field offset 0 or 4, symbol, addend)
    for off, info, addend in rela:
        slot, rem = divmod(off, ENTRY_SIZE)
        if off >= ENTRY_SIZE * n or rem not in (0, 4):
            out.append(Finding(slot if off < ENTRY_SIZE * n else -1, "relocation",
                               f"relocation at __ex_table+{off:#x} is not at an insn or fixup "
                               "field"))
        else:
            good.append((slot, rem, info, addend))
    want = fmt.R_NAMES[fmt.R_PC32]
    out += [Finding(slot, "relocation", f"{_field(rem)} relocation type {info & 0xFFFFFFFF}, "
                                        f"expected {want}")
            for slot, rem, info, _a in good if info & 0xFFFFFFFF != fmt.R_PC32]
    good = [g for g in good if g[2] & 0xFFFFFFFF == fmt.R_PC32]
    out += [Finding(slot, "relocation", f"{_field(rem)} relocation names symbol {info >> 32} of "
                                        f"{len(symtab)}")
            for slot, rem, info, _a in good if info >> 32 >= len(symtab)]
    good = [g for g in good if g[2] >> 32 < len(symtab)]
    limit = min(SHN_LORESERVE, len(image.sections))
    resolved = []                 # (slot, rem, section, offset)
    for slot, rem, info, addend in good:
        name_off, _i, _o, shndx, value, _s = symtab[info >> 32]
        if shndx == SHN_UNDEF or shndx >= limit:
            name = _symbol_name(image, name_off)
            out.append(Finding(slot, "location", f"{_field(rem)} refers to {name or 'a symbol'} "
                                                 f"outside the module (section index {shndx})"))
        else:
            # S + A in 64 bits, as the loader computes it, read back as signed
            target = (value + addend) & ((1 << 64) - 1)
            resolved.append((slot, rem, shndx, target - (1 << 64) if target >> 63 else target))
    for field in (0, 1):
        mine = [r for r in resolved if r[1] == 4 * field]
        counts = Counter(r[0] for r in mine)
        out += [Finding(i, "relocation", f"{_field(4 * field)} field has {c} relocations")
                for i, c in sorted(counts.items()) if c > 1]
        for slot, _rem, shndx, target in mine:
            sections[field][slot] = shndx
            offsets[field][slot] = target
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
