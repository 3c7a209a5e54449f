"""Fault sites from the three sources: rules, compile-time records and explicit ranges.

Each source yields a :class:`SiteSet`: parallel arrays of ``[start, end)``,
landing pad and data word, with the extended handlers they refer to. The
compiler concatenates them; nothing here sorts or checks overlap.

The columns are numpy arrays, or lists of ints without numpy (``pip install
mcsafe``, no extras), each step done by loops with the same results and errors.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

try:
    import numpy as np
except ModuleNotFoundError as _exc:
    if _exc.name != "numpy":
        raise
    np = None  # type: ignore[assignment]

from .addresses import ADDRESS, resolve_address
from .elf import ElfImage
from .errors import ExtableError
from .model import DATA_EXTENDED, DATA_IMM_SHIFT, NOREG, Handler, Kind, Side, extended_word

RECORD_SECTION = "extable_sites"
RECORD = struct.Struct("<iiiIBBBBBBBxiI32s")
RECORD_MAGIC = 0x31535458          # "XTS1"
assert RECORD.size == 64



@dataclass
class SiteSet:
    """Fault sites as arrays (lists without numpy); ``data`` is a classic word or names
    a handler."""

    start: Any
    end: Any
    landing: Any
    data: Any
    handlers: list[Handler] = field(default_factory=list)
    origins: list[str] | None = None     # a label per site for error messages, if known

    @classmethod
    def empty(cls) -> SiteSet:
        if np is None:
            return cls([], [], [], [], [], [])
        z = np.zeros(0, np.uint64)
        return cls(z, z, z, np.zeros(0, np.uint32), [], [])

    @classmethod
    def from_lists(cls, rows: list[tuple[int, int, int, int]], handlers: list[Handler],
                   origins: list[str]) -> SiteSet:
        start, end, landing, data = ([r[j] for r in rows] for j in range(4))
        return cls.from_columns(start, end, landing, data, handlers, origins)

    @classmethod
    def from_columns(cls, start: list[int], end: list[int], landing: list[int],
                     data: list[int], handlers: list[Handler], origins: list[str]) -> SiteSet:
        """Sites from parallel lists of addresses and data words, one origin each."""
        if np is None:
            columns = [list(map(int, c)) for c in (start, end, landing, data)]
            if not all(0 <= v < (1 << 64) for c in columns for v in c):
                bad = next(o for row, o in zip(zip(*columns), origins)
                           if not all(0 <= v < (1 << 64) for v in row))
                raise ExtableError(f"{bad}: address out of range")
            a, b, c, d = columns
            return cls(a, b, c, [v & 0xFFFFFFFF for v in d], handlers, origins)
        try:                         # numpy refuses a negative or wider than 64 bits
            a, b, c, d = (np.array(c, dtype=np.uint64) for c in (start, end, landing, data))
        except OverflowError:
            bad = next(o for row, o in zip(zip(start, end, landing, data), origins)
                       if not all(0 <= v < (1 << 64) for v in row))
            raise ExtableError(f"{bad}: address out of range") from None
        return cls(a, b, c, d.astype(np.uint32), handlers, origins)

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
    if np is None:
        for s in sets:
            words = [pool.word(h) for h in s.handlers]
            datas += [words[d >> DATA_IMM_SHIFT] if d & DATA_EXTENDED else d for d in s.data]
        origins = None
        if all(s.origins is not None for s in sets):
            origins = [o for s in sets for o in s.origins]  # type: ignore[union-attr]
        return SiteSet([a for s in sets for a in s.start], [a for s in sets for a in s.end],
                       [a for s in sets for a in s.landing], datas, pool.handlers, origins)
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
        if pad is not None and not ADDRESS.match(pad.replace("{name}", "x")):
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


def from_rules(image: ElfImage, rules: list[Rule], handlers: dict[str, Handler],
               ) -> tuple[SiteSet, list[str]]:
    """Sites for every function a rule matches, and why each rule that covers nothing does not.

    Landing pads are compared as addresses, so a symbol, ``symbol+0`` and the number
    have one outcome. A matched function that is another matched function's landing
    pad (``copy_*`` matches ``copy_x_fixup``) is not covered; a pad inside the function
    it covers is refused (a fault would resume before the faulting instruction and
    repeat forever) unless the rule ends the range there (``end=landing``).

    Each rule's functions are handled together, as arrays (a ``*`` rule covers every
    function: 37,000 in libLLVM), not one Python step per function; without numpy,
    by :func:`_from_rules_in_loops`.
    """
    if not rules:
        return SiteSet.empty(), []
    if np is None:
        return _from_rules_in_loops(image, rules, handlers)
    funcs = image.functions
    starts = np.array(funcs.start, np.uint64)
    ends = starts + np.array(funcs.size, np.uint64)        # wraps past 2^64: checked below
    pool = HandlerPool()
    claims = _Claims()
    by_name: dict[str, list[int]] = {}       # for rules naming one function: built once
    parts: list[SiteSet] = []
    unmatched = []
    for rule in rules:
        handler = _rule_handler(rule, handlers)
        word = pool.word(handler)
        if rule.pattern == "*":
            found = np.arange(len(funcs), dtype=np.intp)
        elif any(c in rule.pattern for c in "*?["):
            found = np.fromiter(funcs.matching(rule.pattern), np.intp)
        else:
            if not by_name:
                for i, name in enumerate(funcs.names):
                    by_name.setdefault(name, []).append(i)
            found = np.array(by_name.get(rule.pattern, ()), np.intp)
        unwind = handler.kind == Kind.UNWIND
        matched = len(found)
        failed: dict[int, ExtableError] = {}
        if unwind:
            pads = np.zeros(len(found), np.uint64)         # no landing pad: fixup 0
        else:
            listed, failed = _pads(image, rule, funcs.names, found.tolist())
            pads = np.array(listed, np.uint64)
            # A function that is another matched function's landing pad is not covered.
            ok = np.ones(len(found), bool)
            ok[list(failed)] = False
            taken = np.isin(starts[found], pads[ok & (pads != starts[found])])
            if taken.any():
                kept = np.flatnonzero(~taken)
                found, pads = found[kept], pads[kept]
                failed = {int(j): failed[k] for j, k in enumerate(kept.tolist()) if k in failed}
        if not len(found):
            unmatched.append(_unmatched(rule, matched))
            continue
        new = claims.claim(rule, starts[found], funcs.names, found)
        if failed:
            covered = set(new.tolist())
            first = min((k for k in failed if k in covered), default=None)
            if first is not None:
                raise failed[first]
        hits, pad = found[new], pads[new]
        first_at, last_at = starts[hits], ends[hits]
        wrapped = np.flatnonzero(last_at < first_at)
        if len(wrapped):
            raise ExtableError(f"{funcs.names[int(hits[wrapped[0]])]}: address out of range")
        if not unwind:
            last_at = _end_ranges(image, rule, funcs.names, hits, first_at, last_at, pad)
        parts.append(SiteSet(first_at, last_at, pad, np.full(len(hits), word, np.uint32),
                             pool.handlers, [funcs.names[i] for i in hits.tolist()]))
    parts.append(SiteSet.empty())

    def joined(column: str) -> np.ndarray:
        return np.concatenate([getattr(p, column) for p in parts])

    return SiteSet(joined("start"), joined("end"), joined("landing"), joined("data"),
                   pool.handlers, [o for p in parts for o in p.origins or ()]), unmatched


def _rule_handler(rule: Rule, handlers: dict[str, Handler]) -> Handler:
    """The rule's handler; an unwind rule takes no landing pad and no end=."""
    if rule.handler not in handlers:
        raise ExtableError(f"{rule.origin}: unknown handler {rule.handler!r} "
                           f"(known: {', '.join(sorted(handlers))})")
    handler = handlers[rule.handler]
    if handler.kind == Kind.UNWIND and (rule.landing is not None or rule.end != "function"):
        raise ExtableError(f"{rule.origin}: {rule.handler} returns to the function's "
                           "caller: it takes no landing pad and no end=")
    return handler


def _unmatched(rule: Rule, matched: int) -> str:
    return (f"{rule.origin} matches only the landing pads of the functions it matches: "
            "no function to cover" if matched else f"{rule.origin} matches no function")


def _from_rules_in_loops(image: ElfImage, rules: list[Rule], handlers: dict[str, Handler],
                         ) -> tuple[SiteSet, list[str]]:
    """from_rules without numpy: the same steps, one function at a time."""
    funcs = image.functions
    names = funcs.names
    starts = [int(a) for a in funcs.start]
    ends = [(a + int(z)) % (1 << 64) for a, z in zip(starts, funcs.size)]  # as u64 wraps
    pool = HandlerPool()
    owner: dict[int, int] = {}               # a covered function address -> its rule
    claimed: list[Rule] = []
    by_name: dict[str, list[int]] = {}
    out = SiteSet([], [], [], [], pool.handlers, [])
    unmatched = []
    for rule in rules:
        handler = _rule_handler(rule, handlers)
        word = pool.word(handler)
        if rule.pattern == "*":
            found = list(range(len(names)))
        elif any(c in rule.pattern for c in "*?["):
            found = list(funcs.matching(rule.pattern))
        else:
            if not by_name:
                for i, name in enumerate(names):
                    by_name.setdefault(name, []).append(i)
            found = list(by_name.get(rule.pattern, ()))
        unwind = handler.kind == Kind.UNWIND
        matched = len(found)
        failed: dict[int, ExtableError] = {}
        if unwind:
            pads = [0] * len(found)                       # no landing pad: fixup 0
        else:
            pads, failed = _pads(image, rule, names, found)
            # A function that is another matched function's landing pad is not covered.
            taken = {pad for k, (i, pad) in enumerate(zip(found, pads))
                     if k not in failed and pad != starts[i]}
            kept = [k for k, i in enumerate(found) if starts[i] not in taken]
            if len(kept) < len(found):
                found, pads = [found[k] for k in kept], [pads[k] for k in kept]
                failed = {j: failed[k] for j, k in enumerate(kept) if k in failed}
        if not found:
            unmatched.append(_unmatched(rule, matched))
            continue
        # Claim the first function at each address (an alias covers nothing more),
        # unless an earlier rule with the same handler, pad and end covered it.
        first: dict[int, int] = {}
        for k, i in enumerate(found):
            first.setdefault(starts[i], k)
        key = (rule.handler, rule.landing, rule.end)
        clash = [(k, claimed[owner[a]]) for a, k in first.items() if a in owner
                 and (claimed[owner[a]].handler, claimed[owner[a]].landing,
                      claimed[owner[a]].end) != key]
        if clash:
            k, other = min(clash, key=lambda c: c[0])
            raise ExtableError(f"overlapping rules: {other.origin} and {rule.origin} "
                               f"both match {names[found[k]]}")
        new = sorted(k for a, k in first.items() if a not in owner)
        claimed.append(rule)
        for k in new:
            owner[starts[found[k]]] = len(claimed) - 1
        bad = min((k for k in failed if k in set(new)), default=None)
        if bad is not None:
            raise failed[bad]
        hits = [found[k] for k in new]
        pad = [pads[k] for k in new]
        first_at, last_at = [starts[i] for i in hits], [ends[i] for i in hits]
        wrapped = next((i for i, a, b in zip(hits, first_at, last_at) if b < a), None)
        if wrapped is not None:
            raise ExtableError(f"{names[wrapped]}: address out of range")
        if not unwind:
            last_at = [_range_end(image, rule, names[i], a, b, c)
                       for i, a, b, c in zip(hits, first_at, last_at, pad)]
        out.start += first_at
        out.end += last_at
        out.landing += pad
        out.data += [word] * len(hits)
        out.origins += [names[i] for i in hits]  # type: ignore[operator]
    return out, unmatched


def _pads(image: ElfImage, rule: Rule, names: list[str], found: list[int]
          ) -> tuple[list[int], dict[int, ExtableError]]:
    """Each matched function's landing pad address, and why those that do not resolve do
    not (by position in ``found``)."""
    landing = rule.landing or DEFAULT_LANDING
    if "{name}" not in landing and found:    # one pad for every function: resolve once
        try:
            pad = resolve_address(image, landing, f"{rule.origin}: landing pad for "
                                  f"{names[found[0]]}")
        except ExtableError as exc:
            error = ExtableError(exc.message)
            return [0] * len(found), dict.fromkeys(range(len(found)), error)
        return [pad] * len(found), {}
    out = [0] * len(found)
    failed: dict[int, ExtableError] = {}
    for k, i in enumerate(found):
        try:
            out[k] = resolve_address(image, landing.replace("{name}", names[i]),
                                     f"{rule.origin}: landing pad for {names[i]}")
        except ExtableError as exc:
            failed[k] = ExtableError(exc.message)    # without the image's path twice
    return out, failed


class _Claims:
    """The function addresses the rules cover so far, and which rule covers each."""

    def __init__(self) -> None:
        self.at = np.zeros(0, np.uint64)          # sorted
        self.rule = np.zeros(0, np.intp)          # index into self.rules, per address
        self.rules: list[Rule] = []

    def claim(self, rule: Rule, starts: np.ndarray, names: list[str], found: np.ndarray
              ) -> np.ndarray:
        """Positions in ``starts`` of the functions ``rule`` covers, now claimed for it:
        the first of each address (an alias covers nothing more), unless an earlier rule
        with the same handler, pad and end covered it already. Another rule's claim is
        an error, naming the first function (in ``found``'s order) it is for."""
        at, first = np.unique(starts, return_index=True)
        if len(self.at):
            pos = np.minimum(np.searchsorted(self.at, at), len(self.at) - 1)
            seen = self.at[pos] == at
            key = (rule.handler, rule.landing, rule.end)
            clash = [(int(k), self.rules[r]) for k, r in zip(first[seen], self.rule[pos[seen]])
                     if (self.rules[r].handler, self.rules[r].landing, self.rules[r].end) != key]
            if clash:
                k, other = min(clash, key=lambda c: c[0])
                raise ExtableError(f"overlapping rules: {other.origin} and {rule.origin} "
                                   f"both match {names[int(found[k])]}")
            at, first = at[~seen], first[~seen]
        self.rules.append(rule)
        merged = np.concatenate((self.at, at))
        order = np.argsort(merged, kind="stable")
        self.at = merged[order]
        self.rule = np.concatenate((self.rule, np.full(len(at), len(self.rules) - 1,
                                                       np.intp)))[order]
        return np.sort(first)


def _end_ranges(image: ElfImage, rule: Rule, names: list[str], hits: np.ndarray,
                start: np.ndarray, end: np.ndarray, landing: np.ndarray) -> np.ndarray:
    """The ranges' ends, cut at a landing pad inside a range where the rule says so; a
    pad inside otherwise is refused (:func:`_range_end`)."""
    inside = np.flatnonzero((start <= landing) & (landing < end))
    if not len(inside):
        return end
    end = end.copy()
    for k in inside.tolist():
        end[k] = _range_end(image, rule, names[int(hits[k])], int(start[k]), int(end[k]),
                            int(landing[k]))
    return end


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
