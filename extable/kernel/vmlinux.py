"""Linked images (vmlinux: ET_EXEC on x86-64, ET_DYN on arm64).

A field's target is the field's own address plus its value; nothing is
relocated. scripts/sorttable sorts the table by insn address at build time.
"""

from __future__ import annotations

from types import ModuleType

import numpy as np

from .image import SHF_ALLOC, SHF_TLS, SHT_NOBITS, KernelImage
from .table import ENTRY_SIZE, RAW_DTYPE, KernelTable


def read(image: KernelImage, fmt: ModuleType) -> KernelTable:
    sec = image.section("__ex_table")
    assert sec is not None
    raw = image.array(sec, RAW_DTYPE)
    field = np.uint64(sec.addr) + np.arange(len(raw), dtype=np.uint64) * np.uint64(ENTRY_SIZE)
    # uint64 arithmetic wraps, exactly as the kernel's pointer arithmetic does
    insn = field + raw["insn"].astype(np.int64).view(np.uint64)
    fixup = field + np.uint64(4) + raw["fixup"].astype(np.int64).view(np.uint64)
    insn_sec, insn_off = locate(image, insn)
    fixup_sec, fixup_off = locate(image, fixup)
    return KernelTable(fmt.ARCH, True, sec, insn_sec, insn_off, fixup_sec, fixup_off,
                       raw["word"].copy(), insn, fixup)


def locate(image: KernelImage, addr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(section index, offset) of each address; -1 where no loaded section holds it."""
    loaded = sorted((s for s in image.sections if s.flags & SHF_ALLOC and s.size
                     and not (s.flags & SHF_TLS and s.type == SHT_NOBITS)),
                    key=lambda s: s.addr)
    if not loaded:
        return np.full(len(addr), -1, np.int32), np.zeros(len(addr), np.int64)
    starts = np.array([s.addr for s in loaded], dtype=np.uint64)
    ends = starts + np.array([s.size for s in loaded], dtype=np.uint64)
    index = np.array([s.index for s in loaded], dtype=np.int32)
    i = np.searchsorted(starts, addr, side="right").astype(np.int64) - 1
    safe = np.maximum(i, 0)
    inside = (i >= 0) & (addr < ends[safe])
    sec = np.where(inside, index[safe], -1).astype(np.int32)
    off = np.where(inside, (addr - starts[safe]).astype(np.int64), 0)
    return sec, off
