"""Storage: MappedFile.readinto against os.preadv and a plain mmap slice, from the
page cache; scrub() against an os.preadv loop and a readinto loop over the same
file; read_array() against numpy.fromfile.

Every peer copies into a page-aligned sink. Where a bytearray lands is malloc's
choice, and the kernel's copy into one 16 bytes past a cache line runs at less
than half the speed here (8 against 19 GB/s for os.preadv of 1 MiB), which
would make the peer's speed a matter of luck, mostly in our favour."""

from __future__ import annotations

import contextlib
import mmap
import os
import time
from functools import partial
from typing import Callable, Iterator

import numpy as np
import pytest

from benchmarks.conftest import FULL, interleaved, measure
from mcsafe import MappedFile

FILE_SIZE = 64 << 20
SCRUB_SIZE = (1 << 30) if FULL else (128 << 20)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("storage") / "data.bin"
    with open(path, "wb") as f:
        for _ in range(FILE_SIZE >> 20):
            f.write(os.urandom(1 << 20))
        os.fsync(f.fileno())
    with open(path, "rb") as f:                 # warm the page cache
        while f.read(1 << 24):
            pass
    return path


def sink(size: int) -> mmap.mmap:
    return mmap.mmap(-1, size)


@contextlib.contextmanager
def readers(path, buf, offset: int, size: int, *,
            mmap_slice: bool = False) -> Iterator[dict[str, Callable[[], object]]]:
    """The peers' calls reading size bytes of path at offset into buf: ours, os.preadv
    and (if asked) a slice of a plain mmap."""
    with MappedFile(path) as mf, open(path, "rb") as f, \
            mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        view = memoryview(buf)

        def slice_copy() -> None:
            view[:] = m[offset:offset + size]
        calls = {"MappedFile.readinto": partial(mf.readinto, buf, offset),
                 "os.preadv": partial(os.preadv, f.fileno(), [buf], offset)}
        if mmap_slice:
            calls["mmap slice"] = slice_copy
        try:
            yield calls
        finally:
            view.release()


def compare(benchmark, calls: dict[str, Callable[[], object]], peer: str, size: int) -> None:
    """Measure calls[peer] for the table; in our row, first time every peer in turn,
    round after round, in CPU time (conftest.interleaved): the medians the report's
    targets use, since peers measured one after the other meet a shared machine at
    different moments (the 4 KiB read moved between 1.58x and 1.99x os.preadv in
    reruns)."""
    if peer == "MappedFile.readinto" and not benchmark.disabled:
        reps = max(1, min(2000, (4 << 20) // max(size, 1)))
        benchmark.extra_info["interleaved"] = interleaved(calls, reps, 40 if FULL else 20,
                                                          clock=time.thread_time)
    measure(benchmark, calls[peer], size)


@pytest.mark.parametrize("peer", ["MappedFile.readinto", "os.preadv", "mmap slice"])
@pytest.mark.parametrize("size", [4096, 1 << 20], ids=lambda s: f"{s}B")
def test_read(benchmark, data_file, peer: str, size: int) -> None:
    buf = sink(size)
    offset = 12 * 4096
    benchmark.group = f"read-{size}"
    benchmark.extra_info.update(peer=peer, size=size)
    with readers(data_file, buf, offset, size, mmap_slice=True) as calls:
        compare(benchmark, calls, peer, size)
    with open(data_file, "rb") as f:
        f.seek(offset)
        assert buf[:] == f.read(size)


def _file_peers(benchmark, path, buf, offset: int, size: int, peer: str) -> None:
    with readers(path, buf, offset, size) as calls:
        compare(benchmark, calls, peer, size)


@pytest.mark.parametrize("peer", ["MappedFile.readinto", "os.preadv"])
def test_read_whole_small_file(benchmark, tmp_path_factory, peer: str) -> None:
    """A 10,000-byte file read whole: the copy reaches the file's last page, so
    MappedFile asks the size (lseek) before copying all of it from the mapping."""
    path = tmp_path_factory.mktemp("small") / "small.bin"
    data = os.urandom(10_000)
    path.write_bytes(data)
    buf = sink(10_000)
    benchmark.group = "whole-read-10000"
    benchmark.extra_info.update(peer=peer, size=len(data))
    _file_peers(benchmark, path, buf, 0, len(data), peer)
    assert buf[:] == data


@pytest.mark.parametrize("peer", ["MappedFile.readinto", "os.preadv"])
@pytest.mark.parametrize("end", ["", "-zero-end"])
def test_read_tail(benchmark, tmp_path_factory, peer: str, end: str) -> None:
    """The last 100 bytes of a 1 MiB file (a log's tail): all in the last page. With
    -zero-end the file's last byte is 0 (a tar archive's end, zero padding), which
    the check of the last counted byte cannot tell from a cut: MappedFile then
    asks the size again after the copy (two lseeks, where a tail ending in
    another byte costs one). So does any zero copied from the last page (a cut's
    zeroing can be overtaken by the copy): random bytes hold one in 100 about a
    third of the time."""
    path = tmp_path_factory.mktemp("tail") / "log.bin"
    data = os.urandom((1 << 20) - 1) + (b"\0" if end else b"\1")
    path.write_bytes(data)
    buf = memoryview(sink(4096))[:100]
    benchmark.group = "tail-read-100" + end
    benchmark.extra_info.update(peer=peer, size=100)
    _file_peers(benchmark, path, buf, len(data) - 100, 100, peer)
    assert buf == data[-100:]


@pytest.mark.parametrize("peer", ["MappedFile.readinto", "os.preadv"])
def test_read_with_a_bad_range_elsewhere(benchmark, peer: str) -> None:
    """4 KiB from a file with a known bad range 36 pages away (a memfd whose page 40
    is poisoned with UFFDIO_POISON, which needs a writable mapping: mode "r+"; met
    once): the fast path bisects the bad ranges and stays fast for a read that
    misses them (every read took the careful path in Python, 5.7-6.3x os.preadv,
    before it did)."""
    from mcsafe import MemoryFaultError, inject

    fd, path = inject.memfd_file(64, [40])
    buf = sink(4096)
    benchmark.group = "bad-elsewhere-read-4096"
    benchmark.extra_info.update(peer=peer, size=4096)
    try:
        with MappedFile(path, "r+") as mf, inject.poison_range(mf.address, 64, [40]):
            with pytest.raises(MemoryFaultError):
                mf.readinto(bytearray(1), 40 * 4096)
            assert mf.bad_ranges() == [(40 * 4096, 41 * 4096)]
            calls = {"MappedFile.readinto": partial(mf.readinto, buf, 4096),
                     "os.preadv": partial(os.preadv, fd, [buf], 4096)}
            compare(benchmark, calls, peer, 4096)
    finally:
        os.close(fd)
    assert buf[:] == inject.pattern(64 * 4096)[4096:8192]


def test_read_appended(benchmark, tmp_path_factory) -> None:
    """A log followed as it grows: append 100 bytes, read them back (both peers pay
    the same write). MappedFile copies them from its mapping's room to grow, past
    the size it last saw, bounded by the size it asks.

    Each peer appends to a log of its own, both made alike, and the peers take
    turns round after round, timed in CPU time (conftest.interleaved): every round
    each log grows by the same records, so both read logs of the same sizes, and
    neither is charged for another job's time on the CPU (measured one after the
    other in wall time, each peer's 50 ms of rounds met the machine at a different
    moment: 1.50x in one run, 0.77-0.89x in the next three; taking turns in wall
    time at load 5, 0.31-1.17x). The table row is ours, measured by
    pytest-benchmark on its log afterwards."""
    folder = tmp_path_factory.mktemp("appended")
    logs = [folder / "ours.log", folder / "peer.log"]
    start, record = os.urandom(1 << 20), os.urandom(100)
    for path in logs:
        path.write_bytes(start)
    buf = memoryview(sink(4096))[:100]
    wfds = [os.open(path, os.O_WRONLY | os.O_APPEND) for path in logs]
    rfd = os.open(logs[1], os.O_RDONLY)
    mf = MappedFile(logs[0])

    def appender(wfd: int, read: Callable[[memoryview, int], int]) -> Callable[[], int]:
        def append_and_read() -> int:
            end = os.lseek(wfd, 0, os.SEEK_END) + os.write(wfd, record)
            return read(buf, end - 100)
        return append_and_read

    ours = appender(wfds[0], mf.readinto)
    peer = appender(wfds[1], lambda b, at: os.preadv(rfd, [b], at))
    try:
        for call in (ours, peer):
            buf[:] = bytes(100)
            assert call() == 100 and buf == record
        benchmark.group = "appended-read-100"
        if benchmark.disabled:
            benchmark(ours)
            return
        medians = interleaved({"MappedFile.readinto": ours, "os.preadv": peer},
                              reps=2000, rounds=40 if FULL else 20, clock=time.thread_time)
        benchmark.extra_info.update(peer="MappedFile.readinto", size=100,
                                    interleaved=medians)
        measure(benchmark, ours, 100)
        assert ours() == 100 and buf == record
    finally:
        mf.close()
        for fd in (*wfds, rfd):
            os.close(fd)


@pytest.fixture(scope="module")
def scrub_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("scrub") / "scrub.bin"
    chunk = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for _ in range(SCRUB_SIZE >> 20):
            f.write(chunk)
        os.fsync(f.fileno())        # no write-back of 1 GiB during the rounds
    return path


@pytest.mark.parametrize("peer", ["scrub", "os.preadv loop", "readinto loop"])
def test_scrub(benchmark, scrub_file, peer: str) -> None:
    """One pass over a file just opened, for both peers: a scrub gives up the page
    tables it builds (to bound memory), so a second pass over a mapping the loop
    kept warm would compare different work."""
    benchmark.group = "scrub"
    benchmark.extra_info.update(peer=peer, size=SCRUB_SIZE)
    buf = sink(1 << 20)
    files: list[MappedFile] = []

    def fresh():
        while files:
            files.pop().close()
        files.append(MappedFile(scrub_file))
        return (files[-1],), {}

    def scrub(mf: MappedFile) -> int:
        assert mf.scrub() == []
        return mf.size

    def loop(mf: MappedFile) -> int:
        return sum(mf.readinto(buf, off) for off in range(0, mf.size, len(buf)))

    def preadv_loop(mf: MappedFile) -> int:
        fd = os.open(scrub_file, os.O_RDONLY)
        try:
            return sum(os.preadv(fd, [buf], off) for off in range(0, mf.size, len(buf)))
        finally:
            os.close(fd)

    run = {"scrub": scrub, "os.preadv loop": preadv_loop, "readinto loop": loop}[peer]
    done = benchmark.pedantic(run, setup=fresh,
                              rounds=11 if FULL else 3, warmup_rounds=1)
    fresh()
    files.pop().close()
    assert done == SCRUB_SIZE


@pytest.mark.parametrize("peer", ["read_array", "numpy.fromfile"])
@pytest.mark.parametrize("size", [4096, 1 << 20, 16 << 20], ids=lambda s: f"{s}B")
def test_read_array(benchmark, data_file, peer: str, size: int) -> None:
    """A new float32 array of `size` bytes from offset 48 KiB of a cached file."""
    offset, count = 12 * 4096, size // 4
    benchmark.group = f"read_array-{size}"
    benchmark.extra_info.update(peer=peer, size=size)
    if peer == "read_array":
        with MappedFile(data_file) as mf:
            out = measure(benchmark, partial(mf.read_array, np.float32, count, offset), size)
    else:
        out = measure(benchmark, partial(np.fromfile, data_file, np.float32, count,
                                         offset=offset), size)
    assert np.array_equal(out, np.fromfile(data_file, np.float32, count, offset=offset),
                          equal_nan=True)
