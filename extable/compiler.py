"""The compiler: fault sites → a sorted, merged, checked table.

Works on numpy arrays so that a million sites compile in well under a second.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from .errors import missing_extra

try:
    import numpy as np
except ModuleNotFoundError as _exc:
    raise missing_extra(_exc, "numpy", "extable's table compiler", "extable") from None

from .elf import EM_X86_64, ElfImage, Segment
from .errors import CheckFailed, ExtableError
from .model import (DATA_EXTENDED, NOREG, Handler, Kind, decode_classic, describe_data,
                    register_name)
from .table import ENTRY_DTYPE, Table, check_unwind
from .unwind import Row, Unwind

if TYPE_CHECKING:           # verify and dump need only the checks, not the sources of sites
    from .sites import Rule, SiteSet
    from .spec import Spec


@dataclass
class Build:
    """A compiled table and what the compiler noticed on the way."""

    table: Table
    sites: int
    warnings: list[str]


def compile_sites(sites: SiteSet, machine: int, segments: list[Segment],
                  describe: Callable[[int], str] = hex, path: str | None = None,
                  unwind: list[tuple[int, Row]] | None = None) -> Table:
    """Sort, reject overlap, merge adjacent equal ranges, check every address.

    ``unwind`` holds the (sub-range start, row) pairs of the ``unwind`` sites
    (:func:`extable.cfi.rows_for`).
    """
    start, end, landing, data = sites.start, sites.end, sites.landing, sites.data

    def name(i: int) -> str:
        return sites.origins[i] if sites.origins else describe(int(start[i]))

    empty = np.flatnonzero(start >= end)
    if len(empty):
        i = int(empty[0])
        raise ExtableError(f"{name(i)}: empty or reversed range "
                           f"{int(start[i]):#x}..{int(end[i]):#x}", path)

    order = np.lexsort((end, start))
    start, end, landing, data = start[order], end[order], landing[order], data[order]
    if len(start) > 1:
        clash = np.flatnonzero(start[1:] < end[:-1])
        if len(clash):
            i = int(clash[0])
            a, b = int(order[i]), int(order[i + 1])
            raise ExtableError(f"overlapping ranges: {name(a)} "
                               f"({int(start[i]):#x}..{int(end[i]):#x}) and {name(b)} "
                               f"({int(start[i + 1]):#x}..{int(end[i + 1]):#x})", path)

    if not len(start):
        return Table(machine, np.empty(0, ENTRY_DTYPE), list(sites.handlers))
    rows = Unwind.build(unwind) if unwind else None
    # Merge runs of touching ranges that resume at the same pad with the same handler.
    joins = (start[1:] == end[:-1]) & (landing[1:] == landing[:-1]) & (data[1:] == data[:-1])
    first = np.flatnonzero(np.concatenate(([True], ~joins)))
    last = np.concatenate((first[1:] - 1, [len(start) - 1]))
    start, end, landing, data = start[first], end[last], landing[first], data[first]

    if len(start) and max(int(end.max()), int(landing.max())) >= 1 << 32:
        raise ExtableError("addresses above 4 GiB do not fit the table's 32-bit fields", path)
    entries = np.empty(len(start), ENTRY_DTYPE)
    entries["start"], entries["end"] = start, end
    entries["fixup"], entries["data"] = landing, data
    table = Table(machine, entries, list(sites.handlers), unwind=rows)
    _check_addresses(start, end, landing, ~table.unwinding(), segments, describe, path)
    check_safety(table, path)
    check_landing_pads(table, describe, path)
    check_unwind(table, path)
    return table


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
    # (With return_index: without it, numpy 2's unique imports numpy.ma, 30 ms.)
    words = table.entries["data"]
    classic = np.flatnonzero((words & DATA_EXTENDED) == 0)
    distinct, first = np.unique(words[classic], return_index=True)
    unsafe = {}
    for data, i in zip(distinct.tolist(), classic[first].tolist()):
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


def check_landing_pads(table: Table, describe: Callable[[int], str] = hex,
                       path: str | None = None) -> None:
    """No landing pad lies inside a covered range: a fault after a pad inside its own
    range resumes before the faulting instruction and faults again, forever; a pad inside
    another entry's range would be recovered again in turn."""
    e = table.entries
    if not len(e):
        return
    fixup = e["fixup"]
    i = np.searchsorted(e["start"], fixup, side="right").astype(np.int64) - 1
    inside = (i >= 0) & (fixup < e["end"][np.clip(i, 0, None)]) & ~table.unwinding()
    bad = np.flatnonzero(inside)
    if not len(bad):
        return
    k = int(bad[0])
    j = int(i[k])
    start, end, pad = int(e["start"][k]), int(e["end"][k]), int(fixup[k])
    where = f"entry {k} ({describe(start)}): landing pad {pad:#x} ({describe(pad)})"
    if j == k:
        raise CheckFailed(f"{where} lies inside the range it covers ({start:#x}..{end:#x}): "
                          "a fault there would resume at or before the faulting instruction "
                          "and repeat forever", path)
    raise CheckFailed(f"{where} lies inside entry {j} ({int(e['start'][j]):#x}.."
                      f"{int(e['end'][j]):#x}): a landing pad must not be covered (a fault "
                      "at it would be recovered again, and could repeat forever)", path)


def _check_addresses(start: np.ndarray, end: np.ndarray, landing: np.ndarray,
                     has_pad: np.ndarray, segments: list[Segment],
                     describe: Callable[[int], str], path: str | None) -> None:
    """Every range, and every landing pad (of the entries that have one: ``has_pad``),
    must lie inside one executable PT_LOAD segment."""
    exe = sorted((s for s in segments if s.executable), key=lambda s: s.vaddr)
    if not len(start):
        return
    if not exe:
        raise CheckFailed("the file has no executable PT_LOAD segment", path)
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


def check_table(table: Table, image: ElfImage) -> None:
    """Every check the compiler makes, applied to a table read back from a file."""
    if table.machine != image.machine:
        raise CheckFailed(f"table is for machine {table.machine}, file is {image.machine}",
                          image.path)
    check_safety(table, image.path)
    check_landing_pads(table, image.describe, image.path)
    e = table.entries
    _check_addresses(e["start"].astype(np.uint64), e["end"].astype(np.uint64),
                     e["fixup"].astype(np.uint64), ~table.unwinding(), image.segments,
                     image.describe, image.path)


def build(image: ElfImage, spec: Spec, extra_rules: list[Rule] = (),  # type: ignore[assignment]
          records: bool = True, strict: bool = False) -> Build:
    """Gather sites from every source in the file and the spec, and compile them."""
    from .sites import from_ranges, from_records, from_rules, merge

    warnings = []
    rules = list(spec.rules) + list(extra_rules)
    ruled, unmatched = from_rules(image, rules, spec.handlers)
    for problem in unmatched:
        if strict:
            raise ExtableError(problem, image.path)
        warnings.append(problem)
    parts = [ruled]
    if records:
        parts.append(from_records(image))
    parts.append(from_ranges(image, spec.ranges, spec.handlers, spec.origin))
    sites = merge(parts)
    rows = unwind_rows(image, sites)
    try:
        table = compile_sites(sites, image.machine, image.segments, image.describe, image.path,
                              rows)
    except ExtableError as exc:
        raise type(exc)(exc.message, image.path) from None
    return Build(table, len(sites), warnings)


def unwind_rows(image: ElfImage, sites: SiteSet) -> list[tuple[int, Row]]:
    """The unwind rows of every ``unwind`` site, from the file's call-frame information."""
    kinds = np.array([int(h.kind) for h in sites.handlers] or [0], np.uint8)
    ext = (sites.data & DATA_EXTENDED) != 0
    kind = np.where(ext, kinds[np.where(ext, sites.data >> 16, 0)], sites.data & 0xFF)
    which = np.flatnonzero(kind == Kind.UNWIND)
    if not len(which):
        return []
    from .cfi import rows_for

    return rows_for(image, [(int(sites.start[i]), int(sites.end[i]),
                             sites.origins[i] if sites.origins else image.describe(int(
                                 sites.start[i]))) for i in which])
