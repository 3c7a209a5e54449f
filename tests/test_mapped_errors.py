"""MappedFile's errors (items 4-7 of issue 10): MemoryFaultError across processes,
files that are not files, a closed file, why a fault happened, a full disk."""

from __future__ import annotations

import errno
import multiprocessing
import os
import pickle
import signal
import socket
import subprocess
import sys
import textwrap
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from mcsafe import FaultInfo, MappedFile, MemoryFaultError, _types, inject

PAGE = inject.PAGE
CLOSED = "I/O operation on closed file"


# -- MemoryFaultError travels ---------------------------------------------------

def test_memory_fault_error_round_trips_through_pickle() -> None:
    info = FaultInfo(0x7F0000001000, 4096, "src", signal.SIGBUS, 4)
    for e in (MemoryFaultError(info), MemoryFaultError(info, "read", "/data/x", errno.ENOSPC)):
        back = pickle.loads(pickle.dumps(e))
        assert type(back) is MemoryFaultError and str(back) == str(e)
        assert (back.errno, back.strerror, back.filename, back.fault, back.cause) == \
            (e.errno, e.strerror, e.filename, e.fault, "poison")
        assert (back.address, back.offset, back.side, back.signal, back.code) == \
            (info.address, 4096, "src", signal.SIGBUS, 4)


def _read_protected_page(path: str) -> bytes:
    """A ProcessPoolExecutor worker: reads a page it has just protected."""
    with MappedFile(path) as mf:
        assert inject._libc.mprotect(mf.address + PAGE, PAGE, 0) == 0
        return mf.read(10, PAGE + 3)


def test_a_fault_in_a_worker_process_reaches_the_parent_whole(tmp_path) -> None:
    path = tmp_path / "f"
    path.write_bytes(inject.pattern(4 * PAGE))
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as pool:
        with pytest.raises(MemoryFaultError) as info:
            pool.submit(_read_protected_page, str(path)).result(timeout=60)
        assert pool.submit(len, "still usable").result(timeout=60) == 12
    e = info.value
    assert (e.errno, e.filename, e.offset, e.side, e.cause, e.signal) == \
        (errno.EIO, str(path), PAGE + 3, "src", "protection", signal.SIGSEGV)


# -- what can be opened ------------------------------------------------------------

def _refused(target: str | int, *words: str) -> OSError:
    with pytest.raises(OSError) as info:
        MappedFile(target)
    text = str(info.value)
    for w in words:
        assert w in text, text
    return info.value


def test_a_fifo_is_refused_without_blocking(tmp_path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    code = textwrap.dedent(f"""
        import mcsafe
        try:
            mcsafe.MappedFile({str(fifo)!r})
        except OSError as e:
            print(e)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)      # today's code blocks in open(2) forever
    assert out.returncode == 0 and "a FIFO" in out.stdout and str(fifo) in out.stdout


def test_directories_pseudo_files_and_devices_are_refused_by_name(tmp_path) -> None:
    assert _refused(str(tmp_path), "a directory", str(tmp_path)).errno == errno.EINVAL
    assert _refused("/proc/self/status", "a procfs file", "/proc/self/status").errno == \
        errno.ENODEV
    sysfile = next(p for p in ("/sys/kernel/mm/transparent_hugepage/enabled",
                               "/sys/kernel/uevent_seqnum", "/sys/power/state")
                   if os.path.exists(p))
    _refused(sysfile, "a sysfs file", sysfile)
    for dev in ("/dev/null", "/dev/zero"):
        assert _refused(dev, "a character device", dev).errno == errno.ENODEV
    sock_path = tmp_path / "sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(sock_path))
        _refused(str(sock_path), str(sock_path))      # open(2) itself says ENXIO


def test_an_open_descriptor_is_used_and_stays_the_callers(tmp_path) -> None:
    path = tmp_path / "f"
    data = inject.pattern(3 * PAGE)
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.lseek(fd, 17, os.SEEK_SET)
        with MappedFile(fd) as mf:
            assert mf.name == fd and mf.path == str(path)
            assert mf.read(3 * PAGE) == data and mf.size == 3 * PAGE
        assert os.lseek(fd, 0, os.SEEK_CUR) == 17           # its offset, untouched
        assert os.read(fd, 3) == data[17:20]                # and still open
        with pytest.raises(OSError) as info:
            MappedFile(fd, "r+")
        assert info.value.errno == errno.EBADF and "O_RDWR" in str(info.value)
    finally:
        os.close(fd)
    r, w = os.pipe()
    try:
        _refused(r, "a FIFO")
    finally:
        os.close(r)
        os.close(w)


def test_a_block_device_is_read_like_a_file(tmp_path, loop_device) -> None:
    backing = tmp_path / "disk.img"
    data = inject.pattern(64 * PAGE, seed=3)
    backing.write_bytes(data)
    with MappedFile(loop_device(backing)) as mf:
        assert mf.size == len(data)
        assert mf.read(len(data) + 100) == data
        assert mf.read(PAGE, 63 * PAGE + 5) == data[63 * PAGE + 5:]
        assert mf.scrub() == []


# -- a closed file ----------------------------------------------------------------

def test_every_call_on_a_closed_file_says_it_is_closed(tmp_path) -> None:
    path = tmp_path / "f"
    path.write_bytes(inject.pattern(4 * PAGE))
    mf = MappedFile(path, "r+")
    assert inject._libc.mprotect(mf.address + 2 * PAGE, PAGE, 0) == 0
    with pytest.raises(MemoryFaultError):
        mf.read(1, 2 * PAGE)                  # a known bad range now
    mf.close()
    calls = {
        "readinto": lambda: mf.readinto(bytearray(10), 0),
        "readinto bad": lambda: mf.readinto(bytearray(10), 2 * PAGE + 1),
        "readinto end": lambda: mf.readinto(bytearray(10), 100 * PAGE),
        "readinto empty": lambda: mf.readinto(bytearray(0), 0),
        "read": lambda: mf.read(10, 0),
        "read bad": lambda: mf.read(10, 2 * PAGE),
        "write": lambda: mf.write(b"x", 0),
        "scrub": mf.scrub, "sync": mf.sync, "flush": mf.flush, "fileno": mf.fileno,
        "bad_ranges": mf.bad_ranges, "size": lambda: mf.size, "address": lambda: mf.address,
        "read_array": lambda: mf.read_array("u1", 4),
    }
    for name, call in calls.items():
        with pytest.raises(ValueError) as info:
            call()
        assert str(info.value) == CLOSED, name
    assert mf.closed and repr(mf).endswith("closed>")


UNWRITABLE = """
    import mmap, sys
    from mcsafe import MappedFile
    path, bad_page = sys.argv[1], int(sys.argv[2])
    ref = open(path, "rb", buffering=0)
    ro = mmap.mmap(ref.fileno(), 0, access=mmap.ACCESS_READ)
    buffers = {"bytes": b"x" * 10, "read-only view": memoryview(bytearray(10)).toreadonly(),
               "read-only mmap": ro, "str": "x" * 10, "strided": memoryview(bytearray(20))[::2]}
    with MappedFile(path) as mf:
        import ctypes
        from mcsafe import inject, MemoryFaultError
        assert inject._libc.mprotect(mf.address + bad_page * 4096, 4096, 0) == 0
        try:
            mf.readinto(bytearray(1), bad_page * 4096)
        except MemoryFaultError:
            pass                                # a known bad range: the careful path
        for name, buf in buffers.items():
            for offset in (0, 9000, bad_page * 4096 - 5, 10**9):
                for reader in (ref.readinto, lambda b: mf.readinto(b, offset)):
                    ref.seek(offset)
                    try:
                        reader(buf)
                        print(name, offset, "no error")
                    except Exception as exc:
                        print(name, offset, type(exc).__name__)
    ro.close()
"""


def test_a_buffer_that_cannot_be_written_is_refused_as_open_refuses_it(tmp_path) -> None:
    """readinto() of bytes, a read-only view or mmap, a str or a strided view raises
    TypeError as FileIO.readinto does, wherever the offset lies (it looped forever
    once the fast path handed it to the careful path). In a child, so that a loop
    fails the test instead of hanging the suite."""
    path = tmp_path / "f"
    path.write_bytes(inject.pattern(3 * PAGE + 100))
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(UNWRITABLE), str(path), "1"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 5 * 4 * 2
    for ref, got in zip(lines[::2], lines[1::2]):
        assert got == ref and ref.endswith(" TypeError"), (ref, got)


# -- why -----------------------------------------------------------------------------

def test_fault_cause_from_the_signal(monkeypatch) -> None:
    assert _types.fault_cause(signal.SIGBUS, 4) == "poison"            # BUS_MCEERR_AR
    assert _types.fault_cause(signal.SIGBUS, 2) == "io"                # BUS_ADRERR
    assert _types.fault_cause(signal.SIGSEGV, 2) == "protection"       # SEGV_ACCERR
    assert _types.fault_cause(signal.SIGSEGV, 1) == "unmapped"         # SEGV_MAPERR
    monkeypatch.setattr(_types, "_ARM64", False)
    assert _types.fault_cause(signal.SIGBUS, 3) == "io"                # BUS_OBJERR
    monkeypatch.setattr(_types, "_ARM64", True)
    assert _types.fault_cause(signal.SIGBUS, 3) == "io or poison"      # arm64, no GHES
    assert FaultInfo(1, 0, "src", signal.SIGBUS, 4).cause == "poison"
    assert FaultInfo(1, 0, "src", signal.SIGBUS, 4, "truncated").cause == "truncated"


def test_causes_met_by_reads(tmp_path) -> None:
    path = tmp_path / "f"
    path.write_bytes(inject.pattern(8 * PAGE))
    with MappedFile(path) as mf:
        assert inject._libc.mprotect(mf.address + 2 * PAGE, PAGE, 0) == 0
        assert inject._libc.munmap(mf.address + 5 * PAGE, PAGE) == 0
        assert mf.readinto(bytearray(4 * PAGE), 0) == 2 * PAGE
        with pytest.raises(MemoryFaultError) as info:
            mf.read(PAGE, 5 * PAGE)
        assert (info.value.cause, info.value.code, info.value.errno) == \
            ("unmapped", 1, errno.EIO)
        with pytest.raises(MemoryFaultError) as info:
            mf.read(PAGE, 2 * PAGE + 1)
        assert (info.value.cause, info.value.code) == ("protection", 2)
        assert mf.bad_ranges() == [(2 * PAGE, 3 * PAGE), (5 * PAGE, 6 * PAGE)]
        # give the page back so that close() unmaps a whole mapping
        addr = inject._libc.mmap(mf.address + 5 * PAGE, PAGE, 1, 0x11, mf.fileno(), 5 * PAGE)
        assert addr == mf.address + 5 * PAGE                   # MAP_SHARED | MAP_FIXED


def test_poison_says_poison_or_io(bad_file) -> None:
    mf = bad_file(8, [3])
    code = inject.uffd_poison_code()
    with pytest.raises(MemoryFaultError) as info:
        mf.read(10, 3 * PAGE)
    # BUS_MCEERR_AR with CONFIG_MEMORY_FAILURE; without it the kernel says
    # BUS_ADRERR, which is all a reader can know: io
    assert info.value.cause == ("poison" if code == inject.BUS_MCEERR_AR else "io")
    assert info.value.code == code and mf.bad_ranges() == [(3 * PAGE, 4 * PAGE)]


@pytest.fixture
def full_tmpfs(tmp_path):
    """A 64 KiB tmpfs filled to the last block, with a 1 MiB sparse file on it."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()!r}")
    try:
        sparse = mnt / "sparse"
        with open(sparse, "wb") as f:
            f.write(b"h" * 10)
            f.truncate(1 << 20)
        with open(mnt / "filler", "wb") as f:
            try:
                f.write(b"f" * (1 << 20))
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
        assert os.statvfs(mnt).f_bavail == 0
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def test_a_write_into_a_hole_of_a_full_file_system_is_enospc(full_tmpfs: Path) -> None:
    with MappedFile(full_tmpfs / "sparse", "r+") as mf:
        with pytest.raises(MemoryFaultError) as info:
            mf.write(b"w" * 100, 8 * PAGE)
        e = info.value
        assert (e.errno, e.cause, e.side, e.offset) == \
            (errno.ENOSPC, "no space", "dst", 8 * PAGE)
        assert mf.write(b"w" * (3 * PAGE), 0) == PAGE     # page 0 has blocks: short
        assert mf.bad_ranges() == []                      # a hole is not a bad page
        os.unlink(full_tmpfs / "filler")                  # space is back
        assert mf.write(b"w" * 100, 8 * PAGE) == 100
        assert mf.read(100, 8 * PAGE) == b"w" * 100


def test_a_mapped_file_never_opened_refuses_to_read() -> None:
    """readinto() is a C method reading MappedFile's parts from typed slots; on an
    object whose __init__ never ran they are None, which it refuses with a
    ValueError instead of reading None as a part (it crashed the process: SIGSEGV).
    In a child, so that a crash fails the test instead of the suite."""
    out = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        from mcsafe import MappedFile
        mf = MappedFile.__new__(MappedFile)
        try:
            mf.readinto(bytearray(4))
        except ValueError as exc:
            print(exc)
        """)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, (out.returncode, out.stderr)
    assert out.stdout == "MappedFile was never opened (its __init__ did not run)\n"


def test_a_mapped_file_refuses_pickling_clearly(tmp_path) -> None:
    """A mapping and a descriptor do not travel: the refusal says what to send."""
    from mcsafe.fileio import MappedFileIO
    path = tmp_path / "f"
    path.write_bytes(b"x" * 10)
    with MappedFile(path) as mf:
        for obj in (mf, MappedFileIO(mf, closefd=False)):
            with pytest.raises(TypeError, match=r"cannot pickle a MappedFile \('.*/f'\): .*"
                                                r"send its path and open it again"):
                pickle.dumps(obj)


def test_a_huge_sparse_file_opens_as_mmap_opens_it() -> None:
    """A 70 TiB sparse file (a memfd: no file system limit): room to grow would be
    twice that, more than the address space holds; mmap.mmap maps it, so must we."""
    import mmap as _mmap
    fd = os.memfd_create("huge", os.MFD_CLOEXEC)
    try:
        size = 70 << 40
        os.ftruncate(fd, size)
        os.pwrite(fd, b"tail", size - 4)
        with _mmap.mmap(fd, 0, access=_mmap.ACCESS_READ) as m:
            assert m[size - 4:] == b"tail"
        with MappedFile(fd) as mf:
            assert mf.size == size and mf.read(4, size - 4) == b"tail"
            assert mf.read(4, 1 << 40) == bytes(4)
    finally:
        os.close(fd)


@pytest.mark.parametrize("where", ["memfd", "unlimited tmpfs"])
def test_a_write_fault_on_a_file_system_of_unknown_size_is_a_bad_page(tmp_path,
                                                                      where: str) -> None:
    """fstatvfs reports no blocks at all for a memfd or a tmpfs mounted without a
    size limit: that is 'unknown', not 'full', so a write fault there is a bad page
    (EIO, remembered), not ENOSPC."""
    if where == "memfd":
        fd, path = inject.memfd_file(4, holes=[2])
        opened = fd
    else:
        mnt = tmp_path / "mnt"
        mnt.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=0", "tmpfs", str(mnt)],
                              capture_output=True, text=True)
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()!r}")
        path = mnt / "f"
        with open(path, "wb") as f:
            f.write(inject.pattern(2 * PAGE))
            f.truncate(4 * PAGE)
        opened = None
    try:
        assert os.statvfs(path).f_blocks == 0
        with MappedFile(path, "r+") as mf, \
                inject.poison_range(mf.address, 4, [2]):
            with pytest.raises(MemoryFaultError) as info:
                mf.write(b"w" * 100, 2 * PAGE)
            e = info.value
            assert (e.errno, e.cause, e.side) == (errno.EIO, "io", "dst")
            assert mf.bad_ranges() == [(2 * PAGE, 3 * PAGE)]
    finally:
        if opened is not None:
            os.close(opened)
        else:
            subprocess.run(["umount", "-l", str(mnt)], check=True)
