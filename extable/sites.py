"""Fault sites from the three sources: rules, compile-time records and explicit ranges.

Each source yields a :class:`SiteSet`: parallel arrays of ``[start, end)``,
landing pad and data word, with the extended handlers they refer to. The
compiler concatenates them; nothing here sorts or checks overlap.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field

from .errors import missing_extra

try:
    import numpy as np
except ModuleNotFoundError as _exc:
    raise missing_extra(_exc, "numpy", "extable's table compiler", "extable") from None

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
        try:                         # numpy refuses a negative or wider than 64 bits
            arr = np.array(rows, dtype=np.uint64).reshape(-1, 4)
        except OverflowError:
            bad = next(o for row, o in zip(rows, origins)
                       if not all(0 <= v < (1 << 64) for v in row))
            raise ExtableError(f"{bad}: address out of range") from None
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

#: Where a rule's range ends: at the function's end, or (said explicitly) at its landing pad.
RULE_ENDS = ("function", "landing")
DEFAULT_LANDING = "{name}_fixup"


@dataclass(frozen=True)
class Rule:
    """A symbol glob mapped to a handler; each matched function becomes one range.

    ``end`` is ``"function"`` (the range is the whole function) or ``"landing"``
    (it stops at a landing pad that lies inside the function: the rule says the
    function's tail is its recovery code).
    """

    pattern: str
    handler: str
    landing: str | None = None          # None: {name}_fixup, or none for an unwind rule
    origin: str = ""
    end: str = "function"

    def __post_init__(self) -> None:
        if self.end not in RULE_ENDS:
            raise ExtableError(f"{self.origin or 'rule'}: end={self.end!r} is neither "
                               f"{' nor '.join(RULE_ENDS)}")

    @classmethod
    def parse(cls, text: str) -> Rule:
        """``GLOB=HANDLER``, ``GLOB=HANDLER@LANDING``, optionally ``,end=landing``.

        LANDING is a symbol, ``symbol+0x4``, or an address (``0x1234``); it may
        use ``{name}`` for the matched function's name. Without ``@`` it is
        ``{name}_fixup``. ``end=landing`` lets a pad inside the function end
        its range there.
        """
        body, *options = text.split(",")
        glob, sep, rest = body.partition("=")
        handler, at, landing = rest.partition("@")
        if not sep or not glob.strip() or not handler.strip():
            raise ExtableError(f"bad rule {text!r}: expected GLOB=HANDLER[@LANDING][,end=landing]")
        if at and not landing.strip():
            raise ExtableError(f"bad rule {text!r}: empty landing pad after '@' (leave out "
                               "'@' for the default {name}_fixup)")
        pad = landing.strip() or None
        if pad is not None and not _ADDR.match(pad.replace("{name}", "x")):
            raise ExtableError(f"bad rule {text!r}: cannot read landing pad {pad!r} "
                               "(a symbol, symbol+0x10 or 0x1234)")
        end = "function"
        for option in options:
            key, eq, value = (part.strip() for part in option.partition("="))
            if key != "end" or not eq:
                raise ExtableError(f"bad rule {text!r}: unknown option {option.strip()!r} "
                                   "(the one option is end=landing)")
            end = value
        return cls(glob.strip(), handler.strip(), pad, f"rule {text!r}", end)


def _pads(image: ElfImage, rule: Rule, names: list[str], found: list[int]
          ) -> dict[int, int | ExtableError]:
    """Each matched function's landing pad address, or why it does not resolve."""
    out: dict[int, int | ExtableError] = {}
    landing = rule.landing or DEFAULT_LANDING
    if "{name}" not in landing and found:        # one pad for every function: resolve once
        try:
            pad: int | ExtableError = resolve_address(image, landing, f"{rule.origin}: "
                                                      f"landing pad for {names[found[0]]}")
        except ExtableError as exc:
            pad = ExtableError(exc.message)
        return dict.fromkeys(found, pad)
    for i in found:
        try:
            out[i] = resolve_address(image, landing.replace("{name}", names[i]),
                                     f"{rule.origin}: landing pad for {names[i]}")
        except ExtableError as exc:
            out[i] = ExtableError(exc.message)       # without the image's path twice
    return out


def from_rules(image: ElfImage, rules: list[Rule], handlers: dict[str, Handler],
               ) -> tuple[SiteSet, list[str]]:
    """Sites for every function a rule matches, and why each rule that covers nothing does not.

    Landing pads are compared as addresses, so a symbol, ``symbol+0`` and the number
    have one outcome. A matched function that is another matched function's landing
    pad (``copy_*`` matches ``copy_x_fixup``) is not covered; a pad inside the function
    it covers is refused (a fault would resume before the faulting instruction and
    repeat forever) unless the rule ends the range there (``end=landing``).
    """
    if not rules:
        return SiteSet.empty(), []
    funcs = image.functions
    pool = HandlerPool()
    claimed: dict[int, Rule] = {}
    by_name: dict[str, list[int]] = {}       # for rules naming one function: built once
    rows: list[tuple[int, int, int, int]] = []
    origins: list[str] = []
    unmatched = []
    for rule in rules:
        if rule.handler not in handlers:
            raise ExtableError(f"{rule.origin}: unknown handler {rule.handler!r} "
                               f"(known: {', '.join(sorted(handlers))})")
        handler = handlers[rule.handler]
        word = pool.word(handler)
        if any(c in rule.pattern for c in "*?["):
            found = list(funcs.matching(rule.pattern))
        else:
            if not by_name:
                for i, name in enumerate(funcs.names):
                    by_name.setdefault(name, []).append(i)
            found = list(by_name.get(rule.pattern, ()))
        unwind = handler.kind == Kind.UNWIND
        if unwind and (rule.landing is not None or rule.end != "function"):
            raise ExtableError(f"{rule.origin}: {rule.handler} returns to the function's "
                               "caller: it takes no landing pad and no end=")
        pads = {} if unwind else _pads(image, rule, funcs.names, found)
        taken = {p for i, p in pads.items() if isinstance(p, int) and p != funcs.start[i]}
        hits = [i for i in found if funcs.start[i] not in taken]
        if not hits:
            unmatched.append(f"{rule.origin} matches only the landing pads of the functions "
                             "it matches: no function to cover" if found
                             else f"{rule.origin} matches no function")
        for i in hits:
            name = funcs.names[i]
            start, end = funcs.start[i], funcs.start[i] + funcs.size[i]
            if start in claimed:
                other = claimed[start]
                if (other.handler, other.landing, other.end) != \
                        (rule.handler, rule.landing, rule.end):
                    raise ExtableError(f"overlapping rules: {other.origin} and {rule.origin} "
                                       f"both match {name}")
                continue
            claimed[start] = rule
            if unwind:
                rows.append((start, end, 0, word))      # no landing pad: fixup 0
                origins.append(name)
                continue
            landing = pads[i]
            if isinstance(landing, ExtableError):
                raise landing
            end = _range_end(image, rule, name, start, end, landing)
            rows.append((start, end, landing, word))
            origins.append(name)
    return SiteSet.from_lists(rows, pool.handlers, origins), unmatched


def _range_end(image: ElfImage, rule: Rule, name: str, start: int, end: int,
               landing: int) -> int:
    """Where the range covering [start, end) ends given its landing pad; refuses a pad
    inside it unless the rule ends the range there."""
    if not start <= landing < end:
        return end
    where = f"{rule.origin}: landing pad {landing:#x} ({image.describe(landing)})"
    if landing == start:
        raise ExtableError(f"{where} is {name}'s own start: a fault in {name} would resume "
                           "at its start, run into the fault again and repeat forever")
    if rule.end != "landing":
        raise ExtableError(f"{where} lies inside {name} ({start:#x}..{end:#x}): a fault after "
                           "it would resume before the faulting instruction and repeat "
                           f"forever. To cover {name} only up to the pad ({landing - start} "
                           f"of its {end - start} bytes), add end=landing to the rule")
    return landing


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
        if kind == Kind.UNWIND:
            pad = 0                                  # returns to the caller: no pad
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
        handler = handlers.get(str(r.get("handler", "")))
        unwind = handler is not None and handler.kind == Kind.UNWIND
        needed = {"start", "end"} | (set() if unwind else {"landing"})
        if unknown or not needed <= set(r) or (unwind and "landing" in r):
            raise ExtableError(f"{what}: needs start, end, landing and handler or data (an "
                               "unwind handler: no landing) (unexpected: "
                               f"{', '.join(sorted(unknown)) or 'none'})")
        start = resolve_address(image, r["start"], what)          # type: ignore[arg-type]
        end = resolve_address(image, r["end"], what)              # type: ignore[arg-type]
        landing = 0 if unwind else resolve_address(image, r["landing"], what)  # type: ignore[arg-type]
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
