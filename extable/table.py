"""The compiled table and its binary form (docs/FORMAT.md).

    header (48 bytes) | entries (16 bytes each, sorted by start) | descriptors (16 bytes each) | names

Version 2, written only when the table has ``unwind`` entries, adds a 24-byte
unwind header after the header and the unwind rows (:mod:`extable.unwind`)
after the descriptors; a table without them is version 1, byte for byte.

Every address is relative to the module's load base (the value the dynamic
linker adds to link-time addresses), so nothing needs relocating. A runtime
finds the base from the table itself: ``base = (uintptr_t)header - self_vaddr``.

With numpy, ``Table.entries`` is a structured array (``ENTRY_DTYPE``) and the
checks are vectorised; without it (``pip install mcsafe``, no extras) it is a
list of ``(start, end, fixup, data)`` tuples and the same checks run as loops,
with the same results and messages. ``Table.rows()`` gives the tuples either way.
"""

from __future__ import annotations

import bisect
import struct
from dataclasses import dataclass, field
from typing import Any

try:
    import numpy as np
except ModuleNotFoundError as _exc:
    if _exc.name != "numpy":
        raise
    np = None  # type: ignore[assignment]

from . import unwind as unwind_rows
from .errors import CheckFailed, ExtableError
from .model import (DATA_EXTENDED, DATA_IMM_SHIFT, DATA_TYPE_MASK, Handler, Kind, Side,
                    descriptor_index)
from .unwind import Unwind

#: The section ``extable build`` writes and dump/verify/lookup read unless told otherwise.
DEFAULT_SECTION = "extable_table"
MAGIC = b"EXTABLE\0"
VERSION = 1
VERSION_UNWIND = 2         # with unwind rows
FLAG_LOADED = 0x1          # the table lies in a loaded section at self_vaddr

HEADER = struct.Struct("<8sHHIIIIIIIQ")
ENTRY = struct.Struct("<IIII")             # start, end, fixup, data
ENTRY_DTYPE = None if np is None else np.dtype(
    [("start", "<u4"), ("end", "<u4"), ("fixup", "<u4"), ("data", "<u4")])
DESC = struct.Struct("<BBBBBBBxiI")
ALIGN = 8

assert HEADER.size == 48 and ENTRY.size == 16 and DESC.size == 16


@dataclass
class Table:
    """A sorted, merged exception table for one module."""

    machine: int
    entries: Any            # sorted by start: ENTRY_DTYPE array, or tuples without numpy
    handlers: list[Handler] = field(default_factory=list)
    flags: int = 0
    self_vaddr: int = 0
    unwind: Unwind | None = None             # the rows of the unwind entries, if any

    def __len__(self) -> int:
        return len(self.entries)

    def rows(self) -> list[tuple[int, int, int, int]]:
        """The entries as (start, end, fixup, data) tuples of plain ints."""
        return list(self.entries) if np is None else self.entries.tolist()

    def rows_at(self, i: int) -> tuple[int, int, int, int]:
        """Entry i as (start, end, fixup, data) plain ints."""
        return tuple(int(v) for v in self.entries[i])  # type: ignore[return-value]

    def kinds(self) -> Any:
        """Each entry's handler kind: its descriptor's, or a classic word's type (u8)."""
        if np is None:
            return [self.kind_of(e[3]) for e in self.entries]
        data = self.entries["data"]
        kinds = (data & DATA_TYPE_MASK).astype(np.uint8)
        ext = (data & DATA_EXTENDED) != 0
        if ext.any():
            by_index = np.array([int(h.kind) for h in self.handlers] or [0], np.uint8)
            index = np.minimum(data[ext] >> DATA_IMM_SHIFT, max(len(self.handlers) - 1, 0))
            kinds[ext] = by_index[index]
        return kinds

    def kind_of(self, data: int) -> int:
        """The handler kind of one data word (as kinds() computes it for every entry)."""
        if not data & DATA_EXTENDED:
            return data & DATA_TYPE_MASK
        index = min(data >> DATA_IMM_SHIFT, max(len(self.handlers) - 1, 0))
        return int(self.handlers[index].kind) if self.handlers else 0

    def unwinding(self) -> Any:
        """Which entries are ``unwind`` entries (a boolean mask; a list without numpy)."""
        if np is None:
            return [k == Kind.UNWIND for k in self.kinds()]
        return self.kinds() == Kind.UNWIND

    def unwinding_flags(self) -> list[bool]:
        """unwinding() as a list of bools."""
        flags = self.unwinding()
        return flags if np is None else flags.tolist()

    def lookup(self, address: int) -> int | None:
        """Index of the entry whose [start, end) covers address, or None."""
        if np is None:
            i = bisect.bisect_right(self.entries, address, key=lambda e: e[0]) - 1
            return i if i >= 0 and address < self.entries[i][1] else None
        starts = self.entries["start"]
        i = int(np.searchsorted(starts, address, side="right")) - 1
        if i >= 0 and address < int(self.entries["end"][i]):
            return i
        return None

    def handler_of(self, data: int) -> Handler | None:
        index = descriptor_index(data)
        return self.handlers[index] if index is not None and index < len(self.handlers) else None


def encoded_size(table: Table) -> int:
    """The size of the table's bytes."""
    return len(encode(table))


def encode(table: Table) -> bytes:
    """The table's bytes, deterministic for equal tables."""
    if np is None:
        entry_bytes = b"".join(ENTRY.pack(*e) for e in table.entries)
    else:
        entry_bytes = np.ascontiguousarray(table.entries, dtype=ENTRY_DTYPE).tobytes()
    names = bytearray()
    descs = bytearray()
    for h in table.handlers:
        descs += DESC.pack(h.kind, h.flags, h.side, h.reg, h.src_reg, h.dst_reg, h.rec_reg,
                           h.imm, len(names))
        names += h.name.encode() + b"\0"
    has_unwind = table.unwind is not None and len(table.unwind)
    entries_off = HEADER.size + (unwind_rows.HEADER.size if has_unwind else 0)
    descs_off = entries_off + len(entry_bytes)
    parts = [entry_bytes, bytes(descs)]
    unwind_header = b""
    end = descs_off + len(descs)
    if has_unwind:
        assert table.unwind is not None
        ips, idx, rows = unwind_rows.encode(table.machine, table.unwind)
        ips_off = _align(end)
        idx_off = ips_off + len(ips)
        rows_off = _align(idx_off + len(idx))
        parts += [b"\0" * (ips_off - end), ips, idx, b"\0" * (rows_off - idx_off - len(idx)),
                  rows]
        end = rows_off + len(rows)
        unwind_header = unwind_rows.HEADER.pack(
            len(table.unwind), len(table.unwind.rows), ips_off, idx_off, rows_off,
            unwind_rows.row_struct(table.machine).size)
    strings_off = end
    header = HEADER.pack(MAGIC, VERSION_UNWIND if has_unwind else VERSION, table.machine,
                         table.flags, len(table.entries), len(table.handlers), entries_off,
                         descs_off, strings_off, len(names), table.self_vaddr)
    blob = b"".join((header, unwind_header, *parts, bytes(names)))
    return blob + b"\0" * (_align(len(blob)) - len(blob))


def is_table(blob: bytes) -> bool:
    """Whether blob starts like a table (a reservation that was never filled does not)."""
    return blob[:len(MAGIC)] == MAGIC


def decode(blob: bytes, path: str | None = None) -> Table:
    """Parse and check a table: bounds, sorted, non-overlapping, descriptors valid.

    Raises ExtableError for bytes that are not a table, CheckFailed for a table
    whose contents are inconsistent.
    """
    if len(blob) < HEADER.size or not is_table(blob):
        raise ExtableError("no exception table (bad magic)", path)
    (_magic, version, machine, flags, nentries, ndescs, entries_off, descs_off,
     strings_off, strings_size, self_vaddr) = HEADER.unpack_from(blob)
    if version not in (VERSION, VERSION_UNWIND):
        raise ExtableError(f"table version {version} is not supported (need {VERSION} or "
                           f"{VERSION_UNWIND})", path)
    if (entries_off + 16 * nentries > len(blob) or descs_off + DESC.size * ndescs > len(blob)
            or strings_off + strings_size > len(blob) or entries_off % 4):
        raise ExtableError("table is truncated: counts and offsets exceed its size", path)
    if np is None:
        entries: Any = list(ENTRY.iter_unpack(blob[entries_off:entries_off + 16 * nentries]))
    else:
        entries = np.frombuffer(blob, ENTRY_DTYPE, count=nentries, offset=entries_off).copy()
    strings = blob[strings_off:strings_off + strings_size]
    handlers = []
    for i in range(ndescs):
        (kind, hflags, side, reg, src, dst, rec, imm, name_off) = DESC.unpack_from(
            blob, descs_off + i * DESC.size)
        if kind not in Kind._value2member_map_ or side not in Side._value2member_map_:
            raise CheckFailed(f"descriptor {i} has unknown kind {kind} or side {side}", path)
        end = strings.find(b"\0", name_off)
        if name_off >= len(strings) or end < 0:
            raise CheckFailed(f"descriptor {i} name offset {name_off} out of range", path)
        handlers.append(Handler(Kind(kind), reg, src, dst, rec, Side(side), hflags, imm,
                                strings[name_off:end].decode("utf-8", "replace")))
    unwind = None
    if version == VERSION_UNWIND:
        if len(blob) < HEADER.size + unwind_rows.HEADER.size:
            raise ExtableError("table is truncated: no room for its unwind header", path)
        unwind = unwind_rows.decode(machine, blob, HEADER.size, path)
    table = Table(machine, entries, handlers, flags, self_vaddr, unwind)
    check_order(table, path)
    check_unwind(table, path)
    return table


def check_unwind(table: Table, path: str | None = None) -> None:
    """The unwind entries and their rows agree (extable.unwind.check); an unwind entry
    has no landing pad (its fixup is 0)."""
    if np is None:
        return _check_unwind_rows(table, path)
    mask = table.unwinding()
    e = table.entries[mask]
    if len(e) and int(e["fixup"].max()):
        i = int(np.flatnonzero(mask)[int(np.flatnonzero(e["fixup"])[0])])
        raise CheckFailed(f"entry {i} is an unwind entry with a landing pad "
                          f"({int(table.entries['fixup'][i]):#x}): it returns to its caller",
                          path)
    if table.unwind is None:
        if len(e):
            raise CheckFailed(f"entry {int(np.flatnonzero(mask)[0])} is an unwind entry, but "
                              "the table has no unwind rows (version 1)", path)
        return
    unwind_rows.check(table.machine, table.unwind, e["start"], e["end"], path)


def _check_unwind_rows(table: Table, path: str | None) -> None:
    """check_unwind without numpy."""
    unwinding = [i for i, u in enumerate(table.unwinding()) if u]
    padded = [i for i in unwinding if table.entries[i][2]]
    if padded:
        i = padded[0]
        raise CheckFailed(f"entry {i} is an unwind entry with a landing pad "
                          f"({table.entries[i][2]:#x}): it returns to its caller", path)
    if table.unwind is None:
        if unwinding:
            raise CheckFailed(f"entry {unwinding[0]} is an unwind entry, but the table has "
                              "no unwind rows (version 1)", path)
        return
    unwind_rows.check(table.machine, table.unwind, [table.entries[i][0] for i in unwinding],
                      [table.entries[i][1] for i in unwinding], path)


def check_order(table: Table, path: str | None = None) -> None:
    """Sorted by start, every range non-empty, no overlap, descriptor indices in range."""
    if np is None:
        return _check_order_rows(table, path)
    e = table.entries
    bad = np.flatnonzero(e["start"] >= e["end"])
    if len(bad):
        i = int(bad[0])
        raise CheckFailed(f"entry {i} is empty or reversed "
                          f"({int(e['start'][i]):#x}..{int(e['end'][i]):#x})", path)
    if len(e) > 1:
        bad = np.flatnonzero(e["start"][1:] < e["end"][:-1])
        if len(bad):
            i = int(bad[0])
            what = "unsorted" if e["start"][i + 1] < e["start"][i] else "overlapping"
            raise CheckFailed(f"entries {i} and {i + 1} are {what} "
                              f"({int(e['start'][i]):#x} and {int(e['start'][i + 1]):#x})", path)
    ext = e["data"][(e["data"] & DATA_EXTENDED) != 0] >> DATA_IMM_SHIFT
    if len(ext) and int(ext.max()) >= len(table.handlers):
        raise CheckFailed(f"an entry names descriptor {int(ext.max())}, "
                          f"but the table has {len(table.handlers)}", path)


def _check_order_rows(table: Table, path: str | None) -> None:
    """check_order without numpy."""
    e = table.entries
    for i, (start, end, _, _) in enumerate(e):
        if start >= end:
            raise CheckFailed(f"entry {i} is empty or reversed ({start:#x}..{end:#x})", path)
    for i in range(len(e) - 1):
        if e[i + 1][0] < e[i][1]:
            what = "unsorted" if e[i + 1][0] < e[i][0] else "overlapping"
            raise CheckFailed(f"entries {i} and {i + 1} are {what} "
                              f"({e[i][0]:#x} and {e[i + 1][0]:#x})", path)
    top = max((d >> DATA_IMM_SHIFT for *_, d in e if d & DATA_EXTENDED), default=None)
    if top is not None and top >= len(table.handlers):
        raise CheckFailed(f"an entry names descriptor {top}, "
                          f"but the table has {len(table.handlers)}", path)


def _align(n: int) -> int:
    return (n + ALIGN - 1) & ~(ALIGN - 1)
