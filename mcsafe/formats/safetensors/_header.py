"""The header of a .safetensors file, read and checked as the safetensors package (0.8)
checks it: the same files accepted, the same refused.

The format: an 8-byte little-endian length N, N bytes of UTF-8 JSON mapping each
tensor's name to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (an optional
``"__metadata__"`` maps strings to strings), then the tensors' bytes. The reference
parses the JSON with serde_json into Rust types and then checks the layout; Python's
json module accepts more than serde_json does, so what it lets through is checked
here, rule by rule, each rule written next to the reason. docs/CHECKPOINTS.md
lists the deliberate differences.
"""

from __future__ import annotations

import json
import math
import re
import struct
from array import array
from itertools import chain
from operator import itemgetter, mul, sub
from typing import TYPE_CHECKING, Any, NamedTuple

from .._read import Stopped, fill
from ._dtypes import DTYPES, Dtype

if TYPE_CHECKING:
    from ...mapped import MappedFile

MAX_HEADER = 100_000_000    # the reference's limit, in bytes
MAX_DEPTH = 127             # serde_json's recursion limit (128) counts the level it refuses
U64 = (1 << 64) - 1         # usize, on the 64-bit machines the reference runs on
I64_MIN = -(1 << 63)
FIELDS = ("dtype", "shape", "data_offsets")
_FIELDS, _FIRST, _SECOND = itemgetter(*FIELDS), itemgetter(0), itemgetter(1)
#: bytes per element of the whole-byte dtypes, which the fast way reads
_BYTES = {name: d.bits // 8 for name, d in DTYPES.items() if d.bits % 8 == 0}

# What sends a header the slow, exact way: a lone surrogate escape, perhaps; a "-0"
# (serde_json reads it as a float); a key with space before its colon.
_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")
_MINUS_ZERO = re.compile(r"-0(?![0-9])")
_SPACED_KEY = re.compile(r'"[ \t\n\r]+:')


class SafetensorsError(ValueError):
    """A .safetensors file that is not well formed, or a request it cannot serve; the
    message is one line naming the file."""


class HeaderError(Exception):
    """What is wrong with a header; the caller names the file."""


class TensorInfo(NamedTuple):
    dtype: Dtype
    shape: tuple[int, ...]
    begin: int          #: data offsets, from the end of the header
    end: int


class Columns(NamedTuple):
    """The tensors, in the order of their data, a list per field (what the loaders
    walk: a TensorInfo object per tensor costs as much as the rest of a header)."""

    names: list[str]
    dtypes: list[Dtype]
    shapes: list[Any]       #: sequences of sizes (the JSON's lists, or tuples)
    begins: list[int]       #: data offsets, from the end of the header
    ends: list[int]

    def info(self, i: int) -> TensorInfo:
        return TensorInfo(self.dtypes[i], tuple(self.shapes[i]), self.begins[i], self.ends[i])


class Header(NamedTuple):
    metadata: dict[str, str] | None
    tensors: Columns
    data_start: int                 #: file offset of the data: 8 + N


def read_header(file: MappedFile, path: str) -> Header:
    """The header of the file, checked; SafetensorsError naming the file if the
    reference would refuse it, MemoryFaultError if a byte of it cannot be read."""
    try:
        return _read(file)
    except HeaderError as exc:
        raise SafetensorsError(f"{path}: not a safetensors file: {exc}") from None
    except Stopped as stop:
        raise stop.error(f"the safetensors header: {stop.where()} at file offset "
                         f"{stop.fault.offset}", path, 0) from None


def _read(file: MappedFile) -> Header:
    size = file.size
    if size < 8:
        raise HeaderError(f"header too small: {size} bytes, shorter than the 8-byte "
                          "header length")
    head = bytearray(8)
    fill(file, memoryview(head), 0)
    (n,) = struct.unpack("<Q", head)
    if n > MAX_HEADER:
        raise HeaderError(f"header too large: {n} bytes (the limit is {MAX_HEADER})")
    if 8 + n > size:
        raise HeaderError(f"invalid header length: {n} bytes, past the end of the "
                          f"{size}-byte file")
    raw = bytearray(n)
    fill(file, memoryview(raw), 8)
    metadata, tensors = parse(bytes(raw))
    end = tensors.ends[-1] if tensors.ends else 0
    if end + 8 + n != size:
        raise HeaderError(f"incomplete metadata, file not fully covered: the tensors' "
                          f"data ends at byte {end + 8 + n}, the file at byte {size}")
    return Header(metadata, tensors, 8 + n)


def parse(raw: bytes) -> tuple[dict[str, str] | None, Columns]:
    """The metadata and the tensors (in data order) of the JSON header `raw`, as the
    reference's serde types read them and its Metadata::validate checks them."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HeaderError(f"invalid UTF-8 in header at byte {exc.start}") from None
    # ("-" in text: a test of one character is a memchr; of two, a string search)
    if not (("-" in text and _MINUS_ZERO.search(text)) or
            ("\\" in text and _SURROGATE.search(text)) or _spaced_key(text)):
        found = _fast(_loads(text, fast=True), text)
        if found is not None:
            return found
    top = _loads(text, fast=False)
    if "\\" in text and _SURROGATE.search(text):
        _no_lone_surrogates(top)
    if type(top) is not tuple:
        raise HeaderError(f"invalid JSON in header: {_kind(top)}, expected an object")
    metadata, tensors = _Reader().header(top)
    _layout(tensors)
    return metadata, Columns(list(tensors), *map(list, zip(*tensors.values()))) if tensors \
        else Columns([], [], [], [], [])


def _spaced_key(text: str) -> bool:
    """Perhaps a key with white space before its colon (white space other than the
    writer's padding at the end): what a plain count of '":' would miss."""
    body = text.rstrip(" ")
    return any(c in body for c in " \t\n\r") and _SPACED_KEY.search(body) is not None


def _fast(top: Any, text: str) -> tuple[dict[str, str] | None, Columns] | None:
    """The header read from Python's dicts (which keep the last of duplicate keys
    silently), in bulk, when it is the usual kind: entries of exactly dtype, shape and
    data_offsets, all valid, whole-byte dtypes, in the order of their data, and no key
    anywhere repeated. That last is proved by a count: every key ends with '":' (the
    caller saw none with a space before its colon), and the text has no more '":'
    than the dicts have keys (one inside a string counts one too many, and sends the
    header the exact way). None: the exact way decides, and says why it refuses.
    (Written as passes of C loops, map and zip: a Python loop per tensor costs as
    much as the JSON.)"""
    if type(top) is not dict:
        return None
    keys = len(top)
    metadata = top.pop("__metadata__", None)
    if metadata is not None:
        if type(metadata) is not dict or not set(map(type, metadata.values())) <= {str}:
            return None
        keys += len(metadata)
    entries = list(top.values())
    if not entries:
        return (metadata, Columns([], [], [], [], [])) if keys == text.count('":') else None
    # The count proves every entry has exactly three keys; the fields' lookups that
    # it has the right ones (a KeyError, or a TypeError for what is not a map); the
    # types, that shapes and offsets are lists of non-negative integers below 2**64
    # (array('Q') refuses floats, negatives and larger numbers, types refuses bools).
    if keys + 3 * len(entries) != text.count('":'):
        return None
    try:
        dtypes, shapes, offsets = zip(*map(_FIELDS, entries))
        if not set(dtypes) <= _BYTES.keys() or set(map(len, offsets)) != {2}:
            return None
        sizes = [*chain.from_iterable(shapes), *chain.from_iterable(offsets)]
        array("Q", sizes)
    except (KeyError, TypeError, OverflowError):
        return None
    if set(map(type, sizes)) != {int}:
        return None
    # Metadata::validate: in data order (sorted by data_offsets), each tensor starts
    # where the one before ends and is exactly as long as its shape and dtype say.
    # Tensors that tile the data in the header's order are in data order already.
    begins, ends = list(map(_FIRST, offsets)), list(map(_SECOND, offsets))
    counts = list(map(math.prod, shapes))
    if 0 in counts and any(len(s) > 2 and 0 in s for s in shapes):
        return None         # a zero may hide an overflow of the product before it
    nbytes = list(map(mul, counts, map(_BYTES.__getitem__, dtypes)))
    if begins[0] != 0 or begins[1:] != ends[:-1] or max(nbytes) > U64 >> 3 or \
            nbytes != list(map(sub, ends, begins)):
        return None
    return metadata, Columns(list(top), list(map(DTYPES.__getitem__, dtypes)), list(shapes),
                             begins, ends)


def _loads(text: str, fast: bool) -> Any:
    """The JSON value; objects as dicts (fast) or as tuples of their (key, value)
    pairs, duplicates kept, with serde_json's numbers (-0 is a float)."""
    try:
        if fast:
            return json.loads(text, parse_float=_float, parse_constant=_constant)
        return json.loads(text, object_pairs_hook=tuple, parse_float=_float,
                          parse_constant=_constant, parse_int=_int)
    except HeaderError:
        raise
    # ValueError: not JSON (JSONDecodeError), or an integer past Python's digit
    # limit (far past serde_json's f64 range); RecursionError: nesting deeper than
    # Python's stack, far deeper than serde_json's limit
    except (ValueError, RecursionError) as exc:
        why = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise HeaderError(f"invalid JSON in header: {why}") from None


class _Reader:
    """The reference's serde types, read from parsed JSON whose objects are tuples of
    their (key, value) pairs, duplicates kept."""

    def header(self, top: Any) -> tuple[dict[str, str] | None, dict[str, TensorInfo]]:
        metadata: dict[str, str] | None = None
        seen_metadata = False
        tensors: dict[str, TensorInfo] = {}
        for name, value in top:
            if name == "__metadata__":
                # a field of the reference's struct: once at most, a map of strings or null
                if seen_metadata:
                    raise HeaderError("invalid JSON in header: duplicate field `__metadata__`")
                seen_metadata = True
                metadata = self.metadata(value)
            else:
                # the other keys fill a HashMap: a later duplicate replaces an earlier
                # one, after both were read as tensor entries
                tensors[name] = self.tensor(name, value)
        # The reference sorts by data_offsets (ties in its hash map's order, which
        # decides nothing: tied tensors are empty, or the file is refused either way).
        order = sorted((t.begin, t.end, name) for name, t in tensors.items())
        return metadata, {name: tensors[name] for _, _, name in order}

    def metadata(self, value: Any) -> dict[str, str] | None:
        if value is None:
            return None
        if type(value) is not tuple:
            raise HeaderError(f"invalid JSON in header: __metadata__ is {_kind(value)}, "
                              "expected a map")
        out = {}
        for key, v in value:
            if type(v) is not str:
                raise HeaderError(f"invalid JSON in header: __metadata__[{key!r}] is "
                                  f"{_kind(v)}, expected a string")
            out[key] = v
        return out

    def tensor(self, name: str, entry: Any) -> TensorInfo:
        """One entry, as serde reads the struct {dtype, shape, data_offsets}: from a
        map (unknown keys ignored, known ones once) or from a sequence of the three."""
        if type(entry) is list:
            if len(entry) != 3:
                raise _bad(name, f"a sequence of {len(entry)}, expected struct TensorInfo "
                                 "with 3 elements")
            return self.fields(name, *entry)
        if type(entry) is not tuple:
            raise _bad(name, f"{_kind(entry)}, expected struct TensorInfo")
        got: dict[str, Any] = {}
        for key, value in entry:
            if key in FIELDS:
                if key in got:
                    raise _bad(name, f"duplicate field `{key}`")
                got[key] = value
            else:
                self.ignored(name, value)
        for key in FIELDS:
            if key not in got:
                raise _bad(name, f"missing field `{key}`")
        return self.fields(name, *(got[k] for k in FIELDS))

    def fields(self, name: str, dtype: Any, shape: Any, offsets: Any) -> TensorInfo:
        if type(dtype) is tuple and len(dtype) == 1 and dtype[0][1] is None:
            dtype = dtype[0][0]         # an enum's unit variant in serde's map form
        if type(dtype) is not str or dtype not in DTYPES:
            raise _bad(name, f"dtype {_short(dtype)} is not one of {', '.join(DTYPES)}")
        if type(shape) is not list or not all(_usize(d) for d in shape):
            raise _bad(name, f"shape {_short(shape)} is not a list of sizes")
        if type(offsets) is not list or len(offsets) != 2 or \
                not all(_usize(o) for o in offsets):
            raise _bad(name, f"data_offsets {_short(offsets)} is not [begin, end]")
        return TensorInfo(DTYPES[dtype], tuple(shape), offsets[0], offsets[1])

    def ignored(self, name: str, value: Any, depth: int = 3) -> None:
        """A value the reference reads and then ignores must still be what
        serde_json can read: nested at most MAX_DEPTH deep, numbers within an f64."""
        if type(value) is int:
            if value > U64 or value < I64_MIN:
                _float(str(value))      # serde_json reads it as an f64: out of range?
        elif type(value) in (list, tuple):
            if depth > MAX_DEPTH:
                raise _bad(name, "recursion limit exceeded")
            for item in value:
                self.ignored(name, item[1] if type(value) is tuple else item, depth + 1)


def _bad(name: str, why: str) -> HeaderError:
    return HeaderError(f"invalid JSON in header: tensor {name!r}: {why}")


def _layout(tensors: dict[str, TensorInfo]) -> None:
    """The reference's Metadata::validate: tensors tile the data from 0 without gaps or
    overlaps, each exactly as long as its dtype and shape say."""
    at = 0
    for name, t in tensors.items():
        if t.begin != at or t.end < t.begin:
            raise HeaderError(f"invalid offset for tensor {name!r}: data_offsets "
                              f"[{t.begin}, {t.end}], expected to start at {at}")
        at = t.end
        count = 1
        for d in t.shape:           # usize::checked_mul, left to right
            count *= d
            if count > U64:
                raise HeaderError(f"tensor {name!r}: overflow computing buffer size from "
                                  f"shape {list(t.shape)}")
        bits = count * t.dtype.bits
        if bits > U64:
            raise HeaderError(f"tensor {name!r}: overflow computing buffer size from shape "
                              f"{list(t.shape)} and element type {t.dtype.name}")
        if bits % 8:
            raise HeaderError(f"tensor {name!r}: {t.dtype.name} {list(t.shape)} does not "
                              "end at a byte boundary")
        if bits // 8 != t.end - t.begin:
            raise HeaderError(f"tensor {name!r}: {t.dtype.name} {list(t.shape)} needs "
                              f"{bits // 8} bytes, data_offsets give {t.end - t.begin}")


def _usize(value: Any) -> bool:
    return type(value) is int and 0 <= value <= U64


def _no_lone_surrogates(value: Any) -> None:
    """serde_json refuses a \\uD800-\\uDFFF escape that is not half of a pair; Python's
    json decodes it into a string that cannot be encoded."""
    stack = [value]
    while stack:
        v = stack.pop()
        if type(v) is str:
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                raise HeaderError("invalid JSON in header: lone surrogate in hex escape "
                                  f"in {v[:40]!r}") from None
        elif type(v) is list:
            stack.extend(v)
        elif type(v) is tuple:
            for key, item in v:
                stack.append(key)
                stack.append(item)


def _int(text: str) -> int | float:
    """serde_json's integers: a u64, else a negative i64, else an f64 (-0 included)."""
    if text == "-0":
        return -0.0
    if len(text) <= 20:
        value = int(text)
        if I64_MIN <= value <= U64:
            return value
    return _float(text)


def _float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise HeaderError(f"invalid JSON in header: number out of range: {text[:40]}")
    return value


def _constant(text: str) -> float:
    raise HeaderError(f"invalid JSON in header: {text} is not JSON")


def _kind(value: Any) -> str:
    return {tuple: "a map", list: "a sequence", str: "a string", bool: "a boolean",
            int: "an integer", float: "a float", type(None): "null"}.get(type(value),
                                                                            type(value).__name__)


def _short(value: Any) -> str:
    text = json.dumps(value, default=str) if type(value) is not tuple else _kind(value)
    return text if len(text) <= 80 else text[:77] + "..."
