"""Linked images (vmlinux: ET_EXEC on x86-64, ET_DYN on arm64).

A field's target is the field's own address plus its value; nothing is
relocated. scripts/sorttable sorts the table by insn address at build time.
"""

from __future__ import annotations

from bisect import bisect_right
from types import ModuleType

from .image import SHF_ALLOC, SHF_TLS, SHT_NOBITS, KernelImage
from .table import ENTRY_SIZE, RAW_ENTRY, KernelTable

_MASK = (1 << 64) - 1


def read(image: KernelImage, fmt: ModuleType) -> KernelTable:
    sec = image.section("__ex_table")
    assert sec is not None
    raw = image.records(sec, RAW_ENTRY)
    # modulo 2**64, exactly as the kernel's pointer arithmetic wraps
    insn = [(field + r[0]) & _MASK for field, r in zip(range(sec.addr, 1 << 65, ENTRY_SIZE), raw)]
    fixup = [(field + r[1]) & _MASK
             for field, r in zip(range(sec.addr + 4, 1 << 65, ENTRY_SIZE), raw)]
    insn_sec, insn_off = locate(image, insn)
    fixup_sec, fixup_off = locate(image, fixup)
    return KernelTable(fmt.ARCH, True, sec, insn_sec, insn_off, fixup_sec, fixup_off,
                       [r[2] for r in raw], insn, fixup)


def locate(image: KernelImage, addr: list[int]) -> tuple[list[int], list[int]]:
    """(section index, offset) of each address; -1 where no loaded section holds it."""
    loaded = sorted((s for s in image.sections if s.flags & SHF_ALLOC and s.size
                     and not (s.flags & SHF_TLS and s.type == SHT_NOBITS)),
                    key=lambda s: s.addr)
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
