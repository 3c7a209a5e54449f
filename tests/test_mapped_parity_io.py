"""Where MappedFile's adapters stand in for the standard library, they behave as it
does: fileio.open() as built-in open(), read_array() as numpy.fromfile (issue 18,
items 4-8). Each test runs the reference on the same file and compares."""

from __future__ import annotations

import errno
import gc
import io
import os
import pickle

import numpy as np
import pytest

from mcsafe import MappedFile, MemoryFaultError, fileio, inject
from mcsafe.fileio import MappedFileIO

PAGE = inject.PAGE


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "data.bin"
    data = inject.pattern(3 * PAGE + 123)
    path.write_bytes(data)
    return path, data


# -- item 5: who closes what -----------------------------------------------------

def test_a_passed_mapped_file_is_never_closed_unless_asked(tmp_path) -> None:
    path = tmp_path / "state.pkl"
    path.write_bytes(pickle.dumps({"a": 1}))
    with MappedFile(path) as mf:
        assert pickle.load(fileio.open(mf)) == {"a": 1}
        gc.collect()                        # the wrapper is gone: mf is not
        assert not mf.closed and mf.read(1, 0) == path.read_bytes()[:1]
        with fileio.open(mf) as f:
            f.read()
        assert not mf.closed
        MappedFileIO(mf).close()
        assert not mf.closed
        fileio.open(mf, closefd=True).close()
        assert mf.closed


def test_a_passed_descriptor_is_closed_as_open_closes_it(data_file) -> None:
    path, data = data_file
    for opener in (open, fileio.open):
        fd = os.open(path, os.O_RDONLY)
        with opener(fd, "rb") as f:
            assert f.read(3) == data[:3]
        with pytest.raises(OSError) as exc:         # closefd=True: closed with the file
            os.fstat(fd)
        assert exc.value.errno == errno.EBADF
        fd = os.open(path, os.O_RDONLY)
        with opener(fd, "rb", closefd=False) as f:
            f.read(3)
        os.fstat(fd)                                # closefd=False: still the caller's
        os.close(fd)


def test_a_passed_descriptor_is_read_from_its_position(data_file) -> None:
    path, data = data_file
    results = []
    for opener in (open, fileio.open):
        fd = os.open(path, os.O_RDONLY)
        os.lseek(fd, 1000, os.SEEK_SET)
        with opener(fd, "rb", buffering=0) as f:
            results.append((f.tell(), f.read(10)))
    assert results[0] == results[1] == (1000, data[1000:1010])


def test_a_descriptor_is_used_for_what_it_was_opened_for(data_file) -> None:
    """A write-only descriptor cannot be read (open() fails the read with EBADF; the
    file opened again through /proc would read it), and an O_APPEND descriptor
    writes only at the end (FileIO.write and pwrite(2) append; a mapping never
    extends the file, so it would write elsewhere): both refused, naming why,
    before anything is read or written."""
    path, data = data_file
    fd = os.open(path, os.O_WRONLY)
    try:
        with open(fd, "rb", closefd=False) as f, pytest.raises(OSError) as ref:
            f.read(1)
        for make in (lambda: MappedFile(fd), lambda: fileio.open(fd, "rb", closefd=False)):
            with pytest.raises(OSError) as exc:
                make()
            assert exc.value.errno == ref.value.errno == errno.EBADF
            assert "not open for reading" in str(exc.value)
    finally:
        os.close(fd)
    fd = os.open(path, os.O_RDWR | os.O_APPEND)
    try:
        for make in (lambda: MappedFile(fd, "r+"),
                     lambda: fileio.open(fd, "rb+", buffering=0, closefd=False)):
            with pytest.raises(OSError) as exc:
                make()
            assert exc.value.errno == errno.EBADF and "O_APPEND" in str(exc.value)
        with MappedFile(fd) as mf:                      # reading it is fine
            assert mf.read(10, 0) == data[:10]
    finally:
        os.close(fd)
    assert path.read_bytes() == data                    # nothing written anywhere


def test_the_descriptor_from_fileno_keeps_its_offset_as_opens_does(tmp_path) -> None:
    """What reads through fileno() (numpy.fromfile of a stream, os.read, stdio)
    finds the offset where it left it, whatever the file object does meanwhile
    (its size asked, reads at the end of a file ending in a 0 byte, writes):
    MappedFile asked its size with lseek(SEEK_END) on that very descriptor, so a
    thread's numpy.fromfile(fileio.open(mf)) could read from the end of the file
    (numpy then fills the array with whatever memory held)."""
    path = tmp_path / "data.bin"
    data = inject.pattern(3 * PAGE + 123)[:-1] + b"\0"
    path.write_bytes(data)
    results = []
    for kind in ("open", "MappedFile"):
        f = open(path, "rb+", buffering=0) if kind == "open" else MappedFile(path, "r+")
        with f:
            fd = f.fileno()
            os.lseek(fd, 100, os.SEEK_SET)
            size = os.fstat(fd).st_size if kind == "open" else f.size
            tail = os.pread(fd, 50, size - 50) if kind == "open" else f.read(50, size - 50)
            wrote = os.pwrite(fd, b"w", 5) if kind == "open" else f.write(b"w", 5)
            results.append((size, tail, wrote, os.lseek(fd, 0, os.SEEK_CUR), os.read(fd, 10)))
    assert results[1] == results[0] == (len(data), data[-50:], 1, 100, data[100:110])


# -- item 7: the raw and text objects ------------------------------------------------

def test_truncate_in_rb_plus_as_open_does(tmp_path) -> None:
    outcomes = []
    for opener in (open, fileio.open):
        path = tmp_path / f"t-{opener.__module__}"
        path.write_bytes(b"x" * 100)
        with opener(path, "rb+") as f:
            f.seek(40)
            outcomes.append((f.truncate(), f.tell(), os.path.getsize(path)))
            outcomes.append((f.truncate(10), f.tell(), os.path.getsize(path)))
            f.seek(0)
            outcomes.append(f.read())
        with opener(path, "rb") as f, pytest.raises(io.UnsupportedOperation):
            f.truncate(0)
    assert outcomes[:3] == outcomes[3:]


def test_seek_takes_integers_and_data_and_hole_as_open_does(tmp_path) -> None:
    path = tmp_path / "sparse"
    with open(path, "wb") as f:
        f.write(b"d" * PAGE)
        f.truncate(64 * PAGE)
        f.seek(40 * PAGE)
        f.write(b"e" * PAGE)
    seen = []
    for opener in (open, fileio.open):
        with opener(path, "rb", buffering=0) as f:
            with pytest.raises(TypeError):
                f.seek(1.5)
            row = [f.seek(0, os.SEEK_DATA), f.seek(0, os.SEEK_HOLE),
                   f.seek(2 * PAGE, os.SEEK_DATA), f.seek(40 * PAGE, os.SEEK_HOLE)]
            with pytest.raises(OSError) as exc:
                f.seek(50 * PAGE, os.SEEK_DATA)            # no data after: ENXIO
            row.append(exc.value.errno)
            seen.append(row)
    assert seen[0] == seen[1]


def test_raw_read_none_and_the_text_wrappers_mode(data_file) -> None:
    path, data = data_file
    with fileio.open(path, "rb", buffering=0) as f, open(path, "rb", buffering=0) as g:
        assert f.read(None) == g.read(None) == data
    for mode in ("r", "rt"):
        with fileio.open(path, mode, encoding="latin-1") as f, \
                open(path, mode, encoding="latin-1") as g:
            assert (f.mode, f.buffer.mode) == (g.mode, g.buffer.mode)


def test_buffered_reads_before_a_bad_page_are_lost_exactly_as_open_loses_them(
        failing_file) -> None:
    """io.BufferedReader drops what a raw read gave it before a raw read raised, and
    moves tell() past it: built-in open() does the same on a failing disk. The
    README documents it; buffering=0 or MappedFile gives those bytes."""
    data = inject.pattern(8 * PAGE)
    f = failing_file(data, inject.page_ranges([5]))
    seen = []
    for opener in (open, fileio.open):
        with opener(f.path, "rb") as stream:
            assert stream.read(PAGE + 7) == data[:PAGE + 7]
            with pytest.raises(OSError) as exc:
                stream.read(5 * PAGE)
            seen.append((exc.value.errno, stream.tell()))
            with pytest.raises(OSError):
                stream.read(1)
    assert seen[0] == seen[1]
    with fileio.open(f.path, "rb", buffering=0) as raw:   # the raw object gives them
        raw.seek(PAGE + 7)
        assert raw.read(5 * PAGE) == data[PAGE + 7:5 * PAGE]
        with pytest.raises(MemoryFaultError):
            raw.read(1)


# -- item 8: read_array as numpy.fromfile ---------------------------------------------------

@pytest.mark.parametrize("offset", [0, 10, 100, 10_000])
def test_read_array_count_zero_is_an_empty_array_anywhere(tmp_path, offset: int) -> None:
    path = tmp_path / "ten"
    path.write_bytes(bytes(range(10)))
    want = np.fromfile(path, np.int32, count=0, offset=offset)
    with MappedFile(path) as mf:
        got = mf.read_array(np.int32, 0, offset)
    assert (got.shape, got.dtype) == (want.shape, want.dtype) == ((0,), np.int32)


@pytest.mark.parametrize("dtype", [np.dtype([]), np.dtype("V0"), np.dtype((np.int32, 0))],
                         ids=["no fields", "V0", "int32 x 0"])
@pytest.mark.parametrize("count", [0, 3])
def test_read_array_takes_zero_size_items_as_fromfile_does(tmp_path, dtype, count) -> None:
    path = tmp_path / "ten"
    path.write_bytes(bytes(range(10)))
    want = np.fromfile(path, dtype, count=count)
    with MappedFile(path) as mf:
        got = mf.read_array(dtype, count)
        with pytest.raises(ValueError):       # as fromfile: no count to infer
            mf.read_array(dtype, -1)
    assert (got.shape, got.dtype) == (want.shape, want.dtype)
    with pytest.raises(ValueError):
        np.fromfile(path, dtype, count=-1)
