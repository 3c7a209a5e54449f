"""One kernel exception table, read out of a module or an image, as arrays.

Both layouts are 12 bytes: two 32-bit fields relative to their own address
(insn, fixup) and 4 bytes of type and data whose split is the architecture's
(:mod:`.x86_64`, :mod:`.arm64` decode it). Every location is kept as (section, offset)
and, in a linked image, also as an address.

Plain lists, not numpy: a module has tens of entries, and importing numpy
would cost more than reading them; a 100k-entry vmlinux still takes well under
a second of Python (benchmarks/test_kernel.py). They are read in chunks
(:data:`CHUNK` entries), so that a section header claiming millions of entries
costs time for what is printed and one chunk of memory.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Callable, Iterator

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


#: Entries read and checked at a time: a table of millions (a hostile section header)
#: costs one chunk of memory, and verify stops reading once it has enough findings.
CHUNK = 1 << 16


@dataclass
class Columns:
    """Entries [base, base + len) of a table, as columns."""

    base: int
    insn_sec: list[int]        # section index, -1 when it could not be resolved
    insn_off: list[int]        # offset in that section
    fixup_sec: list[int]
    fixup_off: list[int]
    word: list[int]            # the last 4 bytes, unsigned (x86 data; arm64 type | data << 16)
    insn_addr: list[int] | None = None      # 64-bit addresses, linked images only
    fixup_addr: list[int] | None = None

    def __len__(self) -> int:
        return len(self.word)

    def slice(self, start: int, stop: int) -> Columns:
        """Entries [start, stop) of the table (absolute indices inside this chunk)."""
        a, b = start - self.base, stop - self.base

        def cut(col: list[int] | None) -> list[int] | None:
            return None if col is None else col[a:b]
        return Columns(start, self.insn_sec[a:b], self.insn_off[a:b], self.fixup_sec[a:b],
                       self.fixup_off[a:b], self.word[a:b], cut(self.insn_addr),
                       cut(self.fixup_addr))


@dataclass
class KernelTable:
    """The entries of ``__ex_table`` in file order, read a chunk at a time.

    ``read(start, stop)`` gives the columns of entries [start, stop): a module's
    are resolved at once (its relocations say where each field points), a linked
    image's are computed from the section's bytes as they are read, so a table of
    any size costs one chunk of memory.
    """

    arch: str
    linked: bool
    section: Section
    count: int
    read: Callable[[int, int], Columns]
    findings: list[Finding] = field(default_factory=list)   # from reading (relocations)

    def __len__(self) -> int:
        return self.count

    def chunks(self, size: int = CHUNK) -> Iterator[Columns]:
        for start in range(0, self.count, size):
            yield self.read(start, min(self.count, start + size))

    def entry(self, i: int) -> Columns:
        """The one entry i."""
        return self.read(i, i + 1)
