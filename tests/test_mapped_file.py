"""MappedFile: short reads at bad bytes, EIO on the first byte, a remembered
bad-range list, scrub, concurrent readers. (Truncation and growth:
test_mapped_exact.py; error causes and odd files: test_mapped_errors.py.)"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import threading
import textwrap

import pytest

import mcsafe
from mcsafe import MappedFile, MemoryFaultError, inject

PAGE = inject.PAGE
NPAGES = 24
BAD = [3, 9, 10, 17]


def ranges(pages: list[int]) -> list[tuple[int, int]]:
    return inject.page_ranges(pages)


# A truncated file is not bad past its new end: it ends there (test_mapped_exact.py).
# madvise poisons a memfd's pages for real, where the kernel can (CONFIG_MEMORY_FAILURE).
METHODS = ["uffd", "mprotect", "madvise"]


@pytest.mark.parametrize("method", METHODS)
def test_short_read_then_eio_then_remembered(method: str, bad_file) -> None:
    mf = bad_file(NPAGES, BAD, method)
    first = BAD[0]
    data = inject.pattern(NPAGES * PAGE)
    start = first * PAGE - 100
    buf = bytearray(3 * PAGE)
    assert mf.readinto(buf, start) == 100
    assert buf[:100] == data[start:start + 100] and not any(buf[100:])
    faults = mcsafe.claimed_faults()
    with pytest.raises(MemoryFaultError) as info:
        mf.readinto(buf, first * PAGE + 7)
    e = info.value
    assert e.errno == errno.EIO and e.offset == first * PAGE + 7
    plain = inject.touch(method)            # what a plain read of such a page raises
    assert (e.signal, e.code) == (plain.signal, plain.code)
    assert e.cause == ("protection" if method == "mprotect" else
                       "poison" if e.code == inject.BUS_MCEERR_AR else "io")
    assert e.filename == mf.path
    assert e.address == mf.address + first * PAGE + 7
    # remembered: neither the short read nor the EIO touched the page again
    assert mf.readinto(buf, start) == 100
    assert mcsafe.claimed_faults() == faults
    assert mf.bad_ranges() == [(first * PAGE, (first + 1) * PAGE)]   # that page, no more


@pytest.mark.parametrize("method", METHODS)
def test_scrub_finds_exactly_the_bad_pages(method: str, bad_file) -> None:
    mf = bad_file(NPAGES, BAD, method)
    seen: list[int] = []
    found = mf.scrub(progress=lambda done, size: seen.append(done))
    assert found == ranges(BAD)
    assert seen and seen[-1] == NPAGES * PAGE and seen == sorted(seen)
    faults = mcsafe.claimed_faults()
    assert mf.scrub() == found
    assert mcsafe.claimed_faults() == faults          # a second scrub faults nowhere
    # the good bytes read back intact between the bad ranges
    data = inject.pattern(NPAGES * PAGE)
    for p in range(NPAGES):
        if p not in BAD:
            assert mf.read(PAGE, p * PAGE) == data[p * PAGE:(p + 1) * PAGE]


def test_write_short_at_a_bad_page(bad_file) -> None:
    mf = bad_file(NPAGES, BAD)
    at = BAD[0] * PAGE - 10
    assert mf.write(b"z" * 50, at) == 10
    assert mf.read(10, at) == b"z" * 10
    with pytest.raises(MemoryFaultError):
        mf.write(b"z", BAD[0] * PAGE)


def test_write_needs_r_plus(tmp_path) -> None:
    (tmp_path / "f").write_bytes(b"abc")
    with MappedFile(tmp_path / "f") as mf:
        with pytest.raises(OSError):
            mf.write(b"x", 0)
    with MappedFile(tmp_path / "f", "r+") as mf:
        assert mf.write(b"xyz!", 1) == 2 and mf.size == 3
    assert (tmp_path / "f").read_bytes() == b"axy"


def test_plain_reads_and_edges(tmp_path) -> None:
    data = os.urandom(3 * PAGE + 5)
    (tmp_path / "f").write_bytes(data)
    with MappedFile(tmp_path / "f") as mf:
        assert mf.size == len(data)
        assert mf.read(len(data) + 100, 0) == data
        assert mf.read(10, len(data) - 3) == data[-3:]
        assert mf.read(10, len(data)) == b"" and mf.readinto(bytearray(4), len(data) + 9) == 0
        with pytest.raises(ValueError):
            mf.readinto(bytearray(4), -1)
        assert mf.bad_ranges() == []
        assert repr(mf).endswith(f"mode='r' size={len(data)} 0 bad ranges>")
    assert repr(mf).endswith("closed>")
    with pytest.raises(ValueError):
        mf.read(1, 0)
    (tmp_path / "empty").write_bytes(b"")
    with MappedFile(tmp_path / "empty") as mf:
        assert mf.size == 0 and mf.read(10) == b"" and mf.scrub() == []


def test_readinto_takes_its_offset_as_pread_does(tmp_path) -> None:
    """readinto()'s fast path is one C method (mcsafe._mcsafe._FastPath); what it
    cannot take plainly goes to the careful path in Python, so every integer offset
    reads what os.preadv reads, by position or keyword, and the rest is refused
    there: past the end 0 (however far), negative ValueError, not an integer
    (a float, even a negative one) TypeError as os.preadv."""
    import numpy as np

    data = os.urandom(3 * PAGE + 5)
    (tmp_path / "f").write_bytes(data)
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        with MappedFile(tmp_path / "f") as mf:
            for offset in (0, 100, True, np.int64(PAGE + 7), np.uint32(3 * PAGE),
                           len(data) - 1):
                want, got = bytearray(64), bytearray(64)
                assert mf.readinto(got, offset) == os.preadv(fd, [want], int(offset))
                assert got == want
                assert mf.readinto(buf=got, offset=offset) == os.preadv(fd, [want],
                                                                         int(offset))
            for far in (len(data), 2**62, 2**63, 2**70):
                assert mf.readinto(bytearray(8), far) == 0
            for bad, error in ((-1, ValueError), (-(2**70), ValueError),
                               (-1.0, TypeError), (1.0, TypeError), ("1", TypeError)):
                with pytest.raises(error):
                    mf.readinto(bytearray(8), bad)
            with pytest.raises(TypeError):
                mf.readinto(bytearray(8), 0, 1)     # type: ignore[call-arg]
    finally:
        os.close(fd)


def test_truncated_while_mapped_ends_at_the_new_end(tmp_path) -> None:
    path = tmp_path / "log"
    data = inject.pattern(10 * PAGE)
    path.write_bytes(data)
    with MappedFile(path) as mf:
        assert mf.read(10 * PAGE) == data
        os.truncate(path, 4 * PAGE + 100)       # another writer cuts the file
        assert mf.size == 4 * PAGE + 100
        assert mf.read(10 * PAGE) == data[:4 * PAGE + 100]
        assert mf.read(1, 7 * PAGE) == b""       # past the end: 0 bytes, as pread
        assert mf.bad_ranges() == [] and mf.scrub() == []


def test_concurrent_readers(bad_file) -> None:
    bad = [5, 20, 21, 50]
    mf = bad_file(64, bad)
    data = inject.pattern(64 * PAGE)
    errors: list[str] = []

    def reader(k: int) -> None:
        try:
            read_many(k)
        except Exception as exc:  # noqa: BLE001 - any exception is a failure here
            errors.append(f"{k}: {exc!r}")

    def read_many(k: int) -> None:
        buf = bytearray(8 * PAGE)
        for i in range(200):
            off = (k * 977 + i * 4099) % (64 * PAGE)
            first = next((p * PAGE for p in bad if p * PAGE + PAGE > off), None)
            want = min(8 * PAGE, 64 * PAGE - off,
                       first - off if first is not None and first >= off else 1 << 30)
            try:
                got = mf.readinto(buf, off)
            except MemoryFaultError as e:
                if not (first is not None and first <= off) or e.offset != off:
                    errors.append(f"{k}/{i}: unexpected EIO at {off}")
                continue
            if got != want or buf[:got] != data[off:off + got]:
                errors.append(f"{k}/{i}: {got} != {want} at {off}")

    threads = [threading.Thread(target=reader, args=(k,)) for k in range(8)]
    scrubber = threading.Thread(target=mf.scrub)
    for t in threads + [scrubber]:
        t.start()
    for t in threads + [scrubber]:
        t.join()
    assert errors == []
    assert mf.bad_ranges() == ranges(bad)


def test_close_waits_and_then_refuses(tmp_path) -> None:
    (tmp_path / "f").write_bytes(b"x" * PAGE)
    mf = MappedFile(tmp_path / "f")
    mf.close()
    mf.close()
    assert mf.closed
    with pytest.raises(ValueError):
        mf.readinto(bytearray(1), 0)


def test_scrub_of_a_sparse_multi_gib_file_keeps_memory_bounded(tmp_path) -> None:
    path = tmp_path / "sparse.bin"
    size = 3 << 30
    with open(path, "wb") as f:
        f.truncate(size)                        # holes: no disk used
    code = textwrap.dedent(f"""
        import mcsafe
        with mcsafe.MappedFile({str(path)!r}) as mf:
            bad = mf.scrub()
        # VmHWM, not ru_maxrss: that one keeps the peak of the process that
        # forked and exec'ed this one (pytest's, whatever an earlier test did)
        status = open("/proc/self/status").read()
        peak_kib = int(status.split("VmHWM:")[1].split()[0])
        print(bad, peak_kib)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=600).stdout.split()
    assert out[0] == "[]"
    assert int(out[1]) < 400 * 1024, f"peak RSS {int(out[1]) >> 10} MiB while scrubbing 3 GiB"


def test_read_near_the_end_after_a_bad_range(bad_file) -> None:
    mf = bad_file(NPAGES, BAD, "mprotect", mode="r")
    with pytest.raises(MemoryFaultError):
        mf.readinto(bytearray(10), BAD[0] * PAGE)              # remembers a bad range
    off = NPAGES * PAGE - 1000
    buf = bytearray(8 * PAGE)                                   # larger than what is left
    assert mf.readinto(buf, off) == 1000
    assert buf[:1000] == inject.pattern(NPAGES * PAGE)[off:]


def test_scrubs_reader_counts_up_to_a_fault_far_into_its_range() -> None:
    """_scan (scrub's reader: loads only) reports the bytes before the fault many
    pages in, and the fault's offset in src; refuses a range outside src."""
    from mcsafe._mcsafe import _scan
    with inject.region("mprotect", 8, [6]) as r:
        assert _scan(r.buffer, 0, 6 * PAGE) == 6 * PAGE
        res = _scan(r.buffer, 100, 7 * PAGE)
        assert not isinstance(res, int)
        assert res.copied == 6 * PAGE - 100 and res.fault is not None
        assert (res.fault.side, res.fault.offset) == ("src", 6 * PAGE)
        assert res.fault.address == r.address + 6 * PAGE
        assert _scan(r.buffer, 8 * PAGE, 0) == 0
        for args in ((r.buffer, 0, 8 * PAGE + 1), (r.buffer, -1, 1), (r.buffer, 1, -1)):
            with pytest.raises(ValueError):
                _scan(*args)
