"""A file whose size changes where the mapping cannot see it, against pread(2).

FUSE (as every network file system): another client cuts the file behind the
kernel's back while MappedFile.readinto copies. The cut's page Q is not cached,
a page P after it is still mapped: the copy's fault on Q is a FUSE READ that
comes back short, the kernel zero-fills Q from the cut and sets the size
(fuse_short_read), nothing is unmapped, so P's old bytes read on without a
fault. And on any file system: bytes another process writes past a cut through
its own mapping of the cut's page (the kernel drops them). pread(2) on the same
descriptor after the read is the oracle: readinto counts no more than it
returns, and the same bytes. The cut lands at an exact point of the copy: the
caller's buffer stalls there (userfaultfd, tests/uffd_stall.py)."""

from __future__ import annotations

import ctypes
import mmap
import os

import pytest

from mcsafe import MappedFile, inject

import uffd_stall

PAGE = inject.PAGE
RAMP = bytes(range(1, 256)) * 700           # nonzero: a zero was never written
MADV_DONTNEED = 4


@pytest.fixture(autouse=True)
def _need_uffd() -> None:
    why = uffd_stall.unavailable()
    if why:
        pytest.skip(why)


def _forget(mf: MappedFile, path: str, first: int, last: int) -> None:
    """Pages [first, last) out of mf's mapping and out of the page cache."""
    assert inject._libc.madvise(ctypes.c_void_p(mf.address + first * PAGE),
                                (last - first) * PAGE, MADV_DONTNEED) == 0
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, first * PAGE, (last - first) * PAGE, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _read_while_cut(mf: MappedFile, path: str, backing: str, offset: int, n: int,
                    cut: int) -> tuple[int, bytes, bytes]:
    """readinto(n bytes at offset) with the backing file cut to `cut` while the copy
    is stalled at the buffer's sixth page; (its count, its bytes, pread's bytes)."""
    npages = -(-n // PAGE)

    def cut_behind_the_kernel() -> None:
        os.truncate(backing, cut)

    with uffd_stall.stalled_buffer(npages, bytes(npages * PAGE),
                                   {5: cut_behind_the_kernel}) as buf:
        got = mf.readinto(buf[:n], offset)
        out = bytes(buf[:got])
    fd = os.open(path, os.O_RDONLY)
    try:
        ref = os.pread(fd, n, offset)
    finally:
        os.close(fd)
    return got, out, ref


@pytest.mark.parametrize("q", [39, 38])
def test_a_fuse_file_cut_behind_the_kernel_counts_what_pread_returns(failing_file,
                                                                      q: int) -> None:
    """A read that reaches the last page (40): the cut in page q, uncached; the
    last page mapped (q 39: nothing faults; main counted 73,798 bytes where pread
    returns 69,662, 4,036 of them the short read's zeros)."""
    size = 40 * PAGE + 100
    data = (RAMP * 2)[:size]
    cut = q * PAGE + 60
    f = failing_file(data)
    with MappedFile(f.path) as mf:
        assert mf.read(size) == data                       # every page mapped
        _forget(mf, f.path, q, 40)
        offset = 22 * PAGE + 30
        got, out, ref = _read_while_cut(mf, f.path, f.backing, offset, size - offset, cut)
        assert (got, out) == (len(ref), ref) == (cut - offset, data[offset:cut])
        assert mf.bad_ranges() == []


def test_a_fuse_file_cut_behind_the_kernel_under_a_read_before_its_last_page(
        failing_file) -> None:
    """The same for a read that ends before the last page, which a probe proves on
    a local file (no system call): cut in page 36, page 37 still mapped, the read
    ends in page 38 (main: 73,698 bytes counted where pread returns 65,566)."""
    size = 40 * PAGE + 100
    data = (RAMP * 2)[:size]
    cut = 36 * PAGE + 60
    f = failing_file(data)
    with MappedFile(f.path) as mf:
        assert mf.read(size) == data
        _forget(mf, f.path, 36, 37)
        offset = 20 * PAGE + 30
        got, out, ref = _read_while_cut(mf, f.path, f.backing, offset, 38 * PAGE - offset, cut)
        assert (got, out) == (len(ref), ref) == (cut - offset, data[offset:cut])


@pytest.mark.parametrize("where", ["tmp_path", "/dev/shm"])
@pytest.mark.parametrize("gap", [0, 10])
@pytest.mark.parametrize("fill", [b"\xaa", None])
def test_bytes_written_past_a_cut_through_another_mapping_are_not_counted(
        tmp_path, where: str, gap: int, fill: bytes | None) -> None:
    """The file is cut in the read's last page while the copy is before it, and
    another process's mapping writes that page from the cut (+gap) on: bytes
    never in the file (0xAA), or the old ones. pread(2) reads the size just before
    copying each page (tmpfs) or batch of pages (ext4), and does not count them;
    readinto asks the size again when its copy reached the last page from
    another one (main counted them where gap was 0: no zero for the check of
    the cut's zeros to see)."""
    import tempfile
    folder = tempfile.mkdtemp(dir=str(tmp_path) if where == "tmp_path" else where)
    path = os.path.join(folder, "log")
    offset, n = 4 * PAGE + 100, 20 * PAGE
    cut = offset + n - 50
    size = offset + n + 100
    try:
        with open(path, "wb") as f:
            f.write(RAMP[:size])
        fd = os.open(path, os.O_RDWR)
        other = mmap.mmap(fd, size)
        tail = fill * (size - cut - gap) if fill else RAMP[cut + gap:size]

        def cut_and_write_past_it() -> None:
            os.ftruncate(fd, cut)
            other[cut + gap:size] = tail

        try:
            with MappedFile(path) as mf, \
                    uffd_stall.stalled_buffer(21, bytes(21 * PAGE),
                                              {5: cut_and_write_past_it}) as buf:
                got = mf.readinto(buf[:n], offset)
                out = bytes(buf[:got])
            ref = os.pread(fd, n, offset)
        finally:
            other.close()
            os.close(fd)
        assert (got, out) == (len(ref), ref) == (cut - offset, RAMP[offset:cut])
    finally:
        os.unlink(path)
        os.rmdir(folder)


# -- found by review of the second round (asking the size only after the copy) -------------

@pytest.mark.parametrize("shm", [False, True])
def test_a_one_page_file_cut_then_written_past_the_cut_counts_what_pread_returns(
        tmp_path, shm) -> None:
    """A file of one page, cut by another opener, which then writes past the cut
    through its own shared mapping: readinto counts what pread(2) returns (it
    counted all 4,000 bytes, the writer's included, where pread returns 100)."""
    path = (f"/dev/shm/mcsafe-test-{os.getpid()}" if shm else str(tmp_path / "one"))
    with open(path, "wb") as f:
        f.write(b"A" * 4000)
    try:
        with MappedFile(path) as mf:
            fd = os.open(path, os.O_RDWR)
            try:
                other = mmap.mmap(fd, 4000)
                os.ftruncate(fd, 100)
                other[100:4000] = b"G" * 3900
                buf = bytearray(4000)
                got = mf.readinto(buf, 0)
                want = os.pread(fd, 4000, 0)
                other.close()
            finally:
                os.close(fd)
        assert (got, bytes(buf[:got])) == (len(want), want) == (100, b"A" * 100)
    finally:
        os.unlink(path)


def test_a_fuse_file_rewritten_by_another_client_reads_as_pread_does(failing_file) -> None:
    """Another client rewrites pages 4-7 of a cached FUSE file; a read after it returns
    the new bytes, as pread(2) does (the GETATTR before the copy finds the times moved
    and the kernel drops the stale pages; asked only after, the read returned the old)."""
    f = failing_file(16 * PAGE)
    old = inject.pattern(16 * PAGE)
    new = bytes(255 - b for b in old)
    with MappedFile(f.path) as mf:
        assert mf.read(16 * PAGE) == old
        fd = os.open(f.backing, os.O_WRONLY)
        try:
            os.pwrite(fd, new[4 * PAGE:8 * PAGE], 4 * PAGE)
        finally:
            os.close(fd)
        buf = bytearray(4 * PAGE)
        got = mf.readinto(buf, 4 * PAGE)
        rfd = os.open(f.path, os.O_RDONLY)
        try:
            want = os.pread(rfd, 4 * PAGE, 4 * PAGE)
        finally:
            os.close(rfd)
    assert want == new[4 * PAGE:8 * PAGE]
    assert (got, bytes(buf[:got])) == (4 * PAGE, want)


def test_a_fuse_read_after_a_cut_writes_nothing_past_its_count(failing_file) -> None:
    """Another client cuts a cached FUSE file; a read across the cut counts to it and
    leaves the caller's buffer past its count untouched, as os.preadv does (the
    file's old bytes past the cut were written there)."""
    f = failing_file(16 * PAGE)
    with MappedFile(f.path) as mf:
        assert len(mf.read(16 * PAGE)) == 16 * PAGE
        os.truncate(f.backing, 5 * PAGE + 100)
        buf = bytearray(b"\xee" * (4 * PAGE))
        got = mf.readinto(buf, 4 * PAGE)
    assert got == PAGE + 100
    assert bytes(buf[got:]) == b"\xee" * (3 * PAGE - 100)
