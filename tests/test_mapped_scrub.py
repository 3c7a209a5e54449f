"""MappedFile.scrub for a command that runs for hours: a range of the file, the bytes
read handed to a sink, holes skipped, the page cache left as found, a stop with
the partial result, and the cause of every bad range (issue 21)."""

from __future__ import annotations

import errno
import mmap
import os
import resource

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcsafe import MappedFile, inject, pagecache

PAGE = inject.PAGE


def pread_pages(path: str, npages: int) -> dict[int, bytes | None]:
    """The oracle: each page by read(2), None where it fails with EIO."""
    out: dict[int, bytes | None] = {}
    fd = os.open(path, os.O_RDONLY)
    try:
        for p in range(npages):
            try:
                out[p] = os.pread(fd, PAGE, p * PAGE)
            except OSError as exc:
                assert exc.errno == errno.EIO
                out[p] = None
    finally:
        os.close(fd)
    return out


class Sink:
    """Collects what scrub hands over, checking that it comes in order."""

    def __init__(self) -> None:
        self.data: dict[int, bytes] = {}
        self.holes: list[tuple[int, int]] = []
        self.end = -1

    def __call__(self, offset: int, data: memoryview | int) -> None:
        assert offset >= self.end, "sink called out of order"
        if isinstance(data, int):
            self.holes.append((offset, offset + data))
            self.end = offset + data
        else:
            assert isinstance(data, memoryview) and data.nbytes > 0
            self.data[offset] = bytes(data)
            self.end = offset + data.nbytes

    def pages(self) -> dict[int, bytes]:
        """The bytes handed over, by page (each page whole)."""
        joined: dict[int, bytes] = {}
        for offset, data in self.data.items():
            for i in range(0, len(data)):
                page, at = divmod(offset + i, PAGE)
                joined.setdefault(page, b"")
                assert len(joined[page]) == at, f"a gap in page {page}"
                joined[page] += data[i:i + 1]
        return joined


# -- a range, a sink, against read(2) on a file that fails for real ---------------

def test_the_sink_gets_exactly_what_read2_can_read(failing_file) -> None:
    """Bad pages and a range drawn by hypothesis, on one FUSE file whose bad pages
    change per example: scrub's bad ranges are the pages read(2) fails on, and the
    sink gets every other page's bytes, as read(2) returns them."""
    npages = 40
    f = failing_file(npages * PAGE)

    @settings(max_examples=15, deadline=None)
    @given(bad=st.sets(st.integers(0, npages - 1), max_size=6),
           span=st.tuples(st.integers(0, npages), st.integers(0, npages)).map(sorted))
    def check(bad: set[int], span: list[int]) -> None:
        f.set_bad(inject.page_ranges(sorted(bad)))
        oracle = pread_pages(f.path, npages)
        start, end = span[0] * PAGE, span[1] * PAGE
        sink = Sink()
        with MappedFile(f.path) as mf:
            found = mf.scrub(start=start, end=end, sink=sink)
            faults = mf.bad_range_faults()
        want_bad = inject.page_ranges([p for p in range(span[0], span[1]) if oracle[p] is None])
        assert found == want_bad
        assert [(s, e) for s, e, _ in faults] == want_bad
        assert all(fault.cause == "io" and s <= fault.offset < e for s, e, fault in faults)
        assert sink.pages() == {p: oracle[p] for p in range(span[0], span[1])
                                if oracle[p] is not None}
        assert sink.holes == []                     # holes are read unless skipped
    check()


def test_a_range_reports_the_bad_pages_in_it_and_progress_ends_at_its_end(failing_file) -> None:
    f = failing_file(32 * PAGE, inject.page_ranges([3, 20]))
    seen: list[tuple[int, int]] = []
    with MappedFile(f.path) as mf:
        assert mf.scrub(lambda d, t: seen.append((d, t)), start=10 * PAGE, end=24 * PAGE) == \
            [(20 * PAGE, 21 * PAGE)]
        assert seen[-1] == (24 * PAGE, 24 * PAGE)
        assert mf.scrub(start=0, end=5 * PAGE) == [(3 * PAGE, 4 * PAGE), (20 * PAGE, 21 * PAGE)]
        assert mf.scrub(start=40 * PAGE) == mf.bad_ranges()      # past the end: nothing to do
        with pytest.raises(ValueError):
            mf.scrub(start=5, end=4)


# -- a stop, and the partial result ---------------------------------------------------

class Stop(Exception):
    pass


def test_an_exception_from_progress_stops_with_what_was_found(failing_file) -> None:
    """A 48 MiB file, bad pages near its start and in its last third: stopped once
    past 16 MiB, the first bad page is known and the other not; a scrub started
    again where it stopped finds the rest."""
    size = 48 << 20
    bad = [5, (32 << 20) // PAGE + 7]
    f = failing_file(size, inject.page_ranges(bad))
    reached: list[int] = []

    def progress(done: int, total: int) -> None:
        reached.append(done)
        if done >= 16 << 20:
            raise Stop
    with MappedFile(f.path) as mf:
        with pytest.raises(Stop):
            mf.scrub(progress)
        assert 16 << 20 <= reached[-1] < 32 << 20        # one 16 MiB chunk past it
        assert mf.bad_ranges() == inject.page_ranges(bad[:1])
        assert mf.scrub(start=reached[-1]) == inject.page_ranges(bad)


# -- holes ----------------------------------------------------------------------------

def test_a_sparse_terabyte_is_scrubbed_by_its_data_only(tmp_path) -> None:
    """1 TiB with three data extents: the holes reach the sink as lengths, the data
    as bytes, and the mapping is touched only where there is data (page faults
    counted: reading the holes would take 2**28)."""
    path = tmp_path / "sparse"
    at = [0, 1 << 39, (1 << 40) - 2 * PAGE]
    sparse(path, 1 << 40, {off: bytes([65 + i]) * 5000 for i, off in enumerate(at)})
    sink = Sink()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    with MappedFile(path) as mf:
        assert mf.scrub(sink=sink, skip_holes=True) == []
    assert resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before < 10_000
    covered = sorted([(o, o + len(d)) for o, d in sink.data.items()] + sink.holes)
    assert covered[0][0] == 0 and covered[-1][1] == 1 << 40
    assert all(a[1] == b[0] for a, b in zip(covered, covered[1:]))      # no gap
    for i, off in enumerate(at):
        run = next(d for o, d in sink.data.items() if o <= off < o + len(d))
        start = next(o for o in sink.data if o <= off < o + len(sink.data[o]))
        assert run[off - start:off - start + 5000] == bytes([65 + i]) * 5000
    assert sum(e - s for s, e in sink.holes) > (1 << 40) - (1 << 20)


def test_holes_are_read_unless_skipped(tmp_path) -> None:
    path = tmp_path / "holey"
    with open(path, "wb") as f:
        f.truncate(64 * PAGE)
        f.seek(10 * PAGE)
        f.write(b"d" * PAGE)
    sink = Sink()
    with MappedFile(path) as mf:
        mf.scrub(sink=sink)
    assert sink.holes == [] and b"".join(sink.pages().values()) == \
        bytes(10 * PAGE) + b"d" * PAGE + bytes(53 * PAGE)


# -- the page cache --------------------------------------------------------------------

def _resident_of(fd: int, size: int) -> bytes:
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
    try:
        return bytes(b & 1 for b in pagecache.resident(address, size))
    finally:
        libc.munmap(address, size)


def written(path, size: int) -> None:
    """A file of size random bytes, synced (so that eviction can drop every page)."""
    with open(path, "wb") as f:
        f.write(os.urandom(size))
        os.fsync(f.fileno())


def sparse(path, size: int, data: dict[int, bytes]) -> None:
    """A sparse file of size bytes holding only data (offset -> bytes)."""
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, chunk in data.items():
            f.seek(offset)
            f.write(chunk)


def evict(path, start: int = 0, length: int = 0) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, start, length, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def warm(path, start: int, length: int) -> None:
    """Bring a range (and no more: no readahead) into the page cache, as another
    process reading it would."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        assert len(os.pread(fd, length, start)) == length
    finally:
        os.close(fd)


def test_restore_cache_evicts_what_it_read_and_keeps_what_was_cached(tmp_path) -> None:
    """40 MiB on the local disk (/tmp), synced: 2 MiB regions cached by "another
    process" stay cached after the scrub; every page that was not is evicted again.
    Regions are 2 MiB so that no large folio straddles cached and uncached pages."""
    size, region = 40 << 20, 2 << 20
    path = tmp_path / "cold"
    written(path, size)
    evict(path)
    hot = [0, 3, 4, 9, 19]                          # regions of 2 MiB
    for r in hot:
        warm(path, r * region, region)
    before = _resident_of_path(path, size)
    if before.count(1) != len(hot) * region // PAGE:
        pytest.skip(f"this file system keeps other pages cached than those read: "
                    f"{before.count(1)} resident, {len(hot) * region // PAGE} read")
    with MappedFile(path) as mf:
        assert pagecache.sees_cache(mf.fileno())
        assert mf.scrub(restore_cache=True) == []
    assert _resident_of_path(path, size) == before
    with MappedFile(path) as mf:                        # without: everything stays cached
        mf.scrub()
    assert _resident_of_path(path, size) == b"\1" * (size // PAGE)


def _resident_of_path(path, size: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return _resident_of(fd, size)
    finally:
        os.close(fd)


def test_nothing_is_evicted_where_mincore_cannot_see_the_cache(tmp_path) -> None:
    """Without the owner's uid, CAP_FOWNER or write permission, mincore(2) cannot
    say what is cached: the scrub must then evict nothing. (Root without
    CAP_DAC_OVERRIDE and CAP_FOWNER, on a read-only file of nobody's.)"""
    import shutil
    import subprocess
    import sys
    import textwrap

    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed: cannot drop capabilities")
    path = tmp_path / "theirs"
    written(path, 8 << 20)
    os.chown(path, 65534, 65534)
    os.chmod(path, 0o444)
    evict(path)
    warm(path, 0, 2 << 20)
    before = _resident_of_path(path, 8 << 20)
    code = textwrap.dedent(f"""
        from mcsafe import MappedFile, pagecache
        with MappedFile({str(path)!r}) as mf:
            assert not pagecache.sees_cache(mf.fileno())
            mf.scrub(restore_cache=True)
        """)
    proc = subprocess.run(["setpriv", "--bounding-set", "-dac_override,-fowner", "--",
                           sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    after = _resident_of_path(path, 8 << 20)
    warm_pages = (2 << 20) // PAGE
    assert before[:warm_pages] == b"\1" * warm_pages
    assert after[:warm_pages] == before[:warm_pages]


def test_a_tail_snapshot_gives_back_what_opening_read(tmp_path) -> None:
    """Opening a MappedFile reads the file's last page, and the kernel reads around
    it (half its readahead window before): a Snapshot.tail taken before the open
    and evicted after close() leaves a cold file cold."""
    size = 24 << 20
    path = tmp_path / "tail"
    written(path, size)
    evict(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        tail = pagecache.Snapshot.tail(fd, size)
        with MappedFile(fd) as mf:
            opened = _resident_of_path(path, size)
            assert mf.scrub(restore_cache=True) == []
        tail.evict()
    finally:
        os.close(fd)
    assert opened.count(1) > 0                  # the open read the last page, and around it
    assert _resident_of_path(path, size) == bytes(size // PAGE)
