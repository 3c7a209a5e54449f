"""The compiler: fault sites → a sorted, merged, checked table.

Works on numpy arrays so that a million sites compile in well under a second;
without numpy (``pip install mcsafe``, no extras) the same steps run as loops over
lists and give the same table, byte for byte. The checks it makes are
extable.checks (which verify applies to a table read back).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

try:
    import numpy as np
except ModuleNotFoundError as _exc:
    if _exc.name != "numpy":
        raise
    np = None  # type: ignore[assignment]

from .checks import check_addresses, check_landing_pads, check_safety
from .elf import ElfImage, Segment
from .errors import ExtableError
from .model import DATA_EXTENDED, Kind
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
    if np is None:
        return _compile_in_loops(sites, machine, segments, describe, path, unwind)
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
    check_addresses(start, end, landing, ~table.unwinding(), segments, describe, path)
    check_safety(table, path)
    check_landing_pads(table, describe, path)
    check_unwind(table, path)
    return table


def _compile_in_loops(sites: SiteSet, machine: int, segments: list[Segment],
                      describe: Callable[[int], str], path: str | None,
                      unwind: list[tuple[int, Row]] | None) -> Table:
    """compile_sites without numpy: the same steps over lists."""
    start, end, landing, data = sites.start, sites.end, sites.landing, sites.data

    def name(i: int) -> str:
        return sites.origins[i] if sites.origins else describe(int(start[i]))

    empty = next((i for i in range(len(start)) if start[i] >= end[i]), None)
    if empty is not None:
        raise ExtableError(f"{name(empty)}: empty or reversed range "
                           f"{start[empty]:#x}..{end[empty]:#x}", path)

    order = sorted(range(len(start)), key=lambda i: (start[i], end[i]))   # stable, as lexsort
    start, end = [start[i] for i in order], [end[i] for i in order]
    landing, data = [landing[i] for i in order], [data[i] for i in order]
    clash = next((i for i in range(len(start) - 1) if start[i + 1] < end[i]), None)
    if clash is not None:
        i = clash
        a, b = order[i], order[i + 1]
        raise ExtableError(f"overlapping ranges: {name(a)} ({start[i]:#x}..{end[i]:#x}) and "
                           f"{name(b)} ({start[i + 1]:#x}..{end[i + 1]:#x})", path)

    if not start:
        return Table(machine, [], list(sites.handlers))
    rows = Unwind.build(unwind) if unwind else None
    # Merge runs of touching ranges that resume at the same pad with the same handler.
    entries: list[tuple[int, int, int, int]] = []
    for i in range(len(start)):
        if (entries and start[i] == end[i - 1] and landing[i] == landing[i - 1]
                and data[i] == data[i - 1]):
            entries[-1] = entries[-1][:1] + (end[i],) + entries[-1][2:]
        else:
            entries.append((start[i], end[i], landing[i], data[i]))

    if max(max(e[1], e[2]) for e in entries) >= 1 << 32:
        raise ExtableError("addresses above 4 GiB do not fit the table's 32-bit fields", path)
    table = Table(machine, entries, list(sites.handlers), unwind=rows)
    starts, ends, pads, _ = (list(c) for c in zip(*entries))
    check_addresses(starts, ends, pads, [not u for u in table.unwinding()], segments,
                     describe, path)
    check_safety(table, path)
    check_landing_pads(table, describe, path)
    check_unwind(table, path)
    return table


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
    if np is None:
        kinds = [int(h.kind) for h in sites.handlers] or [0]
        which = [i for i, d in enumerate(sites.data)
                 if (kinds[d >> 16] if d & DATA_EXTENDED else d & 0xFF) == Kind.UNWIND]
    else:
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
