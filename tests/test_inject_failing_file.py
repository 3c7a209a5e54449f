"""mcsafe.inject.failing_file: a FUSE file whose bad ranges fail for every reader and
path, that changes while in use, and whose mount never outlives its owner."""

from __future__ import annotations

import errno
import mmap
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import python_child as child
from conftest import wait_gone
from mcsafe import copy_report, inject

PAGE = mmap.PAGESIZE
WAIT = 60      # seconds: a deadline for a process that should end, never a pace




def children_named(pid: int, name: str) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                with open(f"/proc/{entry}/comm") as f:
                    comm = f.read().strip()
            except OSError:
                continue
            if int(fields[1]) == pid and comm == name:
                out.append(int(entry))
    return out


# -- every reader, every path ---------------------------------------------------

def test_read2_fails_with_eio_at_the_bad_page_and_is_short_before_it(failing_file) -> None:
    f = failing_file(16 * PAGE, inject.page_ranges([5]))
    data = inject.pattern(16 * PAGE)
    fd = os.open(f.path, os.O_RDONLY)
    try:
        assert os.pread(fd, PAGE, 4 * PAGE) == data[4 * PAGE:5 * PAGE]
        with pytest.raises(OSError) as exc:
            os.pread(fd, PAGE, 5 * PAGE)
        assert exc.value.errno == errno.EIO
        with pytest.raises(OSError):
            os.pread(fd, 10, 5 * PAGE + 100)        # any byte of the page
        assert os.pread(fd, 16 * PAGE, 0) == data[:5 * PAGE]          # short before it
        assert os.pread(fd, 10 * PAGE, 6 * PAGE) == data[6 * PAGE:16 * PAGE]
    finally:
        os.close(fd)
    with open(f.path, "rb") as stream, pytest.raises(OSError) as exc:
        stream.read()                                # built-in open(): raises
    assert exc.value.errno == errno.EIO
    assert f.contents() == data                     # the bytes behind it are whole


def test_a_byte_makes_its_whole_page_bad_as_a_sector_would(failing_file) -> None:
    f = failing_file(4 * PAGE, [(2 * PAGE + 10, 2 * PAGE + 11)])
    with open(f.path, "rb", buffering=0) as stream:
        assert len(stream.read(4 * PAGE)) == 2 * PAGE
        stream.seek(3 * PAGE)
        assert stream.read() == inject.pattern(4 * PAGE)[3 * PAGE:]


def test_a_mapped_read_dies_of_sigbus_in_a_process_without_mcsafe(failing_file) -> None:
    f = failing_file(8 * PAGE, inject.page_ranges([3]))
    code = f"""
        import mmap, os, sys
        fd = os.open({f.path!r}, os.O_RDONLY)
        m = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
        sys.stdout.write(str(m[int(sys.argv[1]) * {PAGE}])); sys.stdout.flush()
    """
    good = subprocess.run([sys.executable, "-c", textwrap.dedent(code), "2"],
                          capture_output=True, text=True)
    assert (good.returncode, good.stdout) == (0, str(inject.pattern(8 * PAGE)[2 * PAGE]))
    bad = subprocess.run([sys.executable, "-c", textwrap.dedent(code), "3"],
                         capture_output=True, text=True)
    assert bad.returncode == -signal.SIGBUS, bad.stderr


def test_mcsafe_copy_of_a_mapping_stops_at_the_bad_page(failing_file) -> None:
    f = failing_file(8 * PAGE, inject.page_ranges([3, 6]))
    with open(f.path, "rb") as stream:
        m = mmap.mmap(stream.fileno(), 0, prot=mmap.PROT_READ)
        try:
            out = bytearray(8 * PAGE)
            res = copy_report(out, m)
            assert res.copied == 3 * PAGE
            assert res.fault is not None and res.fault.signal == signal.SIGBUS
            assert res.fault.code == inject.BUS_ADRERR
            assert out[:3 * PAGE] == inject.pattern(8 * PAGE)[:3 * PAGE]
            assert copy_report(out, memoryview(m)[4 * PAGE:]).copied == 2 * PAGE
            del res
        finally:
            m.close()


def test_numpy_and_other_processes_see_the_same_failure(failing_file) -> None:
    f = failing_file(4 * PAGE, inject.page_ranges([1]))
    got = np.fromfile(f.path, np.uint8, count=PAGE)          # the good first page
    assert got.tobytes() == inject.pattern(4 * PAGE)[:PAGE]
    other = child(f"""
        import os
        fd = os.open({f.path!r}, os.O_RDONLY)
        try:
            os.pread(fd, 10, {PAGE})
        except OSError as e:
            print(e.errno)
    """)
    assert other.stdout.strip() == str(errno.EIO), other.stderr


# -- changing the file while it is in use ------------------------------------------

def test_resize_cuts_the_mapping_and_growth_is_seen(failing_file) -> None:
    f = failing_file(8 * PAGE)
    fd = os.open(f.path, os.O_RDONLY)
    m = mmap.mmap(fd, 8 * PAGE, prot=mmap.PROT_READ)
    try:
        assert copy_report(bytearray(8 * PAGE), m).copied == 8 * PAGE
        f.resize(3 * PAGE)
        assert (f.size, os.fstat(fd).st_size, len(f.contents())) == (3 * PAGE,) * 3
        res = copy_report(bytearray(8 * PAGE), m)       # pages past a cut fault
        assert res.copied == 3 * PAGE and res.fault is not None
        f.resize(5 * PAGE)
        assert os.lseek(fd, 0, os.SEEK_END) == 5 * PAGE
        assert os.pread(fd, 2 * PAGE, 3 * PAGE) == bytes(2 * PAGE)    # grown with zeros
        assert f.append(b"tail") == 4
        assert os.fstat(fd).st_size == 5 * PAGE + 4
        del res
    finally:
        m.close()
        os.close(fd)


def test_writes_stop_short_at_a_bad_page_and_reach_every_reader(failing_file) -> None:
    f = failing_file(8 * PAGE, inject.page_ranges([4]))
    assert f.write(b"A" * (2 * PAGE), 3 * PAGE) == PAGE          # short before page 4
    with pytest.raises(OSError) as exc:
        f.write(b"B", 4 * PAGE + 7)
    assert exc.value.errno == errno.EIO
    data = bytearray(inject.pattern(8 * PAGE))
    data[3 * PAGE:4 * PAGE] = b"A" * PAGE
    assert f.contents() == data
    with open(f.path, "rb") as stream:
        assert stream.read(4 * PAGE) == data[:4 * PAGE]
    # a shared writable mapping writes back through the server
    with open(f.path, "r+b") as stream:
        m = mmap.mmap(stream.fileno(), 0)
        m[PAGE:PAGE + 3] = b"xyz"
        m.flush()
        m.close()
    assert f.contents()[PAGE:PAGE + 3] == b"xyz"


def test_set_bad_while_mapped_drops_the_cached_pages(failing_file) -> None:
    f = failing_file(6 * PAGE)
    with open(f.path, "rb") as stream:
        m = mmap.mmap(stream.fileno(), 0, prot=mmap.PROT_READ)
        try:
            out = bytearray(6 * PAGE)
            assert copy_report(out, m).copied == 6 * PAGE       # all cached and mapped
            f.set_bad(inject.page_ranges([2]))
            res = copy_report(out, m)
            assert res.copied == 2 * PAGE and res.fault is not None
            assert f.bad == [(2 * PAGE, 3 * PAGE)]
            f.set_bad([])
            assert copy_report(out, m).copied == 6 * PAGE
            assert out == inject.pattern(6 * PAGE)
            del res
        finally:
            m.close()
    with pytest.raises(ValueError):
        f.set_bad([(10, 5)])


@pytest.mark.parametrize("change", ["append", "write", "truncate"])
def test_on_failed_read_changes_the_file_before_the_failure_is_seen(failing_file,
                                                                   change) -> None:
    f = failing_file(8 * PAGE, inject.page_ranges([5]))
    kwargs = {"append": {"append": b"z" * 64}, "write": {"write": (b"w" * PAGE, 0)},
              "truncate": {"truncate": 12 * PAGE}}[change]
    fd = os.open(f.path, os.O_RDONLY)
    try:
        before = f.stats()["failed_reads"]
        with f.on_failed_read(**kwargs):
            with pytest.raises(OSError):
                os.pread(fd, PAGE, 5 * PAGE)
        failed = f.stats()["failed_reads"] - before
        assert failed >= 1
        size = os.fstat(fd).st_size
        if change == "append":
            assert size == 8 * PAGE + 64 * failed
        elif change == "truncate":
            assert size == 12 * PAGE
        else:
            assert os.pread(fd, PAGE, 0) == b"w" * PAGE
        with pytest.raises(OSError):        # the change is over when the block is
            os.pread(fd, PAGE, 5 * PAGE)
        assert os.fstat(fd).st_size == size
    finally:
        os.close(fd)
    with pytest.raises(TypeError):
        with f.on_failed_read(append=b"a", truncate=3):
            pass


def test_stats_count_the_requests_the_kernel_made(failing_file) -> None:
    f = failing_file(4 * PAGE, inject.page_ranges([2]))
    fd = os.open(f.path, os.O_RDONLY)
    try:
        stats = f.stats()
        asked = stats.pop("getattrs")           # the mount's own lookups count too
        assert stats == {"reads": 0, "failed_reads": 0, "writes": 0, "failed_writes": 0,
                         "truncates": 0}
        os.fstat(fd)                            # attr_timeout=0: one GETATTR
        assert f.stats()["getattrs"] == asked + 1
        with pytest.raises(OSError):
            os.pread(fd, PAGE, 2 * PAGE)
    finally:
        os.close(fd)
    stats = f.stats()
    assert stats["failed_reads"] >= 1 and stats["reads"] >= stats["failed_reads"]


# -- the mount never outlives its owner -------------------------------------------------

def test_the_mount_goes_when_the_block_ends_and_when_it_raises(tmp_path) -> None:
    if not os.path.exists("/dev/fuse"):
        pytest.skip("no /dev/fuse on this machine: failing files need FUSE")
    with inject.failing_file(PAGE, dir=str(tmp_path)) as f:
        assert os.path.ismount(f.mountpoint)
        server = f.pid
    assert not os.path.exists(f.mountpoint) and f.closed
    assert os.listdir(tmp_path) == []
    wait_gone(server, WAIT)
    with pytest.raises(RuntimeError, match="boom"):
        with inject.failing_file(PAGE, dir=str(tmp_path)) as f:
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == [] and f.closed
    with pytest.raises(ValueError):             # fails after mounting: unmounted again
        inject.failing_file(PAGE, [(5, 1)], dir=str(tmp_path))
    assert os.listdir(tmp_path) == []
    with pytest.raises(ValueError):
        f.write(b"x", 0)


OWNER = """
    import sys
    from mcsafe import inject
    f = inject.failing_file(4096, [(0, 1)], dir=sys.argv[1])
    print(f.mountpoint, f.pid, flush=True)
    if sys.argv[2] == "exit":
        sys.exit(0)                   # never closed: collected at exit
    sys.stdin.read()                  # until killed
"""


@pytest.mark.parametrize("end", ["exit", signal.SIGTERM, signal.SIGKILL])
def test_the_mount_goes_when_its_owner_exits_or_is_killed(tmp_path, end) -> None:
    if not os.path.exists("/dev/fuse"):
        pytest.skip("no /dev/fuse on this machine: failing files need FUSE")
    owner = subprocess.Popen([sys.executable, "-c", textwrap.dedent(OWNER), str(tmp_path),
                              str(end)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    try:
        mountpoint, pid = owner.stdout.readline().split()
        if end != "exit":
            assert os.path.ismount(mountpoint)
            owner.send_signal(end)
        assert owner.wait(WAIT) == (0 if end == "exit" else -end)
        wait_gone(int(pid), WAIT)
        assert not os.path.ismount(mountpoint)
        assert os.listdir(tmp_path) == []        # the server removed what was made
    finally:
        owner.kill()
        owner.wait()


FORKER = """
    import os, sys
    from mcsafe import inject
    f = inject.failing_file(4096, dir=sys.argv[1])
    pid = os.fork()
    if pid == 0:
        sys.exit(0)                   # a forked child that ends as Python ends (atexit)
    _, status = os.waitpid(pid, 0)
    with open(f.path, "rb") as g:
        print(os.waitstatus_to_exitcode(status), os.path.ismount(f.mountpoint),
              g.read() == inject.pattern(4096), flush=True)
    f.close()
    print(os.path.exists(f.mountpoint), os.listdir(sys.argv[1]))
"""


def test_a_forked_child_that_ends_leaves_its_parents_mount_alone(tmp_path) -> None:
    """The mount is its owner's: a child forked from it that exits normally (and
    so runs the finalizers it inherited) must not unmount it or remove its files."""
    if not os.path.exists("/dev/fuse"):
        pytest.skip("no /dev/fuse on this machine: failing files need FUSE")
    p = subprocess.run([sys.executable, "-c", textwrap.dedent(FORKER), str(tmp_path)],
                       capture_output=True, text=True, timeout=WAIT)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == ["0 True True", "False []"]


ORPHANING = """
    import os, sys
    from mcsafe import inject
    f = inject.failing_file(4096, dir=sys.argv[1])
    if os.fork() == 0:                # holds copies of the owner's descriptors, lives on
        os.read(0, 1)
        os._exit(0)
    print(f.mountpoint, f.pid, flush=True)
    os.read(0, 1)                     # until killed
"""


def mounted(mountpoint: str) -> bool:
    """Whether /proc/self/mountinfo lists `mountpoint` (field 5)."""
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == mountpoint for line in f)


def test_the_mount_goes_when_its_owner_is_killed_while_a_fork_of_it_lives(tmp_path) -> None:
    """kill -9 of the process that asked for the file ends the server even though
    a child forked from it still holds the control socket (it never sees EOF)."""
    if not os.path.exists("/dev/fuse"):
        pytest.skip("no /dev/fuse on this machine: failing files need FUSE")
    owner = subprocess.Popen([sys.executable, "-c", textwrap.dedent(ORPHANING),
                              str(tmp_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    try:
        mountpoint, pid = owner.stdout.readline().split()
        assert mounted(mountpoint)
        owner.kill()
        assert owner.wait(WAIT) == -signal.SIGKILL
        wait_gone(int(pid), WAIT)
        assert not mounted(mountpoint)
        assert os.listdir(tmp_path) == []        # the server removed what was made
    finally:
        owner.kill()
        owner.wait()
        owner.stdin.close()                      # the fork reads EOF and ends


def test_the_mount_goes_when_the_server_is_sent_sigterm(failing_file) -> None:
    f = failing_file(PAGE)
    os.kill(f.pid, signal.SIGTERM)              # libfuse's handler ends the loop, unmounts
    wait_gone(f.pid, WAIT)
    assert not os.path.ismount(f.mountpoint)
    with pytest.raises(OSError):
        f.stats()
    f.close()


def test_the_mount_goes_when_the_server_is_killed_outright(failing_file) -> None:
    f = failing_file(PAGE)
    watchdogs = children_named(f.pid, "fusermount3")     # mounted with auto_unmount
    assert len(watchdogs) == 1
    os.kill(f.pid, signal.SIGKILL)
    wait_gone(watchdogs[0], WAIT)                        # it unmounts, then exits
    assert not os.path.ismount(f.mountpoint)
    f.close()
    assert not os.path.exists(f.mountpoint)


def test_fuse_unavailable_says_nothing_is_missing_here() -> None:
    if not os.path.exists("/dev/fuse"):
        assert "/dev/fuse" in inject.fuse_unavailable()
    else:
        assert inject.fuse_unavailable() is None


def test_import_mcsafe_does_not_import_the_injector() -> None:
    p = child("""
        import sys, mcsafe
        print(sorted(m for m in sys.modules if 'failfs' in m or 'fuse' in m))
    """)
    assert (p.returncode, p.stdout.strip()) == (0, "[]"), p.stderr
