"""The compiler's checks, which verify applies again to a table read back from a file:
safe descriptors, landing pads outside every covered range, every address inside an
executable segment (docs/FORMAT.md, "Safety rules").

Vectorised with numpy; without it (``pip install mcsafe``, no extras) the same
checks run as loops over the table's rows, with the same results and messages.
"""

from __future__ import annotations

import bisect
from typing import Any, Callable

try:
    import numpy as np
except ModuleNotFoundError as _exc:
    if _exc.name != "numpy":
        raise
    np = None  # type: ignore[assignment]

from .elf import EM_X86_64, ElfImage, Segment
from .errors import CheckFailed
from .model import DATA_EXTENDED, NOREG, Handler, Kind, decode_classic, describe_data, register_name
from .table import Table


#: The stack pointer's register number (aarch64's sp has none: x0..x30 only).
STACK_POINTER = {EM_X86_64: 4}


def _unsafe(machine: int, h: Handler) -> str | None:
    """Why a descriptor is dangerous (docs/FORMAT.md, "Safety rules"), or None.

    The runtime writes two things: the fault record, through the register
    ``rec`` names, and an ``errno`` entry's ``reg``. Neither may be the stack
    pointer, nor a register the handler reads for the same fault (a
    ``short_copy``'s count, source and destination; an ``errno``'s rec, read
    after its reg is set)."""
    sp = STACK_POINTER.get(machine)

    def name(reg: int) -> str:
        return str(register_name(machine, reg))

    if sp is not None and h.rec_reg == sp:
        return (f"rec register {name(sp)} is the stack pointer "
                "(the handler would write over the interrupted stack)")
    if sp is not None and h.kind == Kind.ERRNO and h.reg == sp:
        return f"errno register {name(sp)} is the stack pointer"
    if sp is not None and h.kind == Kind.SHORT_COPY and h.reg == sp:
        return (f"short_copy count register {name(sp)} is the stack pointer (a stack "
                "address as a byte count would claim faults far past the buffers)")
    if h.kind == Kind.SHORT_COPY and h.src_reg == NOREG and h.dst_reg == NOREG:
        return "short_copy names neither a src nor a dst register (it would claim every " \
               "fault at its PC)"
    if h.rec_reg != NOREG and h.kind == Kind.SHORT_COPY:
        for role, reg, why in (
                ("count", h.reg, "at an address that is a byte count"),
                ("src", h.src_reg, "through the source pointer that faulted"),
                ("dst", h.dst_reg, "over the destination the copy reports as copied")):
            if reg == h.rec_reg:
                return (f"rec register {name(reg)} is also the {role} register (the handler "
                        f"would write the fault record {why})")
    if h.rec_reg != NOREG and h.kind == Kind.ERRNO and h.reg == h.rec_reg:
        return (f"rec register {name(h.reg)} is also the errno register (the handler sets "
                "it to imm, then writes the fault record through it)")
    if h.kind == Kind.UNWIND and h.reg == NOREG:
        return "unwind names no register for the value it returns"
    if sp is not None and h.kind == Kind.UNWIND and h.reg == sp:
        return f"unwind's return register {register_name(machine, sp)} is the stack pointer"
    if h.kind == Kind.UNWIND and h.rec_reg != NOREG:
        return "unwind has a fault record register, but the function it returns from is gone"
    return None


def check_safety(table: Table, path: str | None = None) -> None:
    """Refuse well-formed but dangerous descriptors (docs/FORMAT.md, "Safety rules")."""
    for i, h in enumerate(table.handlers):
        why = _unsafe(table.machine, h)
        if why:
            raise CheckFailed(f"descriptor {i} ({h.name or '-'}): {why}", path)
    # Classic words: each distinct word once (a table holds few), the first entry named.
    unsafe = {}
    for data, i in _first_classic_words(table):
        kind, reg, _flags, imm = decode_classic(data)
        if kind not in (Kind.SHORT_COPY, Kind.ERRNO, Kind.UNWIND):
            continue
        why = _unsafe(table.machine, Handler(Kind(kind), reg=reg, imm=imm))
        if why:
            unsafe[i] = (data, why)
    if unsafe:
        i = min(unsafe)
        data, why = unsafe[i]
        raise CheckFailed(f"entry {i} ({describe_data(table.machine, data, [])}): {why}", path)


def _first_classic_words(table: Table) -> list[tuple[int, int]]:
    """(word, index of its first entry) for each distinct classic data word."""
    if np is None:
        first: dict[int, int] = {}
        for i, (*_, data) in enumerate(table.entries):
            if not data & DATA_EXTENDED:
                first.setdefault(data, i)
        return list(first.items())
    # (With return_index: without it, numpy 2's unique imports numpy.ma, 30 ms.)
    words = table.entries["data"]
    classic = np.flatnonzero((words & DATA_EXTENDED) == 0)
    distinct, at = np.unique(words[classic], return_index=True)
    return list(zip(distinct.tolist(), classic[at].tolist()))


def check_landing_pads(table: Table, describe: Callable[[int], str] = hex,
                       path: str | None = None) -> None:
    """No landing pad lies inside a covered range: a fault after a pad inside its own
    range resumes before the faulting instruction and faults again, forever; a pad inside
    another entry's range would be recovered again in turn."""
    found = _first_covered_pad(table)
    if found is None:
        return
    k, j = found
    (start, end, pad, _), (other_start, other_end, _, _) = table.rows_at(k), table.rows_at(j)
    where = f"entry {k} ({describe(start)}): landing pad {pad:#x} ({describe(pad)})"
    if j == k:
        raise CheckFailed(f"{where} lies inside the range it covers ({start:#x}..{end:#x}): "
                          "a fault there would resume at or before the faulting instruction "
                          "and repeat forever", path)
    raise CheckFailed(f"{where} lies inside entry {j} ({other_start:#x}.."
                      f"{other_end:#x}): a landing pad must not be covered (a fault "
                      "at it would be recovered again, and could repeat forever)", path)


def _first_covered_pad(table: Table) -> tuple[int, int] | None:
    """(k, j): the first entry k with a landing pad whose pad lies in entry j's range."""
    e = table.entries
    if not len(e):
        return None
    if np is None:
        starts = [row[0] for row in e]
        for k, ((_, _, fixup, _), unwinding) in enumerate(zip(e, table.unwinding())):
            j = bisect.bisect_right(starts, fixup) - 1
            if not unwinding and j >= 0 and fixup < e[j][1]:
                return k, j
        return None
    fixup = e["fixup"]
    i = np.searchsorted(e["start"], fixup, side="right").astype(np.int64) - 1
    inside = (i >= 0) & (fixup < e["end"][np.clip(i, 0, None)]) & ~table.unwinding()
    bad = np.flatnonzero(inside)
    return None if not len(bad) else (int(bad[0]), int(i[int(bad[0])]))


def check_addresses(start: Any, end: Any, landing: Any, has_pad: Any,
                     segments: list[Segment], describe: Callable[[int], str],
                     path: str | None) -> None:
    """Every range, and every landing pad (of the entries that have one: ``has_pad``),
    must lie inside one executable PT_LOAD segment. Columns are numpy arrays, or
    lists without numpy."""
    exe = sorted((s for s in segments if s.executable), key=lambda s: s.vaddr)
    if not len(start):
        return
    if not exe:
        raise CheckFailed("the file has no executable PT_LOAD segment", path)
    if np is None:
        return _check_address_lists(start, end, landing, has_pad, exe, describe, path)
    seg_start = np.array([s.vaddr for s in exe], np.uint64)
    seg_end = np.array([s.end for s in exe], np.uint64)

    def segment_of(addr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        idx = np.searchsorted(seg_start, addr, side="right").astype(np.int64) - 1
        safe = np.clip(idx, 0, None)
        inside = (idx >= 0) & (addr < seg_end[safe])
        return safe, inside

    s_idx, s_ok = segment_of(start)
    e_ok = s_ok & (end <= seg_end[s_idx])
    _, l_ok = segment_of(landing)
    l_ok |= ~has_pad
    for ok, what, values in ((s_ok, "start", start), (e_ok, "end", end),
                             (l_ok, "landing pad", landing)):
        bad = np.flatnonzero(~ok)
        if len(bad):
            i = int(bad[0])
            raise CheckFailed(f"entry {describe(int(start[i]))}: {what} {int(values[i]):#x} "
                              "is not inside an executable PT_LOAD segment", path)


def _check_address_lists(start: list[int], end: list[int], landing: list[int],
                         has_pad: list[bool], exe: list[Segment],
                         describe: Callable[[int], str], path: str | None) -> None:
    """check_addresses without numpy: the same checks in the same order."""
    seg_start = [s.vaddr for s in exe]

    def segment_of(addr: int) -> Segment | None:
        i = bisect.bisect_right(seg_start, addr) - 1
        return exe[i] if i >= 0 and addr < exe[i].end else None

    def start_ok(i: int) -> bool:
        return segment_of(start[i]) is not None

    def end_ok(i: int) -> bool:
        seg = segment_of(start[i])
        return seg is not None and end[i] <= seg.end

    def landing_ok(i: int) -> bool:
        return not has_pad[i] or segment_of(landing[i]) is not None

    for ok, what, values in ((start_ok, "start", start), (end_ok, "end", end),
                             (landing_ok, "landing pad", landing)):
        bad = next((i for i in range(len(start)) if not ok(i)), None)
        if bad is not None:
            raise CheckFailed(f"entry {describe(start[bad])}: {what} {values[bad]:#x} "
                              "is not inside an executable PT_LOAD segment", path)


def check_table(table: Table, image: ElfImage) -> None:
    """Every check the compiler makes, applied to a table read back from a file."""
    if table.machine != image.machine:
        raise CheckFailed(f"table is for machine {table.machine}, file is {image.machine}",
                          image.path)
    check_safety(table, image.path)
    check_landing_pads(table, image.describe, image.path)
    e = table.entries
    if np is None:
        start, end, fixup, _ = (list(column) for column in zip(*e)) if e else ([],) * 4
        has_pad = [not u for u in table.unwinding()]
        check_addresses(start, end, fixup, has_pad, image.segments, image.describe,
                         image.path)
        return
    check_addresses(e["start"].astype(np.uint64), e["end"].astype(np.uint64),
                     e["fixup"].astype(np.uint64), ~table.unwinding(), image.segments,
                     image.describe, image.path)


