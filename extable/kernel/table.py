"""One kernel exception table, read out of a module or an image, as arrays.

Both layouts are 12 bytes: two 32-bit fields relative to their own address
(insn, fixup) and 4 bytes of type and data whose split is the architecture's
(:mod:`.x86_64`, :mod:`.arm64` decode it). Every location is kept as (section, offset)
and, in a linked image, also as an address.

Plain lists, not numpy: a module has tens of entries, and importing numpy
would cost more than reading them; a 100k-entry vmlinux still takes well under
a second of Python (benchmarks/test_kernel.py).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from .image import Section

ENTRY_SIZE = 12
#: The raw entry: both fields, then the architecture's 4 bytes as one word.
RAW_ENTRY = struct.Struct("<iiI")


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
    insn_sec: list[int]        # section index, -1 when it could not be resolved
    insn_off: list[int]        # offset in that section
    fixup_sec: list[int]
    fixup_off: list[int]
    word: list[int]            # the last 4 bytes, unsigned (x86 data; arm64 type | data << 16)
    insn_addr: list[int] | None = None      # 64-bit addresses, linked images only
    fixup_addr: list[int] | None = None
    findings: list[Finding] = field(default_factory=list)   # from reading (relocations)

    def __len__(self) -> int:
        return len(self.word)

