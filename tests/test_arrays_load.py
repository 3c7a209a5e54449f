"""mcsafe.arrays.load against numpy.load, its reference: every dtype numpy.save writes,
Fortran order, structured arrays, the three .npy versions, pickles and object arrays
(allow_pickle), .npz archives stored and compressed, hostile headers; and a bad page
(a FUSE file that fails for every reader) naming the array and the element."""

from __future__ import annotations

import io
import os
import pickle
import re
import struct
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mcsafe import MemoryFaultError, inject
from mcsafe.arrays import load
from mcsafe.formats import npy
from mcsafe.formats.npy import NpzFile, UnprotectedMemberWarning

PAGE = inject.PAGE
SETTINGS = settings(max_examples=150, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


def same(mine: np.ndarray, theirs: np.ndarray) -> None:
    assert type(mine) is np.ndarray and mine.dtype == theirs.dtype
    assert mine.shape == theirs.shape
    assert mine.flags.c_contiguous == theirs.flags.c_contiguous
    assert mine.flags.f_contiguous == theirs.flags.f_contiguous
    assert mine.tobytes(order="A") == theirs.tobytes(order="A")
    assert mine.flags.writeable


scalar_dtypes = st.one_of(hnp.boolean_dtypes(), hnp.integer_dtypes(), hnp.unsigned_integer_dtypes(),
                          hnp.floating_dtypes(sizes=(16, 32, 64, 128)),
                          hnp.complex_number_dtypes(), hnp.datetime64_dtypes(),
                          hnp.timedelta64_dtypes(), hnp.byte_string_dtypes(),
                          hnp.unicode_string_dtypes())
dtypes = st.one_of(scalar_dtypes, hnp.array_dtypes(scalar_dtypes, min_size=1, max_size=3),
                   st.sampled_from([np.dtype("V7"), np.dtype([("a", "<i4", (2, 3))]),
                                    np.dtype([("x", [("y", ">f8"), ("z", "S2")])])]))


@SETTINGS
@given(dtype=dtypes, shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5),
       order=st.sampled_from("CF"), data=st.data())
def test_every_dtype_numpy_save_writes(tmp_path, dtype, shape, order, data) -> None:
    count = int(np.prod(shape))
    raw = data.draw(st.binary(min_size=count * dtype.itemsize, max_size=count * dtype.itemsize))
    array = np.frombuffer(raw, dtype).reshape(shape, order=order) if dtype.itemsize else \
        np.zeros(shape, dtype, order=order)
    path = tmp_path / "a.npy"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # numpy warns of some structured dtypes
        np.save(path, array)
    same(load(path), np.load(path))


@pytest.mark.parametrize("version", [(1, 0), (2, 0), (3, 0)])
def test_every_npy_version(tmp_path, version) -> None:
    array = np.zeros((3, 2), dtype=[("é" if version == (3, 0) else "e", "<i4"), ("b", "S3")])
    array["b"] = b"abc"
    path = tmp_path / "v.npy"
    with open(path, "wb") as f:
        np.lib.format.write_array(f, np.asfortranarray(array), version=version)
    assert path.read_bytes()[6:8] == bytes(version)
    same(load(path), np.load(path))


def test_objects_and_pickles_need_allow_pickle(tmp_path) -> None:
    objects = tmp_path / "o.npy"
    np.save(objects, np.array([1, "two", None, {"x": 3}], dtype=object))
    pickled = tmp_path / "p.pkl"
    pickled.write_bytes(pickle.dumps({"a": [1, 2]}))
    for path, why in ((objects, "object arrays cannot be loaded"),
                      (pickled, "pickled")):
        with pytest.raises(ValueError):
            np.load(path)
        with pytest.raises(ValueError, match=why) as info:
            load(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert list(load(objects, allow_pickle=True)) == list(np.load(objects, allow_pickle=True))
    assert load(pickled, allow_pickle=True) == {"a": [1, 2]}


def header(text: bytes, version: tuple[int, int] = (1, 0), pad: bool = True) -> bytes:
    if pad:
        text += b" " * (-(len(text) + 11) % 64) + b"\n"
    length = struct.pack("<H" if version == (1, 0) else "<I", len(text))
    return b"\x93NUMPY" + bytes(version) + length + text


GOOD = b"{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }"
HOSTILE = {
    "a good one": header(GOOD) + bytes(16),
    "version 4.0": header(GOOD, (4, 0)) + bytes(16),
    "not a dict": header(b"[1, 2]") + bytes(16),
    "a missing key": header(b"{'descr': '<f8', 'shape': (2,)}") + bytes(16),
    "an extra key": header(GOOD[:-1] + b"'x': 1}") + bytes(16),
    "a bad descr": header(b"{'descr': 'zz', 'fortran_order': False, 'shape': (2,)}") + bytes(16),
    "a shape list": header(b"{'descr': '<f8', 'fortran_order': False, 'shape': [2]}") + bytes(16),
    "fortran_order 1": header(b"{'descr': '<f8', 'fortran_order': 1, 'shape': (2,)}") + bytes(16),
    "python code": header(b"{'descr': __import__('os').getcwd()}") + bytes(16),
    "a header past max_header_size": header(b"{'descr': '<f8', 'fortran_order': False, "
                                            b"'shape': (2,), }" + b" " * 20000) + bytes(16),
    "the header cut": header(GOOD)[:30],
    "just the magic": b"\x93NUMPY",
    "a negative dimension": header(b"{'descr': '<f8', 'fortran_order': False, "
                                   b"'shape': (-2,)}") + bytes(16),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_headers_as_numpy(tmp_path, case) -> None:
    path = tmp_path / "h.npy"
    path.write_bytes(HOSTILE[case])
    try:
        theirs = np.load(path)
    except (ValueError, EOFError) as exc:
        with pytest.raises(type(exc)) as info:
            load(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)
    else:
        same(load(path), theirs)


class _Bytes(io.BytesIO):
    """A header reader as mcsafe's own: read() and a settable pos."""
    pos = property(io.BytesIO.tell, io.BytesIO.seek)


def _read_header(read, raw: bytes, version: tuple[int, int], max_header_size: int) -> object:
    """What a header reader makes of raw: (shape, fortran_order, dtype), or the
    exception it raises (type and message), warnings recorded."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        try:
            got: object = read(_Bytes(raw), version, max_header_size)
        except Exception as exc:
            got = (type(exc), re.sub(" at 0x[0-9a-f]+", "", str(exc)))    # an ast node's
    return got, [(w.category, str(w.message)) for w in seen]


_NUMERALS = st.one_of(st.integers(-3, 2**70).map(str), st.sampled_from(
    ["01", "0x10", "1_0", "1.0", "True", "-0", " 3", "9" * 5000]))
_SHAPES = st.lists(_NUMERALS, max_size=4).flatmap(lambda dims: st.sampled_from(
    [", ".join(dims), ", ".join(dims) + ",", ",".join(dims), ", ".join(dims) + ", "]))


@SETTINGS
@given(descr=st.one_of(st.sampled_from(["<f8", "|b1", ">i2", "<U3", "|S0", "|V4", "O", "<M8[ns]",
                                        "zz", "", "f8 ", " <f8", "<f8\\x", "<f\u00e98", "é",
                                        '<f"8', "<m8[D]", "|u1", "<c16"]),
                       st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126),
                               max_size=6)),
       fortran=st.sampled_from(["True", "False", "1", "true", "None"]),
       shape=_SHAPES, form=st.sampled_from(["{'descr': %s, 'fortran_order': %s, 'shape': (%s), }",
                                           "{'descr': %s, 'fortran_order': %s, 'shape': (%s)}",
                                           "{'descr':%s, 'fortran_order': %s, 'shape': (%s), }",
                                           "{'shape': (%3$s), 'descr': %1$s, 'fortran_order': %2$s, }",
                                           " {'descr': %s, 'fortran_order': %s, 'shape': (%s), }",
                                           "{'descr': %s, 'fortran_order': %s, 'shape': [%s], }"]),
       pad=st.sampled_from(["", "\n", "   \n", " ", "\n\n", "\t\n"]),
       version=st.sampled_from([(1, 0), (2, 0), (3, 0)]),
       max_header_size=st.sampled_from([10000, 60]))
def test_headers_read_as_numpy_reads_them(descr, fortran, shape, form, pad, version,
                                          max_header_size) -> None:
    """The header reader against numpy's, on numpy.save's header form and near
    misses of it: the same (shape, fortran_order, dtype), or the same error."""
    if "%3$s" in form:
        text = form.replace("%1$s", repr(descr)).replace("%2$s", fortran).replace("%3$s", shape)
    else:
        text = form % (repr(descr), fortran, shape)
    body = (text + pad).encode("latin1" if version != (3, 0) else "utf8", "replace")
    raw = struct.pack("<H" if version == (1, 0) else "<I", len(body)) + body
    impl = getattr(np.lib, "_format_impl", np.lib.format)
    theirs = _read_header(impl._read_array_header, raw, version, max_header_size)
    mine = _read_header(npy._header, raw, version, max_header_size)
    assert mine == theirs


@pytest.mark.parametrize("version", [(1, 0), (2, 0), (3, 0)])
def test_the_headers_numpy_save_writes_are_read_without_numpy_s_reader(
        version, monkeypatch) -> None:
    """The fast reader takes every header numpy.save writes with a string descr
    (numpy's reader, made to fail here, is not reached)."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("numpy's header reader was called")
    for name in ("read_array_header_1_0", "read_array_header_2_0"):
        monkeypatch.setattr(np.lib.format, name, refuse)
    impl = getattr(np.lib, "_format_impl", np.lib.format)
    monkeypatch.setattr(impl, "_read_array_header", refuse)
    for dtype in ("<f8", ">i2", "|b1", "<U7", "|S3", "|V5", "<M8[us]", "<c8", "<f2"):
        for shape in [(), (0,), (3,), (2, 3), (1, 0, 4), (2**40, 2**20)]:
            for fortran in (False, True):
                out = io.BytesIO()
                header = {"descr": dtype, "fortran_order": fortran, "shape": shape}
                impl._write_array_header(out, header, version)
                raw = out.getvalue()[8:]
                assert npy._header(_Bytes(raw), version, 10000) == (shape, fortran,
                                                                     np.dtype(dtype))


def test_short_data_is_named_without_allocating_it(tmp_path) -> None:
    path = tmp_path / "short.npy"
    path.write_bytes(header(GOOD) + bytes(12))          # 2 doubles need 16 bytes
    with pytest.raises(ValueError, match="Failed to read all data"):
        np.load(path)
    with pytest.raises(MemoryFaultError) as info:
        load(path)
    assert info.value.cause == "truncated" and "ends after 1 of its 2 elements" in str(info.value)
    huge = tmp_path / "huge.npy"
    huge.write_bytes(header(b"{'descr': '<f8', 'fortran_order': False, "
                            b"'shape': (1099511627776, 1024)}") + bytes(64))
    with pytest.raises(MemoryFaultError, match="needs 9007199254740992 bytes"):
        load(huge)                                      # no 8 PiB allocation first


@pytest.mark.parametrize("kwargs, why", [
    ({"mmap_mode": "r"}, "mmap_mode='r'"),
    ({"encoding": "utf-8"}, "encoding must be"),
])
def test_arguments_numpy_load_takes(tmp_path, kwargs, why) -> None:
    path = tmp_path / "a.npy"
    np.save(path, np.arange(3))
    with pytest.raises(ValueError, match=why):
        load(path, **kwargs)


def test_file_objects_are_refused(tmp_path) -> None:
    path = tmp_path / "a.npy"
    np.save(path, np.arange(3))
    with open(path, "rb") as f, pytest.raises(TypeError, match="a path or a MappedFile"):
        load(f)


def test_an_empty_file(tmp_path) -> None:
    path = tmp_path / "empty.npy"
    path.write_bytes(b"")
    with pytest.raises(EOFError):
        np.load(path)
    with pytest.raises(EOFError, match=str(path)):
        load(path)


# -- .npz ---------------------------------------------------------------------------

def arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {"w": rng.standard_normal((64, 48)), "ids": np.arange(100, dtype=">i8"),
            "f": np.asfortranarray(rng.standard_normal((20, 30)).astype(np.float32)),
            "rec": np.zeros(5, dtype=[("a", "<i4"), ("b", "S2")]), "scalar": np.array(2.5),
            "empty": np.zeros((0, 3))}


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_npz_as_numpy(tmp_path, save) -> None:
    path = tmp_path / "a.npz"
    save(path, **arrays())
    with zipfile.ZipFile(path, "a") as z:
        z.writestr("notes.txt", b"not an array")
    with load(path) as mine, np.load(path) as theirs, warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert isinstance(mine, NpzFile) and mine.files == theirs.files
        assert len(mine) == len(theirs) and list(mine) == list(theirs)
        assert "w" in mine and "w.npy" in mine and "nope" not in mine
        for name in theirs.files:
            got = mine[name]
            if isinstance(got, bytes):
                assert got == theirs[name] == b"not an array"
            else:
                same(got, theirs[name])
        same(mine["ids.npy"], theirs["ids"])
        same(mine.f.f, theirs.f.f)
        with pytest.raises(KeyError, match="nope is not a file in the archive"):
            mine["nope"]
        compressed = save is np.savez_compressed
        assert sorted(mine.compressed) == (sorted(arrays()) if compressed else [])
        warned = [x for x in w if issubclass(x.category, UnprotectedMemberWarning)]
        assert bool(warned) == compressed
    with pytest.raises(ValueError, match="closed"):
        mine["w"]


def test_npz_stored_member_crc_is_checked(tmp_path) -> None:
    path = tmp_path / "a.npz"
    np.savez(path, x=np.arange(1000, dtype=np.int64))
    raw = bytearray(path.read_bytes())
    at = raw.index(np.arange(1000, dtype=np.int64)[500:501].tobytes())
    raw[at] ^= 1
    path.write_bytes(bytes(raw))
    with np.load(path) as z, pytest.raises(zipfile.BadZipFile, match="Bad CRC-32"):
        z["x"]
    with load(path) as z, pytest.raises(zipfile.BadZipFile, match="Bad CRC-32"):
        z["x"]


def test_not_a_zip(tmp_path) -> None:
    path = tmp_path / "a.npz"
    path.write_bytes(b"PK\x03\x04" + bytes(40))
    with pytest.raises(zipfile.BadZipFile):
        np.load(path)
    with pytest.raises(zipfile.BadZipFile, match=str(path)):
        load(path)


# -- faults -------------------------------------------------------------------------

def test_a_failing_page_names_the_array_and_element(failing_file) -> None:
    array = np.asfortranarray(np.arange(64 * 1024, dtype=np.float64).reshape(256, 256))
    buf = io.BytesIO()
    np.save(buf, array)
    raw = buf.getvalue()
    start = len(raw) - array.nbytes
    bad = 10 * PAGE
    f = failing_file(raw, [(bad + 1, bad + 2)])
    with pytest.raises(MemoryFaultError) as info:
        load(f.path)
    e = info.value
    element = (bad - start) // 8
    where = tuple(int(i) for i in np.unravel_index(element, (256, 256), order="F"))
    assert (e.element, e.offset, e.filename, e.cause) == (element, bad, f.path, "io")
    assert f"element {element} (index {where})" in str(e) and f"file offset {bad}" in str(e)
    assert array[where] == array.T.reshape(-1)[element]       # file order: Fortran's
    # numpy reads with fread(3), which stops at the EIO: it calls the bad page the
    # end of a file "not fully written"
    with pytest.raises(ValueError, match="Failed to read all data"):
        np.load(f.path)


def test_a_failing_page_in_npz_members(failing_file, tmp_path) -> None:
    for save, compressed in ((np.savez, False), (np.savez_compressed, True)):
        buf = io.BytesIO()
        a = np.random.default_rng(0).integers(0, 1 << 62, 4096)    # does not compress
        save(buf, a=a, b=np.ones(10))
        raw = buf.getvalue()
        bad = 3 * PAGE
        f = failing_file(raw, [(bad, bad + 1)])
        with load(f.path) as z, warnings.catch_warnings():
            warnings.simplefilter("ignore", UnprotectedMemberWarning)
            with pytest.raises(MemoryFaultError) as info:
                z["a"]
            assert "member 'a.npy'" in str(info.value) and info.value.filename == f.path
            if compressed:
                assert "compressed" in str(info.value) and info.value.element is None
            else:
                start = raw.index(a.tobytes())
                assert info.value.offset == bad
                assert info.value.element == (bad - start) // 8
            if raw.rindex(b"b.npy") < bad:          # the other member, before the page
                assert np.array_equal(z["b"], np.ones(10))
        f.close()


def test_a_mapped_file_stays_the_caller_s(tmp_path) -> None:
    from mcsafe import MappedFile
    path = tmp_path / "a.npy"
    np.save(path, np.arange(10))
    with MappedFile(path) as mf:
        assert np.array_equal(load(mf), np.arange(10))
        assert not mf.closed
    npz = tmp_path / "a.npz"
    np.savez(npz, x=np.arange(3))
    with MappedFile(npz) as mf:
        with load(mf) as z:
            assert np.array_equal(z["x"], np.arange(3))
        assert not mf.closed
    assert os.path.exists(path)
