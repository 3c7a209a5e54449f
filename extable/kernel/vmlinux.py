"""Linked images (vmlinux: ET_EXEC on x86-64, ET_DYN on arm64).

A field's target is the field's own address plus its value; nothing is
relocated. scripts/sorttable sorts the table by insn address at build time.
Entries are read and computed a chunk at a time (table.CHUNK).
"""

from __future__ import annotations

from bisect import bisect_right
from types import ModuleType

from .image import SHF_ALLOC, SHF_TLS, SHT_NOBITS, KernelImage, Section
from .table import ENTRY_SIZE, RAW_ENTRY, Columns, KernelTable

_MASK = (1 << 64) - 1


def read(image: KernelImage, fmt: ModuleType) -> KernelTable:
    """The image's table, its entries computed a chunk at a time as they are read."""
    sec = image.section("__ex_table")
    assert sec is not None
    count = image.record_count(sec, RAW_ENTRY)
    loaded = sorted((s for s in image.sections if s.flags & SHF_ALLOC and s.size
                     and not (s.flags & SHF_TLS and s.type == SHT_NOBITS)),
                    key=lambda s: s.addr)

    def columns(start: int, stop: int) -> Columns:
        raw = list(RAW_ENTRY.iter_unpack(image.source.pread(ENTRY_SIZE * (stop - start),
                                                            sec.offset + ENTRY_SIZE * start)))
        first = sec.addr + ENTRY_SIZE * start
        # modulo 2**64, exactly as the kernel's pointer arithmetic wraps
        insn = [(f + r[0]) & _MASK for f, r in zip(range(first, 1 << 65, ENTRY_SIZE), raw)]
        fixup = [(f + r[1]) & _MASK for f, r in zip(range(first + 4, 1 << 65, ENTRY_SIZE), raw)]
        insn_sec, insn_off = locate(loaded, insn)
        fixup_sec, fixup_off = locate(loaded, fixup)
        return Columns(start, insn_sec, insn_off, fixup_sec, fixup_off, [r[2] for r in raw],
                       insn, fixup)
    return KernelTable(fmt.ARCH, True, sec, count, columns)


def locate(loaded: list[Section], addr: list[int]) -> tuple[list[int], list[int]]:
    """(section index, offset) of each address in the loaded sections (sorted by
    address); -1 where none holds it."""
    starts = [s.addr for s in loaded]
    ends = [s.addr + s.size for s in loaded]
    secs, offs = [-1] * len(addr), [0] * len(addr)
    i = -1
    for k, a in enumerate(addr):
        if not (i >= 0 and starts[i] <= a < ends[i]):    # neighbours share a section
            i = bisect_right(starts, a) - 1
            if i < 0 or a >= ends[i]:
                i = -1
                continue
        secs[k], offs[k] = loaded[i].index, a - starts[i]
    return secs, offs
