"""MappedFile.readinto's C fast path (mcsafe._mcsafe._FastPath) against its references:
a method descriptor for `self` (any other object is refused, never read as slots),
os.preadv for the offset and the buffer (whichever path the call takes), and the
careful path for a file with known bad ranges (a read that misses them stays fast
and reads the same bytes; one that touches them raises as before)."""

from __future__ import annotations

import os
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import python_child
from mcsafe import MappedFile, MemoryFaultError, inject
from mcsafe._mcsafe import _readinto_careful

PAGE = inject.PAGE


# -- self ------------------------------------------------------------------------

SELVES = {
    "object()": "MappedFile.readinto(object(), bytearray(8))",
    "None": "MappedFile.readinto(None, bytearray(8))",
    "io.BytesIO": "import io\nMappedFile.readinto(io.BytesIO(b'abc'), bytearray(8))",
    "a borrowing class": "class Borrow:\n    readinto = MappedFile.readinto\n"
                         "Borrow().readinto(bytearray(8))",
    "functools.partial": "import functools\n"
                         "functools.partial(MappedFile.readinto, 'x')(bytearray(8))",
}


@pytest.mark.parametrize("name", list(SELVES))
def test_readinto_refuses_a_self_that_is_no_mapped_file(name: str) -> None:
    """MappedFile.readinto is a Cython function, which (unlike a method descriptor)
    takes any object as self: it read that object's memory as MappedFile's slots and
    died of SIGSEGV. It raises TypeError as a method descriptor does. In a child, so
    that a crash fails the test instead of the suite."""
    body = SELVES[name].replace("\n", "\n    ")
    out = python_child(f"""
from mcsafe import MappedFile
try:
    {body}
except TypeError as exc:
    print(exc)
""")
    assert out.returncode == 0, (out.returncode, out.stderr)
    kind = {"object()": "object", "None": "NoneType", "io.BytesIO": "BytesIO",
            "a borrowing class": "Borrow", "functools.partial": "str"}[name]
    assert out.stdout == (f"descriptor 'readinto' for 'MappedFile' objects doesn't apply "
                          f"to a '{kind}' object\n")


def test_a_malformed_state_is_refused_not_read_past(tmp_path) -> None:
    """The copy reads the published state's items with bounds checks off: a state
    of another shape (private, but never a crash) is a ValueError. In a child."""
    (tmp_path / "f").write_bytes(b"x" * 100)
    out = python_child(f"""
from mcsafe import MappedFile
from mcsafe._mcsafe import _readinto_careful
for state in ((), (b"x",), None):
    for call in (lambda: _readinto_careful(bytearray(4), state, 0),
                 lambda: mf.readinto(bytearray(4))):
        mf = MappedFile({str(tmp_path / "f")!r})
        mf._window.state = state
        try:
            call()
        except (ValueError, TypeError) as exc:
            print(type(exc).__name__)
""")
    assert out.returncode == 0, (out.returncode, out.stderr)
    # () and (b"x",): not a published state; None: never opened (or, careful, not one)
    assert out.stdout.split() == ["ValueError"] * 6


# -- the offset and the buffer, against os.preadv ----------------------------------

class Index:
    """An offset that is an integer only through __index__ (os.preadv takes it)."""

    def __init__(self, value: int) -> None:
        self.value = value
        self.calls = 0

    def __index__(self) -> int:
        self.calls += 1
        return self.value


class RaisingIndex(Index):
    def __index__(self) -> int:
        self.calls += 1
        raise ValueError("offset is not valid yet")


def offsets() -> dict[str, object]:
    import numpy as np
    return {"int": 100, "bool": True, "np.int64": np.int64(PAGE + 7),
            "__index__": Index(2 * PAGE + 1), "__index__ raising": RaisingIndex(0),
            "float": 1.5, "negative float": -1.0, "str": "1", "None": None}


class RaisingOnce:
    """A buffer written in Python (PEP 688) whose first request fails: a caller
    that asks again after the error would get 10 bytes."""
    calls = 0

    def __buffer__(self, flags: int) -> memoryview:
        RaisingOnce.calls += 1
        if RaisingOnce.calls == 1:
            raise ValueError("buffer not ready")
        return memoryview(bytearray(10))


def outcome(call) -> tuple[str, object]:
    try:
        return "ok", call()
    except Exception as exc:          # compared whole: type and message
        return type(exc).__name__, str(exc)


@pytest.fixture(params=["fast", "cut", "closed"])
def state(request, tmp_path):
    """A MappedFile and a descriptor of the same file: as opened (the fast path),
    cut by another writer since (the careful path: the probe fails), or closed
    (both, so that only their arguments can fail)."""
    data = os.urandom(4 * PAGE)
    path = tmp_path / "f"
    path.write_bytes(data)
    mf = MappedFile(path)
    fd = os.open(path, os.O_RDONLY)
    if request.param == "cut":
        os.truncate(path, 3 * PAGE - 10)
    if request.param == "closed":
        mf.close()
        os.close(fd)
    yield request.param, mf, fd
    mf.close()
    if request.param != "closed":
        os.close(fd)


@pytest.mark.parametrize("name", list(offsets()))
def test_the_offset_is_taken_as_os_preadv_takes_it(state, name: str) -> None:
    """operator.index(offset), once, before anything else: an __index__ that raises
    passes its own exception through (it was swallowed, and called again), a float
    is a TypeError even with nothing to read (0 was returned), and the careful path
    reads an __index__-only offset (it raised TypeError about '<' on a cut or
    closed file). A closed MappedFile then says so, as os.preadv on a closed
    descriptor says EBADF."""
    which, mf, fd = state
    mine, ref = offsets()[name], offsets()[name]
    got, want = bytearray(64), bytearray(64)
    have = outcome(lambda: mf.readinto(got, mine))
    expect = outcome(lambda: os.preadv(fd, [want], ref))
    if which == "closed" and expect[0] == "OSError":
        assert have == ("ValueError", "I/O operation on closed file")
    else:
        assert have == expect and got == want
    if isinstance(mine, Index):
        assert mine.calls == ref.calls == 1
    for empty in (bytearray(0), memoryview(bytearray(8))[:0]):
        have = outcome(lambda: mf.readinto(empty, offsets()[name]))
        expect = outcome(lambda: os.preadv(fd, [bytearray(0)], offsets()[name]))
        if which == "closed" and expect[0] == "OSError":
            assert have == ("ValueError", "I/O operation on closed file")
        else:
            assert have == expect


def test_a_buffer_that_raises_its_own_error_passes_it_through(state) -> None:
    """The caller's buffer is asked for once: its own error (numpy's for a strided
    array) is the caller's, as in os.preadv, not taken for a sign to go careful
    and asked again (the careful path turned it into another TypeError)."""
    import numpy as np

    which, mf, fd = state
    strided = np.zeros(64, np.uint8)[::2]
    assert outcome(lambda: mf.readinto(strided, 10)) == \
        outcome(lambda: os.preadv(fd, [np.zeros(64, np.uint8)[::2]], 10)) == \
        ("ValueError", "ndarray is not C-contiguous")


@pytest.mark.skipif(sys.version_info < (3, 12),
                    reason=f"Python {sys.version_info[0]}.{sys.version_info[1]} has no "
                           "__buffer__ (PEP 688, Python 3.12)")
def test_a_buffer_protocol_written_in_python_raises_once(state) -> None:
    which, mf, fd = state
    for call in (lambda: mf.readinto(RaisingOnce(), 0), lambda: os.preadv(fd, [RaisingOnce()], 0)):
        RaisingOnce.calls = 0
        assert outcome(call) == ("ValueError", "buffer not ready") and RaisingOnce.calls == 1


# -- known bad ranges: reads that miss them stay fast --------------------------------

BAD = (5, 6, 40)                     # bad pages of a 64-page file: two ranges
DATA = inject.pattern(64 * PAGE)


class Watched(MappedFile):
    """A MappedFile that counts the calls its fast path hands to the careful path."""

    slow = 0

    def _readinto_slow(self, buf, offset, state, got):    # type: ignore[no-untyped-def]
        Watched.slow += 1
        return super()._readinto_slow(buf, offset, state, got)


@pytest.fixture(scope="module")
def bad_file():
    """A FUSE file of 64 pages whose pages BAD fail for every reader, mapped, with
    both bad ranges known (its pages met once each); its bytes are DATA."""
    if not os.path.exists("/dev/fuse"):
        pytest.skip("no /dev/fuse on this machine: failing files need FUSE")
    f = inject.failing_file(64 * PAGE, inject.page_ranges(list(BAD)))
    try:
        with Watched(f.path) as mf:
            for page in BAD:
                with pytest.raises(MemoryFaultError):
                    mf.readinto(bytearray(1), page * PAGE)
            assert mf.bad_ranges() == [(5 * PAGE, 7 * PAGE), (40 * PAGE, 41 * PAGE)]
            yield mf
    finally:
        f.close()


def expected(data: bytes, offset: int, n: int) -> tuple[str, object]:
    """What a read of n bytes at offset gives: the bytes up to the first bad page,
    or, if its first byte is bad, the fault there (nothing for no bytes)."""
    if n == 0:
        return "ok", b""
    end = min(offset + n, len(data))
    for page in BAD:
        if offset <= page * PAGE + PAGE - 1 and page * PAGE < end:
            if page * PAGE <= offset:
                return "fault", offset
            end = page * PAGE
            break
    return "ok", data[offset:end] if offset < end else b""


@settings(max_examples=300, deadline=None)
@given(offset=st.integers(0, 64 * PAGE + 100), n=st.integers(0, 3 * PAGE))
def test_reads_that_miss_the_bad_ranges_stay_fast(bad_file, offset: int, n: int) -> None:
    """Once a file had a bad range, every read took the careful path (a quarter
    slower). The fast path bisects the ranges: a read that misses them all is
    served there with exactly the file's bytes; one that touches one goes careful
    and ends before it or raises at it, as the careful path alone does."""
    mf = bad_file
    before = Watched.slow
    buf = bytearray(n)
    kind, want = expected(DATA, offset, n)
    try:
        got = ("ok", bytes(buf[:mf.readinto(buf, offset)]))
    except MemoryFaultError as exc:
        got = ("fault", exc.offset)
    assert got == (kind, want)
    touches = any(offset < (p + 1) * PAGE and p * PAGE < offset + max(n, 1) for p in BAD)
    assert Watched.slow - before == (1 if touches else 0)
    # the careful path alone, as every read of this file went before
    state = mf._window.state
    again = bytearray(n)
    try:
        careful = ("ok", bytes(again[:mf._readinto_slow(again, offset, state, -2)]))
    except MemoryFaultError as exc:
        careful = ("fault", exc.offset)
    assert careful == got


def test_a_read_far_from_the_bad_ranges_is_exact_and_one_at_them_raises(bad_file) -> None:
    mf, data = bad_file, DATA
    before = Watched.slow
    buf = bytearray(PAGE)
    assert mf.readinto(buf, 20 * PAGE + 3) == PAGE and buf == data[20 * PAGE + 3:21 * PAGE + 3]
    assert mf.readinto(buf, 60 * PAGE) == PAGE and buf == data[60 * PAGE:61 * PAGE]
    assert mf.readinto(buf, 63 * PAGE + 100) == PAGE - 100
    assert Watched.slow == before
    assert mf.readinto(buf, 4 * PAGE + 96) == PAGE - 96            # short before page 5
    with pytest.raises(MemoryFaultError) as exc:
        mf.readinto(buf, 6 * PAGE + 10)                               # in the first range
    assert (exc.value.offset, exc.value.cause) == (6 * PAGE + 10, "io")
    with pytest.raises(MemoryFaultError) as exc:
        mf.readinto(buf, 40 * PAGE)                                   # the second
    assert (exc.value.offset, exc.value.cause) == (40 * PAGE, "io")
    assert mf.readinto(bytearray(0), 40 * PAGE) == 0                  # nothing asked
    assert Watched.slow == before + 4


# -- read() and write() take their offset as os.pread and os.pwrite do ---------------

@pytest.mark.parametrize("name", list(offsets()))
def test_read_and_write_take_the_offset_as_os_pread_and_pwrite(tmp_path, name: str) -> None:
    """The same operator.index as readinto, at the top of read() and write(): an
    __index__-only offset read and wrote nothing before ("'<=' not supported"),
    and a raising __index__ lost its own error. Compared with os.pread/os.pwrite
    on a twin file (offsets inside the file, where write never extends either)."""
    data = os.urandom(4 * PAGE)
    for twin in ("mine", "ref"):
        (tmp_path / twin).write_bytes(data)
    fd = os.open(tmp_path / "ref", os.O_RDWR)
    try:
        with MappedFile(tmp_path / "mine", "r+") as mf:
            assert outcome(lambda: mf.read(64, offsets()[name])) == \
                outcome(lambda: os.pread(fd, 64, offsets()[name]))
            assert outcome(lambda: mf.read(Index(64), offsets()[name])) == \
                outcome(lambda: os.pread(fd, 64, offsets()[name]))
            assert outcome(lambda: mf.write(b"w" * 64, offsets()[name])) == \
                outcome(lambda: os.pwrite(fd, b"w" * 64, offsets()[name]))
    finally:
        os.close(fd)
    assert (tmp_path / "mine").read_bytes() == (tmp_path / "ref").read_bytes()


# -- write(): the caller's buffer errors are the caller's, as os.pwrite gives them ----

@pytest.fixture(params=["fast", "cut"])
def writable(request, tmp_path):
    """A MappedFile open 'r+' and a descriptor of a twin file: as opened (the fast
    path), or cut by another writer since (the careful path: the probe fails)."""
    data = os.urandom(4 * PAGE)
    for twin in ("mine", "ref"):
        (tmp_path / twin).write_bytes(data)
    mf = MappedFile(tmp_path / "mine", "r+")
    fd = os.open(tmp_path / "ref", os.O_RDWR)
    if request.param == "cut":
        os.truncate(tmp_path / "mine", 3 * PAGE - 10)
        os.truncate(tmp_path / "ref", 3 * PAGE - 10)
    yield mf, fd
    mf.close()
    os.close(fd)


def test_write_passes_a_buffer_s_own_error_through(writable) -> None:
    """A strided numpy array, an object with no buffer and a released memoryview:
    write() raises what os.pwrite raises (the fast path caught ValueError and
    TypeError to go careful, where numpy's "not C-contiguous" became mcsafe's
    TypeError), and writes nothing."""
    import numpy as np

    mf, fd = writable
    released = memoryview(b"x" * 64)
    released.release()
    for make in (lambda: np.zeros(64, np.uint8)[::2], lambda: 12345, lambda: released):
        assert outcome(lambda: mf.write(make(), 10)) == \
            outcome(lambda: os.pwrite(fd, make(), 10))
        assert outcome(lambda: mf.write(make(), 10))[0] != "ok"


@pytest.mark.skipif(sys.version_info < (3, 12),
                    reason=f"Python {sys.version_info[0]}.{sys.version_info[1]} has no "
                           "__buffer__ (PEP 688, Python 3.12)")
def test_write_asks_a_python_buffer_once(writable) -> None:
    mf, fd = writable
    for call in (lambda: mf.write(RaisingOnce(), 0), lambda: os.pwrite(fd, RaisingOnce(), 0)):
        RaisingOnce.calls = 0
        assert outcome(call) == ("ValueError", "buffer not ready") and RaisingOnce.calls == 1

