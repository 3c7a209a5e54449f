"""Unwind rows: where a function's caller's frame is, per sub-range of the function.

An ``unwind`` entry returns from the function it covers as if the function had
returned a value: the runtime needs, at the faulting instruction, the canonical
frame address (CFA: the caller's stack pointer before the call, as a register
plus an offset) and where each callee-saved register and the return address
were saved. The compiler derives that from the function's call-frame
information (:mod:`extable.cfi`) and writes it beside the entries, as the
kernel's ORC tables sit beside its code (arch/x86/include/asm/orc_types.h): a
sorted array of sub-range starts (``ips``), the row each uses (``idx``), and
the distinct rows. At fault time the runtime does a binary search and a few
loads; nothing is interpreted.

A row holds one 16-bit offset from the CFA per *slot*, the registers the
caller expects back (docs/FORMAT.md):

* x86-64: rbx rbp r12 r13 r14 r15 and the return address (the SysV ABI has no
  callee-saved vector registers);
* aarch64: x19..x29, x30 (the link register, which holds the return address),
  and d8..d15 (the low halves of v8..v15, AAPCS64).

An offset of 0 means "not saved: still in its register".
"""

from __future__ import annotations

import bisect
import struct
import sys
from array import array
from typing import Any, NamedTuple, Sequence

try:
    import numpy as np
except ModuleNotFoundError as _exc:
    if _exc.name != "numpy":
        raise
    np = None  # type: ignore[assignment]

from .elf import EM_AARCH64, EM_X86_64
from .errors import CheckFailed
from .model import register_name

#: The slots of a row, in order, per machine.
SLOTS = {
    EM_X86_64: ("rbx", "rbp", "r12", "r13", "r14", "r15", "ra"),
    EM_AARCH64: tuple(f"x{i}" for i in range(19, 31)) + tuple(f"d{i}" for i in range(8, 16)),
}
#: The slot holding the return address.
RA_SLOT = {EM_X86_64: 6, EM_AARCH64: 11}
#: The stack pointer's number as a CFA register (aarch64's sp has none among x0..x30).
SP_REG = {EM_X86_64: 4, EM_AARCH64: 31}
#: Registers a CFA may be based on: the general registers and the stack pointer.
CFA_REGS = {EM_X86_64: 16, EM_AARCH64: 32}

HEADER = struct.Struct("<IIIIII")     # nunwind, nrows, ips_off, idx_off, rows_off, row_size
assert HEADER.size == 24


def row_struct(machine: int) -> struct.Struct:
    """The packed row for a machine: i32 cfa_off, u8 cfa_reg, u8 flags, i16 per slot,
    padded to a multiple of 4 (20 bytes on x86-64, 48 on aarch64)."""
    n = len(SLOTS[machine])
    pad = -(6 + 2 * n) % 4
    return struct.Struct(f"<iBB{n}h{pad}x")


class Row(NamedTuple):
    """The caller's frame for one sub-range: CFA = cfa_reg + cfa_off; saves[k] is where
    slot k is saved, relative to the CFA, or 0 when it is still in its register."""

    cfa_reg: int
    cfa_off: int
    saves: tuple[int, ...]

    def describe(self, machine: int) -> str:
        """Like ``cfa=rsp+16 rbx=cfa-16 ra=cfa-8``."""
        parts = [f"cfa={cfa_register_name(machine, self.cfa_reg)}{self.cfa_off:+d}"]
        parts += [f"{slot}=cfa{off:+d}" for slot, off in zip(SLOTS[machine], self.saves) if off]
        return " ".join(parts)

    def as_dict(self, machine: int) -> dict[str, object]:
        return {"cfa": {"reg": cfa_register_name(machine, self.cfa_reg), "offset": self.cfa_off},
                "saved": {slot: off for slot, off in zip(SLOTS[machine], self.saves) if off}}


def cfa_register_name(machine: int, reg: int) -> str:
    return "sp" if machine == EM_AARCH64 and reg == 31 else str(register_name(machine, reg))


class Unwind(NamedTuple):
    """A table's unwind rows: ``ips`` sorted (u32, relative to the load base), ``idx``
    the row each sub-range uses (u32), ``rows`` the distinct rows. numpy arrays, or
    ``array('I')`` without numpy."""

    ips: Any
    idx: Any
    rows: list[Row]

    def __len__(self) -> int:
        return len(self.ips)

    @classmethod
    def build(cls, pairs: list[tuple[int, Row]]) -> Unwind:
        """From (sub-range start, row) pairs in any order; rows are deduplicated."""
        pairs = sorted(pairs)
        rows: dict[Row, int] = {}
        idx = [rows.setdefault(row, len(rows)) for _, row in pairs]
        return cls(_u32([ip for ip, _ in pairs]), _u32(idx), list(rows))

    def at(self, address: int) -> tuple[int, Row] | None:
        """(sub-range start, row) in effect at address, or None before the first."""
        i = bisect.bisect_right(self.ips, address) - 1
        return None if i < 0 else (int(self.ips[i]), self.rows[int(self.idx[i])])

    def within(self, start: int, end: int) -> list[tuple[int, Row]]:
        """The sub-ranges starting in [start, end)."""
        a, b = bisect.bisect_left(self.ips, start), bisect.bisect_left(self.ips, end)
        return [(int(self.ips[i]), self.rows[int(self.idx[i])]) for i in range(a, b)]


def _u32(values: Sequence[int]) -> Any:
    return array("I", values) if np is None else np.array(values, np.uint32)


def _u32_bytes(values: Any) -> bytes:
    """Little-endian u32 bytes of a numpy array or an array('I')."""
    if np is not None:
        return np.ascontiguousarray(values, "<u4").tobytes()
    out = array("I", values)
    if sys.byteorder == "big":
        out.byteswap()
    return out.tobytes()


def _u32_from(blob: bytes, count: int, offset: int) -> Any:
    if np is not None:
        return np.frombuffer(blob, "<u4", count=count, offset=offset).copy()
    out = array("I", blob[offset:offset + 4 * count])
    if sys.byteorder == "big":
        out.byteswap()
    return out


def encode(machine: int, unwind: Unwind) -> tuple[bytes, bytes, bytes]:
    """The ips, idx and rows arrays' bytes."""
    packer = row_struct(machine)
    rows = b"".join(packer.pack(r.cfa_off, r.cfa_reg, 0, *r.saves) for r in unwind.rows)
    return _u32_bytes(unwind.ips), _u32_bytes(unwind.idx), rows


def decode(machine: int, blob: bytes, header_at: int, path: str | None) -> Unwind:
    """The unwind rows of a version-2 table whose unwind header is at ``header_at``."""
    (n, nrows, ips_off, idx_off, rows_off, row_size) = HEADER.unpack_from(blob, header_at)
    packer = row_struct(machine)
    if row_size != packer.size:
        raise CheckFailed(f"unwind rows are {row_size} bytes, {packer.size} on this machine",
                          path)
    if (ips_off + 4 * n > len(blob) or idx_off + 4 * n > len(blob)
            or rows_off + row_size * nrows > len(blob) or ips_off % 4 or idx_off % 4
            or rows_off % 4):
        raise CheckFailed("unwind rows are truncated: counts and offsets exceed the table",
                          path)
    ips, idx = _u32_from(blob, n, ips_off), _u32_from(blob, n, idx_off)
    rows = []
    for k in range(nrows):
        cfa_off, cfa_reg, flags, *saves = packer.unpack_from(blob, rows_off + k * row_size)
        if flags:
            raise CheckFailed(f"unwind row {k} has flags {flags:#x} (none are defined)", path)
        rows.append(Row(cfa_reg, cfa_off, tuple(saves)))
    return Unwind(ips, idx, rows)


def check(machine: int, unwind: Unwind, starts: Any, ends: Any,
          path: str | None = None) -> None:
    """The rules the runtime relies on (docs/FORMAT.md, "Unwind rows"), given the
    ``[start, end)`` of every ``unwind`` entry (sorted, non-overlapping):

    * ips strictly increasing, each inside an unwind entry, and every unwind entry
      with a row at its start (so the row in effect at a PC is that entry's);
    * every idx names a row;
    * every row sane: the CFA on a general register or the stack pointer with an offset
      that is not negative; each save 0 or a negative multiple of 8; on x86-64 the
      return address saved (a call pushes it).
    """
    if np is None:
        _check_sub_ranges(unwind, list(starts), list(ends), path)
    else:
        _check_sub_ranges_np(unwind, starts, ends, path)
    for k, row in enumerate(unwind.rows):
        why = _bad_row(machine, row)
        if why:
            raise CheckFailed(f"unwind row {k} ({row.describe(machine)}): {why}", path)


def _check_sub_ranges(unwind: Unwind, starts: list[int], ends: list[int],
                      path: str | None) -> None:
    """The ips and idx rules of check(), without numpy."""
    ips, idx = unwind.ips, unwind.idx
    for i in range(len(ips) - 1):
        if ips[i + 1] <= ips[i]:
            raise CheckFailed(f"unwind rows {i} and {i + 1} are not in increasing order "
                              f"({ips[i]:#x}, {ips[i + 1]:#x})", path)
    if len(idx) and max(idx) >= len(unwind.rows):
        raise CheckFailed(f"an unwind sub-range names row {max(idx)}, but there are "
                          f"{len(unwind.rows)}", path)
    for i, ip in enumerate(ips):
        e = bisect.bisect_right(starts, ip) - 1
        if not (e >= 0 and ip < ends[e]):
            raise CheckFailed(f"unwind row {i} at {ip:#x} is not inside an unwind entry", path)
    for start in starts:
        have = bisect.bisect_left(ips, start)
        if not (have < len(ips) and ips[have] == start):
            raise CheckFailed(f"unwind entry at {start:#x} has no row at its start", path)


def _check_sub_ranges_np(unwind: Unwind, starts: Any, ends: Any, path: str | None) -> None:
    """The ips and idx rules of check(), vectorised."""
    ips, idx = unwind.ips.astype(np.int64), unwind.idx
    if len(ips) > 1 and not bool(np.all(ips[1:] > ips[:-1])):
        i = int(np.flatnonzero(ips[1:] <= ips[:-1])[0])
        raise CheckFailed(f"unwind rows {i} and {i + 1} are not in increasing order "
                          f"({int(ips[i]):#x}, {int(ips[i + 1]):#x})", path)
    if len(idx) and int(idx.max()) >= len(unwind.rows):
        raise CheckFailed(f"an unwind sub-range names row {int(idx.max())}, but there are "
                          f"{len(unwind.rows)}", path)
    if not len(starts) and len(ips):        # rows, but no unwind entry to hold them
        raise CheckFailed(f"unwind row 0 at {int(ips[0]):#x} is not inside an unwind entry",
                          path)
    e = np.searchsorted(starts.astype(np.int64), ips, side="right") - 1
    inside = (e >= 0) & (ips < ends.astype(np.int64)[np.clip(e, 0, None)])
    if not bool(np.all(inside)):
        i = int(np.flatnonzero(~inside)[0])
        raise CheckFailed(f"unwind row {i} at {int(ips[i]):#x} is not inside an unwind entry",
                          path)
    have = np.searchsorted(ips, starts.astype(np.int64))
    found = (have < len(ips)) & (ips[np.clip(have, 0, max(len(ips) - 1, 0))]
                                 == starts.astype(np.int64)) if len(ips) else \
        np.zeros(len(starts), bool)
    if not bool(np.all(found)):
        i = int(np.flatnonzero(~found)[0])
        raise CheckFailed(f"unwind entry at {int(starts[i]):#x} has no row at its start", path)


def _bad_row(machine: int, row: Row) -> str | None:
    if not 0 <= row.cfa_reg < CFA_REGS[machine]:
        return f"CFA register {row.cfa_reg} does not exist"
    if row.cfa_off < 0:
        return "the CFA lies below its register"
    for slot, off in zip(SLOTS[machine], row.saves):
        if off > 0 or off % 8:
            return f"{slot} saved at CFA{off:+d}, not a negative multiple of 8"
    if machine == EM_X86_64 and not row.saves[RA_SLOT[machine]]:
        return "the return address is not saved (a call pushes it)"
    return None
