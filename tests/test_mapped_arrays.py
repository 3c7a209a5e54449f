"""read_array (item 11 of issue 10): a new numpy array, never short."""

from __future__ import annotations

import ctypes
import os
import pickle

import numpy as np
import pytest

from mcsafe import MappedFile, MemoryFaultError, inject
from mcsafe.arrays import read_array

PAGE = inject.PAGE


def test_matches_numpy_fromfile(tmp_path) -> None:
    path = tmp_path / "a.bin"
    rec = np.dtype([("t", "<f8"), ("id", "<u4"), ("tag", "S3")])
    values = np.arange(10000, dtype=">i4")
    path.write_bytes(b"hdr!" + values.tobytes() + os.urandom(rec.itemsize * 7) + b"xy")
    with MappedFile(path) as mf:
        got = mf.read_array(">i4", 10000, 4)
        assert got.dtype == np.dtype(">i4") and np.array_equal(got, values)
        mapping = np.ctypeslib.as_array((ctypes.c_ubyte * mf.size).from_address(mf.address))
        assert got.flags.owndata and got.flags.writeable        # a copy, owned
        assert not np.shares_memory(got, mapping)
        tail = read_array(mf, rec, offset=4 + values.nbytes)            # count -1: to EOF
        assert np.array_equal(tail, np.fromfile(path, rec, offset=4 + values.nbytes))
        assert len(tail) == 7                                           # whole records only
        assert mf.read_array("u1", 0, 5).shape == (0,)
        assert np.array_equal(mf.read_array("u2"), np.fromfile(path, "u2"))
        with pytest.raises(TypeError):
            mf.read_array(object, 1)


def test_a_bad_byte_names_the_element_and_the_offset(tmp_path) -> None:
    path = tmp_path / "a.bin"
    path.write_bytes(np.arange(8 * PAGE // 8, dtype="<f8").tobytes())
    with MappedFile(path) as mf:
        assert inject._libc.mprotect(mf.address + 3 * PAGE, PAGE, 0) == 0
        with pytest.raises(MemoryFaultError) as info:
            mf.read_array("<f8", 2000, 100 * 8)          # elements 100..2099; page 3: 1536..
        e = info.value
        assert e.element == 3 * PAGE // 8 - 100 and e.offset == 3 * PAGE
        assert f"element {e.element} of 2000" in str(e) and f"file offset {3 * PAGE}" in str(e)
        assert e.cause == "protection" and e.filename == str(path)
        back = pickle.loads(pickle.dumps(e))
        assert back.element == e.element and back.offset == e.offset
        # an element straddling the bad page: named by where its bad byte is
        with pytest.raises(MemoryFaultError) as info:
            mf.read_array("V12", 10, 3 * PAGE - 20)
        assert info.value.element == 1 and "byte 8" in str(info.value)
        assert np.array_equal(mf.read_array("<f8", 10), np.arange(10.0))


def test_truncated_under_the_read_is_an_error_not_a_short_array(tmp_path) -> None:
    path = tmp_path / "a.bin"
    path.write_bytes(np.arange(4 * PAGE // 4, dtype="<u4").tobytes())
    with MappedFile(path) as mf:
        os.truncate(path, 2 * PAGE + 6)
        with pytest.raises(MemoryFaultError) as info:
            mf.read_array("<u4", 4 * PAGE // 4)
        e = info.value
        assert (e.cause, e.offset, e.element) == ("truncated", 2 * PAGE + 6, 2 * PAGE // 4 + 1)
        assert "the file ends in element" in str(e)
        assert len(mf.read_array("<u4")) == 2 * PAGE // 4 + 1          # what is there


def test_a_count_past_the_end_is_refused_before_allocating(tmp_path) -> None:
    """A count the file cannot hold (a hostile header's, say) raises 'truncated'
    naming the first missing element, without asking numpy for the memory."""
    path = tmp_path / "a.bin"
    path.write_bytes(bytes(range(100)))
    with MappedFile(path) as mf:
        with pytest.raises(MemoryFaultError) as info:
            mf.read_array("u1", 1 << 50, 10)          # a PiB: MemoryError if allocated
        e = info.value
        assert e.cause == "truncated" and e.offset == 100 and e.element == 90
        assert "element 90 of 1125899906842624" in str(e)
        with pytest.raises(MemoryFaultError) as info:
            mf.read_array("<u4", 30, 0)
        assert info.value.offset == 100 and info.value.element == 25


def test_a_negative_count_other_than_minus_one_is_refused(tmp_path) -> None:
    path = tmp_path / "a.bin"
    path.write_bytes(bytes(100))
    with MappedFile(path) as mf:
        with pytest.raises(ValueError, match="count must be -1 or at least 0, not -2"):
            mf.read_array("u1", -2)
