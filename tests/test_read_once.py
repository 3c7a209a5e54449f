"""arrays.load(path) reads the file once through ReadOnce (mcsafe/mapped/once.py): one
mapping of exactly the file, no probe, each copy proved by the file's stamp after
it. What a caller sees must be what it saw through a MappedFile: the same arrays
(numpy.load is the reference) and, when a page fails or the file is cut under the
load, the same exceptions, field by field (load of an open MappedFile is the
reference there, the path it took before)."""

from __future__ import annotations

import io
import mmap
import os
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import mcsafe.formats.npy as npy
import mcsafe.mapped.once as once
from mcsafe import MappedFile, MemoryFaultError, inject
from mcsafe._mcsafe import buffer_address
from mcsafe.arrays import load
from mcsafe.mapped.once import ReadOnce, open_once

import uffd_stall

PAGE = inject.PAGE


def _no_handover(monkeypatch) -> None:
    """Make a handover to MappedFile an error: the clean path must not need one."""
    def refuse(*args: object) -> None:
        raise AssertionError("ReadOnce handed the file over to a MappedFile")
    monkeypatch.setattr(once, "MappedFile", refuse)


def _outcome(call) -> tuple:
    """What a load came to: the array's dtype, shape, order and bytes, or the
    exception's type, message and fields."""
    try:
        a = call()
    except Exception as exc:            # compared whole: type, text and fields
        fields = tuple(getattr(exc, f, None) for f in
                       ("errno", "filename", "offset", "element", "cause"))
        # where the file was mapped is the one thing two openings cannot share
        return type(exc), re.sub(r"address 0x[0-9a-f]+", "address ?", str(exc)), fields
    return a.dtype, a.shape, a.flags.f_contiguous, a.tobytes()


def _through_mapped_file(path: str):
    def call():
        with MappedFile(path) as mf:
            return load(mf)
    return call


# -- the arrays: numpy.load is the reference ------------------------------------------

_DTYPES = st.one_of(hnp.scalar_dtypes(), hnp.byte_string_dtypes(), hnp.unicode_string_dtypes(),
                    hnp.array_dtypes(hnp.scalar_dtypes(), max_size=3))


@pytest.mark.filterwarnings("ignore:Stored array in format 3.0")
@settings(max_examples=60, deadline=None)
@given(data=st.data(), dtype=_DTYPES, fortran=st.booleans())
def test_a_path_loads_as_numpy_load_without_a_mapped_file(tmp_path_factory, data, dtype,
                                                          fortran) -> None:
    """Every dtype numpy.save writes (scalars, strings, structured), C and Fortran
    order, 0-d and empty shapes: the same array as numpy.load, read without a
    MappedFile."""
    shape = data.draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=40))
    array = data.draw(hnp.arrays(dtype, shape))
    if fortran:
        array = np.asfortranarray(array)
    path = tmp_path_factory.mktemp("npy") / "a.npy"
    np.save(path, array)
    with pytest.MonkeyPatch.context() as mp:
        _no_handover(mp)
        ours = _outcome(lambda: load(path))
    assert ours == _outcome(lambda: np.load(path))


@pytest.mark.parametrize("nbytes", [0, 1, PAGE - 128, PAGE, 64 << 10, (1 << 20) + 3])
def test_sizes_around_the_head_and_pages(tmp_path, monkeypatch, nbytes: int) -> None:
    """Arrays that end inside the head read first, at it, and past it."""
    path = tmp_path / "a.npy"
    np.save(path, np.frombuffer(inject.pattern(nbytes), np.uint8))
    _no_handover(monkeypatch)
    assert _outcome(lambda: load(path)) == _outcome(lambda: np.load(path))


def test_what_read_once_does_not_map_goes_to_mapped_file(tmp_path) -> None:
    """An empty file, a directory, a procfs file (size 0), a sysfs file (size 4096):
    open_once leaves them to MappedFile, whose verdict load(path) gives, as before."""
    empty = tmp_path / "empty.npy"
    empty.write_bytes(b"")
    sysfs = "/sys/kernel/mm/transparent_hugepage/enabled"
    cases = [empty, tmp_path, "/proc/self/status"] + ([sysfs] if os.path.exists(sysfs) else [])
    for path in cases:
        assert _outcome(lambda: load(path)) == _outcome(_through_mapped_file(str(path))), path
    with open_once(empty) as opened:
        assert isinstance(opened, MappedFile)
    with pytest.raises(EOFError, match="no data left"):
        load(empty)
    with pytest.raises(OSError, match="procfs"):
        load("/proc/self/status")


def test_a_missing_file_is_named_as_numpy_load_names_it(tmp_path) -> None:
    with pytest.raises(FileNotFoundError) as ours:
        load(tmp_path / "missing.npy")
    with pytest.raises(FileNotFoundError) as ref:
        np.load(tmp_path / "missing.npy")
    assert (ours.value.errno, ours.value.strerror, ours.value.filename) == \
        (ref.value.errno, ref.value.strerror, str(ref.value.filename))


def test_archives_and_pickles_are_read_through_a_mapped_file(tmp_path) -> None:
    npz = tmp_path / "a.npz"
    np.savez(npz, x=np.arange(5))
    with load(npz) as z:
        assert np.array_equal(z["x"], np.arange(5))
    objects = tmp_path / "o.npy"
    np.save(objects, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    got = load(objects, allow_pickle=True)
    assert list(got) == list(np.load(objects, allow_pickle=True))


def test_a_read_once_closes_everything(tmp_path) -> None:
    path = tmp_path / "a.npy"
    np.save(path, np.arange(1000))
    before = set(os.listdir("/proc/self/fd"))
    maps = open("/proc/self/maps").read().count(str(path))
    for _ in range(50):
        load(path)
    assert set(os.listdir("/proc/self/fd")) == before
    assert open("/proc/self/maps").read().count(str(path)) == maps


# -- faults: the path MappedFile took before is the reference --------------------------

def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


@pytest.mark.parametrize("where", ["magic", "header", "data first page", "data", "last page"])
def test_a_failing_page_raises_as_through_a_mapped_file(failing_file, where: str) -> None:
    array = np.asfortranarray(np.arange(48 * 1024, dtype=np.float64).reshape(192, 256))
    raw = _npy_bytes(array)
    bad = {"magic": (0, 1), "header": (20, 21), "data first page": (300, 301),
           "data": (10 * PAGE + 9, 10 * PAGE + 10),
           "last page": (len(raw) - 1, len(raw))}[where]
    f = failing_file(raw, [bad])
    ours = _outcome(lambda: load(f.path))
    assert ours[0] in (MemoryFaultError, OSError), ours
    assert ours == _outcome(_through_mapped_file(f.path))
    assert str(f.path) in ours[1]


@pytest.mark.parametrize("cut", [5 * PAGE, 5 * PAGE + 300])
def test_a_file_cut_by_another_client_at_a_failing_page(failing_file, cut: int) -> None:
    """The server cuts the file when a read of its bad page fails (as another client
    of a network file system would), inside the array's data, at a page or inside
    one: the load stops where MappedFile's did, with the same exception."""
    raw = _npy_bytes(np.arange(4096, dtype=np.int64))
    results = []
    for reference in (False, True):
        f = failing_file(raw, inject.page_ranges([6]))
        with f.on_failed_read(truncate=cut):
            results.append(_outcome(_through_mapped_file(f.path) if reference
                                    else lambda: load(f.path)))
        assert f.size == cut
        assert results[-1][2][1] == f.path
        f.close()
    ours, ref = results
    assert ours[0] is ref[0] is MemoryFaultError, results
    errno_, _, offset, element, cause = ours[2]
    assert (errno_, offset, cause) == (ref[2][0], ref[2][2], ref[2][4]) == (5, cut, "truncated")
    assert element == (cut - 128) // 8 and f"in element {element} of 4096" in ours[1]
    # Not the text, nor the element: MappedFile's own opening reads the file's last
    # page, and the kernel's readahead from it meets the bad page and cuts the file
    # before the reference's load begins; it then says the data ends after that
    # many elements, before reading the array.


@pytest.mark.parametrize("cut", [100, 3])
def test_a_file_cut_inside_its_header_during_the_load(failing_file, cut: int) -> None:
    """The first page's readahead meets the bad page and the file is cut inside the
    header while it is read: one line naming the file (it was a BufferError from
    resizing the header's buffer while a view of it was still held)."""
    raw = _npy_bytes(np.arange(4096, dtype=np.int64))
    f = failing_file(raw, inject.page_ranges([6]))
    with f.on_failed_read(truncate=cut):
        outcome = _outcome(lambda: load(f.path))
    assert outcome[0] in (ValueError, EOFError, MemoryFaultError), outcome
    assert f.path in outcome[1] and "\n" not in outcome[1]


# -- a cut under the copy (userfaultfd stalls): ReadOnce.readinto against MappedFile's --

RAMP = bytes(range(1, 256)) * 700                    # nonzero: a zero was never written
CUT = 20 * PAGE + 100                                 # inside file page 20


def _need_uffd() -> None:
    why = uffd_stall.unavailable()
    if why:
        pytest.skip(why)


def _stalled_read(path, opener, stalls: dict[int, str]) -> tuple[int, bytes]:
    """readinto 32 pages at offset 0 into a buffer whose touch of page p does
    stalls[p] to the file ('cut' to CUT, 'rewrite' it long again): count, bytes."""
    fd = os.open(path, os.O_WRONLY)
    try:
        acts = {"cut": lambda: os.ftruncate(fd, CUT),
                "rewrite": lambda: os.pwrite(fd, RAMP[CUT:], CUT)}
        with opener(path) as f, uffd_stall.stalled_buffer(
                32, bytes(32 * PAGE), {p: acts[a] for p, a in stalls.items()}) as buf:
            n = f.readinto(buf, 0)
            return n, bytes(buf[:n])
    finally:
        os.close(fd)


@pytest.mark.parametrize("stalls", [{4: "cut"}, {4: "cut", 21: "rewrite"}, {20: "cut"},
                                    {21: "cut"}],
                         ids=["cut, then faults", "cut and written again",
                              "cut in the page being copied", "cut behind the copy"])
def test_a_file_cut_during_the_copy_counts_as_mapped_file(tmp_path, stalls) -> None:
    _need_uffd()
    path = tmp_path / "f"
    results = []
    for opener in (open_once, MappedFile):
        path.write_bytes(RAMP)
        n, got = _stalled_read(path, opener, stalls)
        results.append((n, got))
        assert got == RAMP[:n], f"{opener.__name__}: {got.count(0)} zero bytes counted"
    assert results[0] == results[1]
    assert isinstance(open_once(path), ReadOnce)


class _NumpyInto:
    """numpy, but np.empty places the array at the start of `buf` (memory the test
    stalls): the loader's own code runs unchanged."""

    def __init__(self, buf: memoryview) -> None:
        self._buf = buf

    def empty(self, shape, dtype):
        dtype = np.dtype(dtype)
        count = int(np.prod(shape))
        return np.frombuffer(self._buf, dtype, count=count).reshape(shape)

    def __getattr__(self, name: str):
        return getattr(np, name)


@pytest.mark.parametrize("prefault", [True, False],
                         ids=["stalled while prefaulted", "stalled in the copy"])
def test_a_load_cut_mid_copy_raises_as_through_a_mapped_file(tmp_path, monkeypatch,
                                                             prefault: bool) -> None:
    """The array's own memory stalls (its page 3) while another process cuts the file
    inside the data: load(path) raises what load of a MappedFile opened before the
    cut raises. The array's pages are prefaulted before the copy (MADV_POPULATE_WRITE),
    which meets the stall first; without it, the copy does, in its middle."""
    _need_uffd()
    if not prefault:
        monkeypatch.setattr(npy, "_prefault", lambda buf: None)
    array = np.frombuffer(RAMP[:16 * PAGE], np.uint8).view(np.int64)
    raw = _npy_bytes(array)
    path = tmp_path / "a.npy"
    cut = len(raw) - array.nbytes + 9 * PAGE + 40
    results = []
    for reference in (False, True):
        path.write_bytes(raw)
        fd = os.open(path, os.O_WRONLY)
        with uffd_stall.stalled_buffer(17, bytes(17 * PAGE),
                                       {3: lambda: os.ftruncate(fd, cut)}) as buf:
            monkeypatch.setattr(npy, "np", _NumpyInto(buf))
            try:
                results.append(_outcome(_through_mapped_file(str(path)) if reference
                                        else lambda: load(path)))
            finally:
                monkeypatch.setattr(npy, "np", np)
                os.close(fd)
    assert results[0][0] is MemoryFaultError, results[0]
    assert results[0] == results[1]
    assert results[0][2][-1] == "truncated" and results[0][2][2] == cut


# -- the new array's pages, prefaulted ---------------------------------------------------

def test_prefault_maps_the_whole_pages_and_changes_no_byte() -> None:
    """_prefault makes the pages wholly inside a buffer present (mincore), leaves its
    partial first and last pages to the copy, and writes nothing."""
    from mcsafe._mcsafe import _prefault
    from mcsafe.pagecache import resident

    npages = 40
    region = mmap.mmap(-1, npages * PAGE)           # fresh anonymous pages: none present
    address = buffer_address(region)
    region[5 * PAGE:5 * PAGE + 3] = b"abc"
    assert resident(address, npages * PAGE)[7] & 1 == 0
    view = memoryview(region)
    _prefault(view[PAGE + 10:2 * PAGE + 20])        # no whole page: nothing
    assert resident(address, npages * PAGE)[1:3] == b"\0\0"
    _prefault(view[PAGE + 10:30 * PAGE + 20])
    present = [b & 1 for b in resident(address, npages * PAGE)]
    assert present[2:30] == [1] * 28 and present[1] == present[30] == 0 and present[31:] == \
        [0] * (npages - 31)
    assert bytes(region) == bytes(5 * PAGE) + b"abc" + bytes(npages * PAGE - 5 * PAGE - 3)
    view.release()
    region.close()


def test_prefault_passes_over_memory_already_mapped() -> None:
    """A buffer whose last whole page is present is taken for memory the allocator
    handed out again: _prefault does not walk it (the pages before stay absent)."""
    from mcsafe._mcsafe import _prefault
    from mcsafe.pagecache import resident

    npages = 32
    region = mmap.mmap(-1, npages * PAGE)
    address = buffer_address(region)
    region[(npages - 1) * PAGE] = 1                  # the last page only
    with memoryview(region) as view:
        _prefault(view)
    present = [b & 1 for b in resident(address, npages * PAGE)]
    assert present == [0] * (npages - 1) + [1]
    region.close()
