"""mcsafe.formats.safetensors against the safetensors package (0.8), its reference:
the same files accepted and refused, the same keys, metadata, dtypes, shapes and bytes,
the same slices. Files come from the package itself (every dtype it writes, 0-d and
empty tensors, metadata, a 100,000-tensor header) and from hostile headers written by
hand: the differences issue 19 found, the reference's own validation rules one by one,
and random ones (hypothesis)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import safetensors
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import TensorSpec, serialize_file
from safetensors.numpy import save_file

from mcsafe import inject
from mcsafe.formats import _gather
from mcsafe.formats.safetensors import _open
from mcsafe.formats.safetensors import DTYPES, SafetensorsError, safe_open
from safetensors_oracle import Opened, Refused, assert_same, ours, reference

SETTINGS = settings(max_examples=150, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])

#: numpy dtypes for the package's writer, by safetensors dtype (the packed F4 and F6
#: have none: F4 is written through TensorSpec, F6 by hand).
WRITABLE = {"BOOL": np.bool_, "U8": np.uint8, "I8": np.int8, "I16": "<i2", "U16": "<u2",
            "F16": "<f2", "I32": "<i4", "U32": "<u4", "F32": "<f4", "C64": "<c8",
            "F64": "<f8", "I64": "<i8", "U64": "<u8", "BF16": ml_dtypes.bfloat16,
            "F8_E5M2": ml_dtypes.float8_e5m2, "F8_E4M3": ml_dtypes.float8_e4m3fn,
            "F8_E8M0": ml_dtypes.float8_e8m0fnu, "F8_E4M3FNUZ": ml_dtypes.float8_e4m3fnuz,
            "F8_E5M2FNUZ": ml_dtypes.float8_e5m2fnuz}


def write(path: Path, header: bytes | str | dict | list, data: bytes = b"") -> Path:
    """A file whose header is exactly `header` (JSON text as given, or dumped)."""
    if isinstance(header, (dict, list)):
        header = json.dumps(header)
    raw = header.encode() if isinstance(header, str) else header
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def entry(dtype: str = "U8", shape: object = (4,), offsets: object = (0, 4)) -> dict:
    return {"dtype": dtype, "shape": list(shape) if isinstance(shape, tuple) else shape,
            "data_offsets": list(offsets) if isinstance(offsets, tuple) else offsets}


# -- files the package writes ----------------------------------------------------

def test_every_dtype_the_package_writes(tmp_path) -> None:
    rng = np.random.default_rng(19)
    tensors = {}
    for name, dtype in WRITABLE.items():
        raw = rng.integers(0, 256, 6 * np.dtype(dtype).itemsize, dtype=np.uint8).tobytes()
        tensors[f"t.{name}"] = np.frombuffer(raw, dtype).reshape(2, 3)
        tensors[f"scalar.{name}"] = np.frombuffer(raw[:np.dtype(dtype).itemsize], dtype
                                                  ).reshape(())
        tensors[f"empty.{name}"] = np.zeros((0, 5), dtype)
    path = tmp_path / "all.safetensors"
    save_file(tensors, str(path), metadata={"format": "np", "step": "7"})
    mine = assert_same(path)
    assert isinstance(mine, Opened) and mine.metadata == {"format": "np", "step": "7"}
    with safe_open(path, "numpy") as f:
        for name, want in tensors.items():
            got = f.get_tensor(name)
            # BF16 and F8 come back as ml_dtypes arrays: the numpy dtype JAX uses
            assert got.dtype == want.dtype and got.shape == want.shape, name
            assert got.tobytes() == want.tobytes(), name
    assert {n.split(".")[1] for n in tensors} == set(DTYPES) - {"F4", "F6_E2M3", "F6_E3M2"}


def test_packed_f4_fails_alone_as_in_the_reference(tmp_path) -> None:
    packed = np.arange(6, dtype=np.uint8)
    f32 = np.arange(3, dtype=np.float32)
    path = tmp_path / "f4.safetensors"
    serialize_file({"w": TensorSpec(dtype="float4_e2m1fn_x2", shape=[2, 3],
                                    data_ptr=packed.ctypes.data, data_len=6),
                    "b": TensorSpec(dtype="float32", shape=[3], data_ptr=f32.ctypes.data,
                                    data_len=12)}, str(path))
    mine = assert_same(path)
    assert isinstance(mine, Opened) and mine.dtypes["w"] == "F4" and mine.shapes["w"] == [2, 6]
    assert mine.data["w"] is None and mine.data["b"] == f32.tobytes()
    with safe_open(path, "np") as f, pytest.raises(SafetensorsError, match="tensor 'w' .*F4"):
        f.get_tensor("w")


def test_f6_written_by_hand(tmp_path) -> None:
    path = write(tmp_path / "f6.safetensors",
                 {"a": entry("F6_E2M3", (4,), (0, 3)), "b": entry("F6_E3M2", (8,), (3, 9))},
                 bytes(range(9)))
    mine = assert_same(path)
    assert isinstance(mine, Opened) and mine.data == {"a": None, "b": None}


names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
shapes = st.lists(st.integers(0, 4), max_size=3)


@st.composite
def tensor_dicts(draw: st.DrawFn) -> dict[str, np.ndarray]:
    out = {}
    for name in draw(st.lists(names, max_size=6, unique=True)):
        dtype = np.dtype(WRITABLE[draw(st.sampled_from(sorted(WRITABLE)))])
        shape = draw(shapes)
        count = int(np.prod(shape, dtype=np.int64))
        raw = draw(st.binary(min_size=count * dtype.itemsize, max_size=count * dtype.itemsize))
        out[name] = np.frombuffer(raw, dtype).reshape(shape)
    return out


@SETTINGS
@given(tensors=tensor_dicts(),
       metadata=st.none() | st.dictionaries(names, names, max_size=3))
def test_random_files_the_package_writes(tmp_path, tensors, metadata) -> None:
    path = tmp_path / "random.safetensors"
    save_file(tensors, str(path), metadata=metadata)
    mine = assert_same(path)
    if not tensors and metadata == {}:
        # the package's writer gives '{},"__metadata__":{}}': both refuse it
        assert isinstance(mine, Refused)
    else:
        assert isinstance(mine, Opened) and mine.keys == sorted(tensors)


def test_a_header_of_100k_tensors(tmp_path) -> None:
    tensors = {f"layer.{i}.w": np.full(i % 3, i % 251, np.uint8) for i in range(100_000)}
    path = tmp_path / "many.safetensors"
    save_file(tensors, str(path), metadata={"n": "100000"})
    theirs = reference(path)
    with safe_open(path, "np") as f:
        assert isinstance(theirs, Opened)
        assert f.keys() == theirs.keys and len(f) == 100_000
        assert f.metadata() == {"n": "100000"}
        for name in theirs.keys[::997]:
            assert f.get_tensor(name).tobytes() == theirs.data[name]
        assert [n for n in f.offset_keys() if tensors[n].size] == \
            [n for n in theirs.offset_keys if tensors[n].size]


# -- hostile files: what issue 19 found, and the reference's rules one by one ------

T = entry()
HOSTILE = {
    # issue 19, "Header validation differs from the reference"
    "utf-16 header": (json.dumps({"a": T}).encode("utf-16"), b"abcd"),
    "utf-8 BOM": (b"\xef\xbb\xbf" + json.dumps({"a": T}).encode(), b"abcd"),
    "__metadata__ []": ({"__metadata__": [], "a": T}, b"abcd"),
    "__metadata__ false": ({"__metadata__": False, "a": T}, b"abcd"),
    "__metadata__ 0": ({"__metadata__": 0, "a": T}, b"abcd"),
    '__metadata__ ""': ({"__metadata__": "", "a": T}, b"abcd"),
    "bytes after the last tensor": ({"a": T}, b"abcdef"),
    "a tensor past the end of the file": ({"a": entry("U8", (4,), (0, 4))}, b"ab"),
    "a huge tensor past the end": ({"a": entry("F64", (1 << 40, 1 << 10), (0, 1 << 53))}, b""),
    "duplicate keys (accepted: the last wins)": (
        '{"a": {"dtype":"U8","shape":[2],"data_offsets":[0,2]}, '
        '"a": {"dtype":"U8","shape":[4],"data_offsets":[0,4]}}', b"abcd"),
    "duplicate keys, the last one wrong": (
        '{"a": {"dtype":"U8","shape":[4],"data_offsets":[0,4]}, '
        '"a": {"dtype":"U8","shape":[2],"data_offsets":[0,2]}}', b"abcd"),
    "a BF16 tensor beside an F32 one": (
        {"a": entry("BF16", (2,), (0, 4)), "b": entry("F32", (1,), (4, 8))}, b"abcd\0\0\x80?"),
    # the JSON serde_json reads, and Python's json module reads differently
    "NaN in an ignored field": ('{"a": {"dtype":"U8","shape":[4],"data_offsets":[0,4],'
                                '"x": NaN}}', b"abcd"),
    "Infinity": ('{"a": {"dtype":"U8","shape":[4],"data_offsets":[0,4],"x": -Infinity}}',
                 b"abcd"),
    "1e400": ('{"a": {"dtype":"U8","shape":[4],"data_offsets":[0,4],"x": 1e400}}', b"abcd"),
    "a 400-digit integer": ('{"a": {"dtype":"U8","shape":[4],"data_offsets":[0,4],"x": '
                            + "9" * 400 + "}}", b"abcd"),
    "a 300-digit integer": ('{"a": {"dtype":"U8","shape":[4],"data_offsets":[0,4],"x": '
                            + "9" * 300 + "}}", b"abcd"),
    "-0 as an offset": ('{"a": {"dtype":"U8","shape":[4],"data_offsets":[-0,4]}}', b"abcd"),
    "-0 ignored": ('{"a": {"dtype":"U8","shape":[4],"data_offsets":[0,4],"x":-0}}', b"abcd"),
    "4.0 as a size": ('{"a": {"dtype":"U8","shape":[4.0],"data_offsets":[0,4]}}', b"abcd"),
    "4e0 as a size": ('{"a": {"dtype":"U8","shape":[4e0],"data_offsets":[0,4]}}', b"abcd"),
    "2**64 as a size": ('{"a": {"dtype":"U8","shape":[18446744073709551616],'
                        '"data_offsets":[0,4]}}', b"abcd"),
    "true as a size": ({"a": entry("U8", [True, 4])}, b"abcd"),
    "a lone high surrogate": (r'{"\ud800": {"dtype":"U8","shape":[4],"data_offsets":[0,4]}}',
                              b"abcd"),
    "a lone low surrogate in metadata": (
        r'{"__metadata__": {"k": "\udc00"}, "a": {"dtype":"U8","shape":[4],'
        r'"data_offsets":[0,4]}}', b"abcd"),
    "a surrogate pair": (r'{"\ud83d\ude00": {"dtype":"U8","shape":[4],"data_offsets":[0,4]}}',
                         b"abcd"),
    "an escaped backslash before ud800": (
        r'{"\\ud800": {"dtype":"U8","shape":[4],"data_offsets":[0,4]}}', b"abcd"),
    "nesting 127 deep": ('{"a": {"dtype":"U8","shape":[4],"data_offsets":[0,4],"x": '
                         + "[" * 125 + "]" * 125 + "}}", b"abcd"),
    "nesting 128 deep": ('{"a": {"dtype":"U8","shape":[4],"data_offsets":[0,4],"x": '
                         + "[" * 126 + "]" * 126 + "}}", b"abcd"),
    "nesting 100000 deep": ("[" * 100000 + "]" * 100000, b""),
    "a control character in a name": ('{"a\x01": {"dtype":"U8","shape":[4],'
                                      '"data_offsets":[0,4]}}', b"abcd"),
    "DEL in a name": ('{"a\x7f": {"dtype":"U8","shape":[4],"data_offsets":[0,4]}}', b"abcd"),
    "invalid UTF-8": (b'{"a\xff": {"dtype":"U8","shape":[4],"data_offsets":[0,4]}}', b"abcd"),
    "an overlong UTF-8 sequence": (b'{"\xc0\xaf": {"dtype":"U8","shape":[4],'
                                   b'"data_offsets":[0,4]}}', b"abcd"),
    "trailing spaces (the writer's padding)": (json.dumps({"a": T}) + "   ", b"abcd"),
    "trailing NUL": (json.dumps({"a": T}) + "\0", b"abcd"),
    "a trailing comma": ('{"a": {"dtype":"U8","shape":[4],"data_offsets":[0,4]},}', b"abcd"),
    "a comment": ("/* x */" + json.dumps({"a": T}), b"abcd"),
    # serde's forms of a struct and an enum
    "a tensor as a sequence": ('{"a": ["U8", [4], [0, 4]]}', b"abcd"),
    "a sequence of 2": ('{"a": ["U8", [4]]}', b"abcd"),
    "a sequence of 4": ('{"a": ["U8", [4], [0, 4], 1]}', b"abcd"),
    "a dtype as a map": ('{"a": {"dtype": {"U8": null}, "shape": [4], '
                         '"data_offsets": [0, 4]}}', b"abcd"),
    "a dtype map with a value": ('{"a": {"dtype": {"U8": []}, "shape": [4], '
                                 '"data_offsets": [0, 4]}}', b"abcd"),
    "a dtype map of two": ('{"a": {"dtype": {"U8": null, "I8": null}, "shape": [4], '
                           '"data_offsets": [0, 4]}}', b"abcd"),
    "data_offsets as a map": ('{"a": {"dtype":"U8","shape":[4],'
                              '"data_offsets":{"0":0,"1":4}}}', b"abcd"),
    "a field twice": ('{"a": {"dtype":"U8","dtype":"U8","shape":[4],"data_offsets":[0,4]}}',
                      b"abcd"),
    "an unknown field twice": ('{"a": {"dtype":"U8","shape":[4],"data_offsets":[0,4],'
                               '"x":1,"x":[2]}}', b"abcd"),
    "__metadata__ twice": ('{"__metadata__": {}, "__metadata__": {}, "a": '
                           '{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}', b"abcd"),
    "a metadata key twice": ('{"__metadata__": {"k": "1", "k": "2"}, "a": '
                             '{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}', b"abcd"),
    "__metadata__ null": ({"__metadata__": None, "a": T}, b"abcd"),
    "__metadata__ {}": ({"__metadata__": {}, "a": T}, b"abcd"),
    "a metadata value that is a number": ({"__metadata__": {"k": 1}, "a": T}, b"abcd"),
    "a metadata value null": ({"__metadata__": {"k": None}, "a": T}, b"abcd"),
    "a missing field": ({"a": {"dtype": "U8", "shape": [4]}}, b"abcd"),
    "a field in capitals": ({"a": {"DTYPE": "U8", "shape": [4], "data_offsets": [0, 4]}},
                            b"abcd"),
    "dtype null": ({"a": entry(None)}, b"abcd"),
    "dtype in lower case": ({"a": entry("u8")}, b"abcd"),
    "an unknown dtype": ({"a": entry("F128")}, b"abcd"),
    # Metadata::validate and the buffer check
    "a gap": ({"a": entry("U8", (2,), (0, 2)), "b": entry("U8", (1,), (3, 4))}, b"abcd"),
    "an overlap": ({"a": entry("U8", (2,), (0, 2)), "b": entry("U8", (3,), (1, 4))}, b"abcd"),
    "offsets reversed": ({"a": entry("U8", (0,), (4, 0))}, b"abcd"),
    "the same bytes twice": ({"a": entry("U8", (4,), (0, 4)), "b": entry("U8", (4,), (0, 4))},
                             b"abcd"),
    "two empty tensors at one offset": ({"a": entry("U8", (0,), (0, 0)),
                                         "b": entry("U8", (0,), (0, 0))}, b""),
    "an empty tensor between two": ({"a": entry("U8", (2,), (0, 2)),
                                     "e": entry("F32", (0, 3), (2, 2)),
                                     "b": entry("U8", (2,), (2, 4))}, b"abcd"),
    "a size that does not match": ({"a": entry("F32", (2,), (0, 4))}, b"abcd"),
    "shape overflowing u64": ({"a": entry("U8", (1 << 32, 1 << 32), (0, 4))}, b"abcd"),
    "overflow, then a zero": ({"a": entry("U8", (1 << 32, 1 << 32, 0), (0, 0))}, b""),
    "a zero, then overflow": ({"a": entry("U8", (0, 1 << 32, 1 << 32), (0, 0))}, b""),
    "bits overflowing u64": ({"a": entry("F64", (1 << 61,), (0, 0))}, b""),
    "a dimension of 2**64-1 beside a 0": ({"a": entry("U8", ((1 << 64) - 1, 0), (0, 0))}, b""),
    "F4 ending mid-byte": ({"a": entry("F4", (3,), (0, 2))}, b"ab"),
    "F6 of 4": ({"a": entry("F6_E3M2", (4,), (0, 3))}, b"abc"),
    "an empty object": ({}, b""),
    "an empty object and data": ({}, b"ab"),
    "metadata only": ({"__metadata__": {"a": "b"}}, b""),
    "a list": ([], b""),
    "a name that is empty": ({"": T}, b"abcd"),
    "a name like __metadata__x": ({"__metadata__x": T}, b"abcd"),
    "whitespace around everything": (' \t\n{ "a" :\r{"dtype" : "U8" , "shape":[ 4 ],'
                                     '"data_offsets":[0,4]} } \n', b"abcd"),
    "an empty header": (b"", b""),
    "a header of spaces": (b"        ", b""),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_headers_as_the_reference(tmp_path, case) -> None:
    header, data = HOSTILE[case]
    assert_same(write(tmp_path / "hostile.safetensors", header, data))


@pytest.mark.parametrize("raw, why", [
    (b"", "header too small"),
    (b"\x02\0\0\0\0\0\0", "header too small"),
    (b"\xff" * 8 + b"{}", "header too large"),
    (struct.pack("<Q", 100_000_001) + b"{}", "header too large"),
    (struct.pack("<Q", 100) + b"{}", "invalid header length"),
])
def test_the_length_word(tmp_path, raw, why) -> None:
    path = tmp_path / "short.safetensors"
    path.write_bytes(raw)
    mine = assert_same(path)
    assert isinstance(mine, Refused) and why in mine.message


# -- random hostile headers ---------------------------------------------------------

class Raw(str):
    """JSON text to put in a header as it is."""


sizes = st.one_of(st.integers(0, 6), st.integers(0, 6), st.integers(0, 6), st.sampled_from([Raw(t) for t in (
    "-0", "4.0", "1e1", "true", "-1", "18446744073709551616", "null")]))
dtypes = st.one_of(st.sampled_from(sorted(DTYPES)), st.sampled_from(sorted(DTYPES)),
                   st.sampled_from(["u8", "X", "", "BF"]))


def j(value: object) -> str:
    return value if isinstance(value, Raw) else json.dumps(value)


@st.composite
def hostile_headers(draw: st.DrawFn) -> tuple[str, bytes]:
    """A header built from pieces serde_json and Python's json may read differently,
    tiling the data correctly more often than not, and data of about the right size."""
    parts, at = [], 0
    for name in draw(st.lists(st.sampled_from(["a", "b", "c", "__metadata__"]), max_size=4)):
        if name == "__metadata__":
            meta = draw(st.sampled_from(['null', '{}', '{"k": "v"}', '{"k": 1}', '[]',
                                         '{"k": "v", "k": "w"}', '"x"']))
            parts.append(f'"__metadata__": {meta}')
            continue
        dtype = draw(dtypes)
        shape = draw(st.lists(sizes, max_size=3))
        count = 1
        for d in shape:
            count *= d if isinstance(d, int) else 1
        bits = DTYPES[dtype].bits if dtype in DTYPES else 8
        size = count * bits // 8
        begin = draw(st.sampled_from([at, at, at, at + 1, 0]))
        end = begin + size + draw(st.sampled_from([0, 0, 0, 1, -1]))
        at = max(at, end)
        dt = j(dtype) if draw(st.booleans()) else '{"%s": null}' % dtype
        fields = [f'"dtype": {dt}', f'"shape": [{", ".join(j(d) for d in shape)}]',
                  f'"data_offsets": [{j(begin)}, {j(end)}]']
        extra = draw(st.sampled_from([""] * 8 + ['"x": 1', '"x": [[[]]]', '"x": -0', '"x": NaN',
                                      '"dtype": "U8"', '"x": 1e999', '"x": "\\ud800"']))
        if extra:
            fields.append(extra)
        if draw(st.booleans()):
            fields = draw(st.permutations(fields))
        value = "{" + ", ".join(fields) + "}"
        if draw(st.integers(0, 9)) == 0:
            value = f'[{dt}, [{", ".join(j(d) for d in shape)}], [{j(begin)}, {j(end)}]]'
        parts.append(f'"{name}": {value}')
    header = "{" + ", ".join(parts) + "}" + " " * draw(st.integers(0, 7))
    data = bytes(max(0, at + draw(st.sampled_from([0, 0, 0, 1, -1]))))
    return header, data


@SETTINGS
@given(case=hostile_headers())
def test_random_hostile_headers_as_the_reference(tmp_path, case) -> None:
    header, data = case
    assert_same(write(tmp_path / "random.safetensors", header, data))


# -- get_slice ------------------------------------------------------------------------

indexes = st.one_of(
    st.integers(-6, 6),
    st.builds(slice, st.none() | st.integers(-1, 6), st.none() | st.integers(-1, 7),
              st.none() | st.integers(-1, 3)),
    st.just(Ellipsis), st.just(None), st.just(1.0), st.just(True), st.just(1 << 31),
)
keys = st.one_of(indexes, st.lists(indexes, max_size=4).map(tuple), st.just([]),
                 st.just([0]), st.just(()))


@pytest.fixture(params=[(_gather.SPAN, inject.PAGE), (64, inject.PAGE), (1, inject.PAGE),
                        (_gather.SPAN, 1), (64, 16)],
                ids=["16MiB-page", "64B-page", "1B-page", "run-by-run", "64B-16B"])
def span(request, monkeypatch) -> tuple[int, int]:
    """How many bytes a slice's span reads at most, and the gap between runs past
    which they are read one by one: small ones make these small tensors take every
    way a large tensor's slice takes."""
    monkeypatch.setattr(_gather, "SPAN", request.param[0])
    monkeypatch.setattr(_open, "PAGE", request.param[1])
    return request.param


@SETTINGS
@given(shape=st.lists(st.integers(0, 5), max_size=3), key=keys,
       dtype=st.sampled_from(["F32", "U8", "BF16", "C64"]))
def test_slices_as_the_reference(tmp_path, span, shape, key, dtype) -> None:
    np_dtype = np.dtype(WRITABLE[dtype])
    count = int(np.prod(shape, dtype=np.int64))
    tensor = np.frombuffer(np.arange(count * np_dtype.itemsize, dtype=np.uint8).tobytes(),
                           np_dtype).reshape(shape)
    path = tmp_path / "slice.safetensors"
    save_file({"t": tensor}, str(path))
    try:
        with safetensors.safe_open(str(path), "np") as f:
            # the reference's numpy cannot build BF16: slice a U16 view of the same bytes
            theirs = f.get_slice("t")[key] if dtype != "BF16" else None
    except Exception as exc:        # noqa: BLE001 - its refusals are of several types
        theirs = exc
    if dtype == "BF16":
        other = tmp_path / "u16.safetensors"
        save_file({"t": tensor.view(np.uint16)}, str(other))
        try:
            with safetensors.safe_open(str(other), "np") as f:
                theirs = f.get_slice("t")[key]
        except Exception as exc:    # noqa: BLE001
            theirs = exc
    try:
        with safe_open(path, "np") as f:
            mine = f.get_slice("t")[key]
    except (SafetensorsError, TypeError, OverflowError) as exc:
        mine = exc
    if isinstance(theirs, Exception) or isinstance(mine, Exception):
        assert isinstance(theirs, Exception) and isinstance(mine, Exception), \
            f"{shape}[{key!r}]: reference {theirs!r}, mcsafe {mine!r}"
        if isinstance(mine, SafetensorsError):
            assert str(path) in str(mine) and "\n" not in str(mine)
        return
    assert mine.shape == theirs.shape and mine.tobytes() == theirs.tobytes()
    assert mine.dtype == np_dtype
    items = key if isinstance(key, tuple) else (key,)
    if not isinstance(key, list) and not any(type(i) is bool for i in items):
        # where numpy indexes the same (a bool is an int to the reference)
        assert mine.tobytes() == np.ascontiguousarray(tensor[key]).tobytes()
