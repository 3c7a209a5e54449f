"""One kernel exception table, read out of a module or an image, as arrays.

Both layouts are 12 bytes: two 32-bit fields relative to their own address
(insn, fixup) and 4 bytes of type and data whose split is the architecture's
(:mod:`.x86_64`, :mod:`.arm64` decode it). Every location is kept as (section, offset)
and, in a linked image, also as an address.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .image import Section

ENTRY_SIZE = 12
#: The raw entry: both fields, then the architecture's 4 bytes as one word.
RAW_DTYPE = np.dtype([("insn", "<i4"), ("fixup", "<i4"), ("word", "<u4")])


@dataclass(frozen=True)
class Finding:
    """One thing wrong with one entry (``index`` -1: with the table as a whole)."""

    index: int
    check: str        # "location", "relocation", "type", "fields", "duplicate", "order"
    message: str

    def as_dict(self) -> dict[str, object]:
        return {"index": self.index, "check": self.check, "message": self.message}


@dataclass
class KernelTable:
    """The entries of ``__ex_table`` in file order."""

    arch: str
    linked: bool
    section: Section
    insn_sec: np.ndarray       # int32 section index, -1 when it could not be resolved
    insn_off: np.ndarray       # int64 offset in that section
    fixup_sec: np.ndarray
    fixup_off: np.ndarray
    word: np.ndarray           # uint32: the last 4 bytes (x86 data; arm64 type | data << 16)
    insn_addr: np.ndarray | None = None     # uint64, linked images only
    fixup_addr: np.ndarray | None = None
    findings: list[Finding] = field(default_factory=list)   # from reading (relocations)

    def __len__(self) -> int:
        return len(self.word)

