"""Fault sites from the three sources: rules, compile-time records and explicit ranges.

Each source yields a :class:`SiteSet`: parallel arrays of ``[start, end)``,
landing pad and data word, with the extended handlers they refer to. The
compiler concatenates them; nothing here sorts or checks overlap.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field

import numpy as np

from .elf import ElfImage
from .errors import ExtableError
from .model import DATA_EXTENDED, DATA_IMM_SHIFT, NOREG, Handler, Kind, Side, extended_word

RECORD_SECTION = "extable_sites"
RECORD = struct.Struct("<iiiIBBBBBBBxiI32s")
RECORD_MAGIC = 0x31535458          # "XTS1"
assert RECORD.size == 64

#: An address: symbol, symbol+off, symbol-off or a number (decimal or 0x hex).
_ADDR = re.compile(r"^\s*([A-Za-z_.$][\w.$@]*)?\s*(?:([+-])?\s*(0x[0-9a-fA-F]+|\d+))?\s*$")


@dataclass
class SiteSet:
    """Fault sites as arrays; ``data`` is a classic word or names a handler."""

    start: np.ndarray
    end: np.ndarray
    landing: np.ndarray
    data: np.ndarray
    handlers: list[Handler] = field(default_factory=list)
    origins: list[str] | None = None     # a label per site for error messages, if known

    @classmethod
    def empty(cls) -> SiteSet:
        z = np.zeros(0, np.uint64)
        return cls(z, z, z, np.zeros(0, np.uint32), [], [])

    @classmethod
    def from_lists(cls, rows: list[tuple[int, int, int, int]], handlers: list[Handler],
                   origins: list[str]) -> SiteSet:
        if any(not 0 <= v < (1 << 64) for row in rows for v in row):
            bad = next(o for row, o in zip(rows, origins) if min(row) < 0)
            raise ExtableError(f"{bad}: address out of range")
        arr = np.array(rows, dtype=np.uint64).reshape(-1, 4)
        return cls(arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3].astype(np.uint32), handlers,
                   origins)

    def __len__(self) -> int:
        return len(self.start)


class HandlerPool:
    """Deduplicates handlers and hands out extended data words."""

    def __init__(self) -> None:
        self.handlers: list[Handler] = []
        self._index: dict[Handler, int] = {}

    def word(self, handler: Handler) -> int:
        if handler not in self._index:
            self._index[handler] = len(self.handlers)
            self.handlers.append(handler)
        return extended_word(self._index[handler])


def merge(sets: list[SiteSet]) -> SiteSet:
    """One SiteSet from several, with handler indices renumbered into one pool."""
    pool = HandlerPool()
    datas = []
    for s in sets:
        remap = np.array([pool.word(h) for h in s.handlers] or [0], dtype=np.uint32)
        ext = (s.data & DATA_EXTENDED) != 0
        data = s.data.copy()
        data[ext] = remap[s.data[ext] >> DATA_IMM_SHIFT]
        datas.append(data)
    origins = None
    if all(s.origins is not None for s in sets):
        origins = [o for s in sets for o in s.origins]  # type: ignore[union-attr]
    cat = np.concatenate
    return SiteSet(cat([s.start for s in sets]), cat([s.end for s in sets]),
                   cat([s.landing for s in sets]), cat(datas) if datas else np.zeros(0, np.uint32),
                   pool.handlers, origins)


# -- source 1: rules ---------------------------------------------------------

@dataclass(frozen=True)
class Rule:
    """A symbol glob mapped to a handler; each matched function becomes one range."""

    pattern: str
    handler: str
    landing: str = "{name}_fixup"
    origin: str = ""

    @classmethod
    def parse(cls, text: str) -> Rule:
        """``GLOB=HANDLER`` or ``GLOB=HANDLER@LANDING``.

        LANDING is a symbol, ``symbol+0x4``, or an address (``0x1234``); it may
        use ``{name}`` for the matched function's name. Without ``@`` it is
        ``{name}_fixup``.
        """
        glob, sep, rest = text.partition("=")
        handler, at, landing = rest.partition("@")
        if not sep or not glob.strip() or not handler.strip():
            raise ExtableError(f"bad rule {text!r}: expected GLOB=HANDLER[@LANDING]")
        if at and not landing.strip():
            raise ExtableError(f"bad rule {text!r}: empty landing pad after '@' (leave out "
                               "'@' for the default {name}_fixup)")
        landing = landing.strip() or "{name}_fixup"
        if not _ADDR.match(landing.replace("{name}", "x")):
            raise ExtableError(f"bad rule {text!r}: cannot read landing pad {landing!r} "
                               "(a symbol, symbol+0x10 or 0x1234)")
        return cls(glob.strip(), handler.strip(), landing, f"rule {text!r}")


def from_rules(image: ElfImage, rules: list[Rule], handlers: dict[str, Handler],
               ) -> tuple[SiteSet, list[str]]:
    """Sites for every function a rule matches, and why each rule that covers nothing does not."""
    if not rules:
        return SiteSet.empty(), []
    funcs = image.functions
    pool = HandlerPool()
    claimed: dict[int, Rule] = {}
    rows: list[tuple[int, int, int, int]] = []
    origins: list[str] = []
    unmatched = []
    for rule in rules:
        if rule.handler not in handlers:
            raise ExtableError(f"{rule.origin}: unknown handler {rule.handler!r} "
                               f"(known: {', '.join(sorted(handlers))})")
        word = pool.word(handlers[rule.handler])
        found = list(funcs.matching(rule.pattern))
        # A glob like copy_* also matches copy_x_fixup; a landing pad is never covered
        # (one at sym+off is inside sym, which is covered up to the pad, below).
        pads = {rule.landing.replace("{name}", funcs.names[i]) for i in found}
        hits = [i for i in found if funcs.names[i] not in pads]
        if not hits:
            own = sorted({funcs.names[i] for i in found})
            unmatched.append(
                f"{rule.origin} matches only its own landing pad{'s' if len(own) > 1 else ''} "
                f"{', '.join(own)}: no function to cover" if own
                else f"{rule.origin} matches no function")
        for i in hits:
            name = funcs.names[i]
            start, end = funcs.start[i], funcs.start[i] + funcs.size[i]
            if start in claimed:
                other = claimed[start]
                if (other.handler, other.landing) != (rule.handler, rule.landing):
                    raise ExtableError(f"overlapping rules: {other.origin} and {rule.origin} "
                                       f"both match {name}")
                continue
            claimed[start] = rule
            pad = rule.landing.replace("{name}", name)
            try:
                landing = resolve_address(image, pad, f"{rule.origin}: landing pad for {name}")
            except ExtableError as exc:
                raise ExtableError(exc.message) from None     # without the image's path twice
            if start < landing < end:       # the pad is part of the function: do not cover it
                end = landing
            rows.append((start, end, landing, word))
            origins.append(name)
    return SiteSet.from_lists(rows, pool.handlers, origins), unmatched


# -- source 2: compile-time records (extable.h) -------------------------------

def from_records(image: ElfImage, section_name: str = RECORD_SECTION) -> SiteSet:
    """Sites recorded by the EXTABLE_* macros of extable.h in the records section."""
    sec = image.section(section_name)
    if sec is None:
        return SiteSet.empty()
    if not sec.has_file_bytes or sec.size % RECORD.size:
        raise ExtableError(f"section {section_name}: size {sec.size} is not a multiple of "
                           f"{RECORD.size}", image.path)
    blob = image.section_bytes(sec)
    pool = HandlerPool()
    rows, origins = [], []
    for i, rec in enumerate(RECORD.iter_unpack(blob)):
        (start, end, landing, data, kind, flags, side, reg, src, dst, rec_reg, imm, magic,
         raw_name) = rec
        where = sec.addr + i * RECORD.size
        if magic != RECORD_MAGIC:
            raise ExtableError(f"section {section_name}: record {i} has bad magic {magic:#x}",
                               image.path)
        a, b, pad = where + start, where + 4 + end, where + 8 + landing
        if kind:
            if kind not in Kind._value2member_map_ or side not in Side._value2member_map_:
                raise ExtableError(f"section {section_name}: record {i} has unknown kind "
                                   f"{kind} or side {side}", image.path)
            name = raw_name.split(b"\0", 1)[0].decode("utf-8", "replace")
            data = pool.word(Handler(Kind(kind), reg, src, dst, rec_reg, Side(side), flags, imm,
                                     name))
        elif data & DATA_EXTENDED:
            raise ExtableError(f"section {section_name}: record {i} has an extended data word "
                               "but no descriptor", image.path)
        rows.append((a, b, pad, data))
        origins.append(f"record {i} at {image.describe(a)}")
    return SiteSet.from_lists(rows, pool.handlers, origins)


# -- source 3: explicit ranges ------------------------------------------------


def resolve_address(image: ElfImage, value: int | str, what: str) -> int:
    """An address given as an integer, ``"0x1234"``, ``"symbol"`` or ``"symbol+0x10"``.

    The result must fit 64 bits and not be negative (ExtableError otherwise).
    """
    if isinstance(value, int) and not isinstance(value, bool):
        address = value
    else:
        m = _ADDR.match(str(value))
        if not m or not (m.group(1) or m.group(3)):
            raise ExtableError(f"{what}: cannot read address {value!r}")
        base = 0
        if m.group(1):
            if m.group(1) not in image.symbol_addresses:
                raise ExtableError(f"{what}: unknown symbol {m.group(1)!r}")
            base = image.symbol_addresses[m.group(1)]
        off = int(m.group(3), 0) if m.group(3) else 0
        address = base - off if m.group(2) == "-" else base + off
    if not 0 <= address < 1 << 64:
        why = "negative" if address < 0 else "wider than 64 bits"
        raise ExtableError(f"{what}: {value!r} is {why}")
    return address


def from_ranges(image: ElfImage, ranges: list[dict[str, object]],
                handlers: dict[str, Handler], origin: str) -> SiteSet:
    """Sites from the spec file's ``[[ranges]]`` tables."""
    pool = HandlerPool()
    rows, origins = [], []
    for i, r in enumerate(ranges):
        what = f"{origin}: ranges[{i}]"
        unknown = set(r) - {"start", "end", "landing", "handler", "data"}
        if unknown or not {"start", "end", "landing"} <= set(r):
            raise ExtableError(f"{what}: needs start, end, landing and handler or data "
                               f"(unexpected: {', '.join(sorted(unknown)) or 'none'})")
        start = resolve_address(image, r["start"], what)          # type: ignore[arg-type]
        end = resolve_address(image, r["end"], what)              # type: ignore[arg-type]
        landing = resolve_address(image, r["landing"], what)      # type: ignore[arg-type]
        if "data" in r:
            data = int(r["data"])                                 # type: ignore[call-overload]
            if not 0 <= data < (1 << 32) or data & DATA_EXTENDED:
                raise ExtableError(f"{what}: classic data word {data:#x} out of range")
        else:
            name = str(r.get("handler", ""))
            if name not in handlers:
                raise ExtableError(f"{what}: unknown handler {name!r}")
            data = pool.word(handlers[name])
        rows.append((start, end, landing, data))
        origins.append(f"{what} at {image.describe(start)}")
    return SiteSet.from_lists(rows, pool.handlers, origins)


__all__ = ["NOREG", "RECORD", "RECORD_MAGIC", "RECORD_SECTION", "HandlerPool", "Rule",
           "SiteSet", "from_ranges", "from_records", "from_rules", "merge", "resolve_address"]
