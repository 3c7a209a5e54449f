"""MappedFile at the edges a hostile review found: logs appended to while read by
several threads, close() racing calls, a shrinking block device, a thread that
blocks SIGBUS, hugetlbfs, objects dropped without close()."""

from __future__ import annotations

import errno
import gc
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import uffd_stall
from mcsafe import MappedFile, MemoryFaultError, inject

PAGE = inject.PAGE
BASE = bytes(i % 251 + 1 for i in range(2 << 20))


class Appender:
    """Another process appending to a file: `chunk` bytes for each append() asked,
    so a test makes a fixed number of appends, interleaved with its own calls
    however fast the machine is; the bytes before never change."""

    def __init__(self, path, chunk: int) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
            import os
            fd = os.open({str(path)!r}, os.O_WRONLY | os.O_APPEND)
            while os.read(0, 1):
                os.write(fd, b"x" * {chunk})
                os.write(1, b"+")
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def append(self) -> None:
        """Ask for one more append (it lands soon after: any thread may ask)."""
        os.write(self.proc.stdin.fileno(), b"+")

    def landed(self) -> None:
        """Wait until the oldest append asked (and not waited for) is in the file."""
        assert os.read(self.proc.stdout.fileno(), 1) == b"+"

    def done(self) -> int:
        """Wait until every append asked has landed; its exit status."""
        self.proc.stdin.close()
        self.proc.stdout.read()
        return self.proc.wait()


@pytest.mark.parametrize("mode", ["read", "write"])
def test_calls_on_a_log_being_appended_to_count_in_full(tmp_path, mode: str) -> None:
    """Threads read (or write) 256 KiB in the first 2 MiB while another thread
    follows the size and another process appends (64 KiB per call, so the probe
    is armed again many times): every call counts all of it.
    (Each size change used to arm the probe again, failing calls in flight, whose
    careful path then counted none: end of file, in the middle of the file.)"""
    path = tmp_path / "log"
    path.write_bytes(BASE)
    chunk, calls = 64 << 10, 100
    appender = Appender(path, chunk)
    bad: list[tuple[int, int]] = []
    stop = threading.Event()
    with MappedFile(path, "r" if mode == "read" else "r+") as mf:
        def follow() -> None:
            while not stop.is_set():
                mf.size

        def call(i: int) -> None:
            off = i * 100_000
            expect = BASE[off:off + (256 << 10)]
            buf = bytearray(expect)
            for _ in range(calls):
                appender.append()
                n = mf.readinto(buf, off) if mode == "read" else mf.write(expect, off)
                if n != len(expect) or (mode == "read" and buf != expect):
                    bad.append((off, n))
        follower = threading.Thread(target=follow)
        callers = [threading.Thread(target=call, args=(i,)) for i in range(4)]
        for t in [follower] + callers:
            t.start()
        for t in callers:
            t.join()
        stop.set()
        follower.join()
    assert appender.done() == 0
    assert not bad, f"{len(bad)} of {4 * calls} calls short, e.g. {bad[:3]}"
    data = path.read_bytes()
    assert len(data) == len(BASE) + 4 * calls * chunk and data[:len(BASE)] == BASE


@pytest.mark.parametrize("mode", ["read", "write"])
def test_a_call_whose_probe_is_armed_again_meanwhile_counts_in_full(tmp_path,
                                                                   mode: str) -> None:
    """The race above, made certain: in the middle of a call (its buffer stalls at
    page 30, tests/uffd_stall.py) the file grows twice by more than an eighth and
    the size is followed each time, which arms the probe again twice: the probe
    page the call checks is no longer the one armed (its mapping is dropped by the
    second arming: the call's read of its word faults, which the table turns into
    a failed probe), so the call takes the careful path, which must count all of
    it."""
    if uffd_stall.unavailable():
        pytest.skip(uffd_stall.unavailable())
    path = tmp_path / "log"
    path.write_bytes(BASE)
    off, npages = 100_000, 64
    expect = BASE[off:off + npages * PAGE]
    with MappedFile(path, "r" if mode == "read" else "r+") as mf:
        probe, word = mf._state[3:5]

        def grow_twice() -> None:
            for _ in range(2):
                with open(path, "ab") as f:
                    f.write(b"x" * (1 << 20))
                mf.size                      # followed: the probe is armed again
        contents = bytes(len(expect)) if mode == "read" else expect
        with uffd_stall.stalled_buffer(npages, contents, {30: grow_twice}) as buf:
            n = mf.readinto(buf, off) if mode == "read" else mf.write(buf, off)
            got = bytes(buf)
        assert mf._state[3:5] != (probe, word)    # the probe the call checked: armed anew
    assert n == len(expect) and got == expect
    assert path.read_bytes()[:len(BASE)] == BASE


def test_a_read_near_the_end_of_a_growing_log_is_never_end_of_file(tmp_path) -> None:
    """64 KiB ending 8 KiB before the end of a log another process appends to (the
    careful path: past the probe), one thread: every read counts all of it."""
    path = tmp_path / "log"
    path.write_bytes(b"\x01" * (4 << 20))
    reads = 300
    appender = Appender(path, 512)
    short = 0
    buf = bytearray(64 << 10)
    with MappedFile(path) as mf:
        appender.append()
        for _ in range(reads):
            appender.landed()          # the file is longer than mf last saw it,
            appender.append()          # and grows again during the read
            end = os.fstat(mf.fileno()).st_size
            n = mf.readinto(buf, end - (72 << 10))
            short += n != len(buf)
    assert appender.done() == 0
    assert short == 0, f"{short} of {reads} reads short"
    assert os.path.getsize(path) == (4 << 20) + (reads + 1) * 512


def test_close_waits_for_a_call_that_arms_the_probe_again(tmp_path, monkeypatch) -> None:
    """A call whose probe failed asks the file's size with MappedFile's descriptor:
    close() must wait for it, or the call moves the offset of whatever file the
    caller opens next under the same number (or fails with EBADF)."""
    path = tmp_path / "f"
    data = inject.pattern(8 * PAGE)
    path.write_bytes(data)
    held, release = threading.Event(), threading.Event()
    from mcsafe.mapped.mapping import Window
    failed = Window.probe_failed

    def slow(self: Window, word: int) -> None:
        held.set()
        release.wait(10)
        failed(self, word)

    monkeypatch.setattr(Window, "probe_failed", slow)
    mf = MappedFile(path)
    looked_again = threading.Event()
    looks: list[bool] = []
    ends: list[str] = []

    class Calls(dict):
        """mf's calls under way, saying when close() looks at them (it iterates)
        and when the read leaves."""

        def __iter__(self):
            if threading.current_thread().name == "closer":
                looks.append(bool(self))
                if len(looks) == 2:
                    looked_again.set()
            return super().__iter__()

        def pop(self, *args):
            depth = super().pop(*args)
            if depth == 1 and held.is_set():     # the held call ended
                ends.append("read left")
            return depth

    mf._users = Calls()
    assert inject._libc.mprotect(mf._state[3], PAGE, 0) == 0     # the probe faults
    got: list[object] = []

    def read() -> None:
        try:
            got.append(mf.read(10, 0))
        except Exception as exc:       # noqa: BLE001 - reported by the assertion
            got.append(exc)

    def close() -> None:
        mf.close()
        ends.append("closed")
    reader = threading.Thread(target=read)
    reader.start()
    assert held.wait(10)
    closer = threading.Thread(target=close, name="closer")
    closer.start()
    # close() saw the call and looked again instead of going on: it waits
    assert looked_again.wait(10), f"close() did not wait for the call: {looks} {ends}"
    assert all(looks[:2]) and ends == []     # (it may look again meanwhile: it polls)
    release.set()
    reader.join(10)
    closer.join(10)
    assert ends == ["read left", "closed"]
    assert got == [data[:10]] and mf.closed


def test_close_while_other_threads_calls_come_and_go(tmp_path) -> None:
    """close() looks at the calls under way under the lock (it raised "dictionary
    changed size during iteration", and then leaked the descriptor)."""
    path = tmp_path / "f"
    path.write_bytes(b"\x01" * 2 * PAGE)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for _ in range(150):
            mf = MappedFile(path)

            def call() -> None:
                try:
                    while True:
                        mf.size                  # enters and leaves, each call
                except ValueError:
                    pass
            threads = [threading.Thread(target=call) for _ in range(6)]
            for t in threads:
                t.start()
            time.sleep(0.001)
            mf.close()
            for t in threads:
                t.join()
            assert not os.path.exists(f"/proc/self/fd/{mf._fd}") or \
                os.readlink(f"/proc/self/fd/{mf._fd}") != str(path)
    finally:
        sys.setswitchinterval(interval)


def test_a_block_device_that_shrinks_is_read_to_its_new_end(tmp_path, loop_device) -> None:
    """A loop device whose backing file is cut (losetup -c) keeps its page cache,
    so no cut unmaps anything: reads past the new end must still stop there."""
    backing = tmp_path / "disk.img"
    data = inject.pattern(64 * PAGE, seed=4)
    backing.write_bytes(data)
    dev = loop_device(backing)
    with MappedFile(dev, "r+") as mf:
        buf = bytearray(PAGE)
        for p in range(64):                          # every page read, mapped
            assert mf.readinto(buf, p * PAGE) == PAGE
        os.truncate(backing, 8 * PAGE)
        subprocess.run(["losetup", "-c", dev], check=True)
        assert [mf.readinto(buf, p * PAGE) for p in range(6, 64)] == [PAGE] * 2 + [0] * 56
        assert mf.write(b"w" * PAGE, 40 * PAGE) == 0
        assert mf.size == 8 * PAGE


def test_a_thread_that_blocks_sigbus_gets_runtimeerror_on_the_fast_path(tmp_path) -> None:
    """Copies of 1 MiB or more refuse on a thread that blocks SIGBUS (the kernel
    would kill the process on a fault): readinto's fast path too."""
    path = tmp_path / "f"
    path.write_bytes(b"\x01" * (8 << 20))
    child = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import signal, os
        from mcsafe import MappedFile
        mf = MappedFile({str(path)!r})
        signal.pthread_sigmask(signal.SIG_BLOCK, {{signal.SIGBUS}})
        buf = bytearray(2 << 20)
        assert mf.readinto(bytearray(4096), 0) == 4096     # small: not checked
        os.truncate({str(path)!r}, 0)
        try:
            mf.readinto(buf, 0)
        except RuntimeError as exc:
            print("RuntimeError:", exc)
    """)], capture_output=True, text=True, timeout=60)
    assert child.returncode == 0, f"died of {-child.returncode}: {child.stderr[-500:]}"
    assert "blocks SIGBUS" in child.stdout


def _maps() -> int:
    with open("/proc/self/maps") as f:
        return len(f.readlines())


def _fds_and_maps_of(path) -> tuple[int, int]:
    """Descriptors and mappings of this process that hold the file at path (by
    device and inode: other mappings come and go with malloc and threads)."""
    st = os.stat(path)
    fds = sum(1 for fd in os.listdir("/proc/self/fd")
              if _same_file(f"/proc/self/fd/{fd}", st))
    with open("/proc/self/maps") as f:
        maps = sum(1 for line in f if int(line.split()[4]) == st.st_ino
                   and line.split()[3] == f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}")
    return fds, maps


def _same_file(link: str, st: os.stat_result) -> bool:
    try:
        other = os.stat(link)
    except OSError:
        return False
    return (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino)


def test_a_mapped_file_dropped_open_is_closed_with_a_resource_warning(tmp_path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"\x01" * PAGE)
    with pytest.warns(ResourceWarning, match="unclosed <MappedFile"):
        for _ in range(20):
            MappedFile(path).read(10)
        gc.collect()
    assert _fds_and_maps_of(path) == (0, 0)


def test_dropped_open_it_is_closed_even_when_the_warning_is_an_error(tmp_path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"\x01" * PAGE)
    child = subprocess.run([sys.executable, "-W", "error::ResourceWarning", "-c", textwrap.dedent(f"""
        import gc, os
        from mcsafe import MappedFile
        fds = len(os.listdir("/proc/self/fd"))
        for _ in range(20):
            MappedFile({str(path)!r}).read(10)
        gc.collect()
        print(len(os.listdir("/proc/self/fd")) - fds)
    """)], capture_output=True, text=True, timeout=60)
    assert child.returncode == 0, child.stderr[-1000:]
    assert child.stdout.split() == ["0"], f"descriptors left open: {child.stdout}"
    assert "unclosed <MappedFile" in child.stderr         # reported, as unraisable


def test_a_file_object_that_fails_to_open_leaves_no_noise() -> None:
    child = subprocess.run([sys.executable, "-X", "dev", "-c", textwrap.dedent("""
        import mcsafe.fileio
        try:
            mcsafe.fileio.open("/nonexistent/file")
        except FileNotFoundError:
            print("refused")
    """)], capture_output=True, text=True, timeout=60)
    assert child.stdout.split() == ["refused"] and "Exception ignored" not in child.stderr, \
        child.stderr[-1000:]


def _during_every_copy(mf: MappedFile, action) -> list[int]:
    """Run action() around every careful copy of mf (each copy is one try)."""
    copy, tries = mf._careful.copy, []

    def wrapped(*args):
        tries.append(len(tries) + 1)
        action("before", len(tries))
        try:
            return copy(*args)
        finally:
            action("after", len(tries))
    mf._careful.copy = wrapped
    return tries


def test_a_file_cut_and_written_again_during_every_careful_copy(tmp_path) -> None:
    """A writer that cuts the file inside the page being written and writes it long
    again, during every try of a careful copy: nothing dropped counts (pwrite(2)
    never counts a byte the kernel dropped). The last try is proved by a probe on
    the page past the copy's end. (A read of that page is pread(2)'s own.)"""
    path = tmp_path / "f"
    data = b"\xab" * (5 * PAGE)
    for mode in ("write",):
        path.write_bytes(data[:3 * PAGE + 2000])
        with MappedFile(path, "r+") as mf:
            path.write_bytes(data)     # grown since: the call reaches past the probe
            def churn(when: str, _: int) -> None:
                if when == "before":
                    os.truncate(path, 3 * PAGE + 100)
                else:
                    with open(path, "r+b") as f:
                        f.seek(3 * PAGE + 100)
                        f.write(data[3 * PAGE + 100:])
            tries = _during_every_copy(mf, churn)
            if mode == "write":
                n = mf.write(b"\xcd" * 1000, 3 * PAGE)
                mf._careful.copy = mf._window.copy
                mf.sync()
                landed = path.read_bytes()[3 * PAGE:3 * PAGE + n]
                assert landed == b"\xcd" * n, f"{n} counted, {landed.count(0xcd)} in the file"
            else:
                buf = bytearray(1000)
                n = mf.readinto(buf, 3 * PAGE)
                assert buf[:n].count(0) == 0, f"{buf[:n].count(0)} zeros counted of {n}"
            assert len(tries) >= 5                   # every try saw the file change


@pytest.mark.parametrize("size", [3 * PAGE + 2000, 4 * PAGE])
def test_a_file_whose_times_change_during_every_copy_is_counted_in_full(tmp_path,
                                                                        size: int) -> None:
    """Writes in place (or a touch) change the file's times but cut nothing: the
    careful path's last try must count everything, at a page-aligned end too
    (reads of the last page are pread(2)'s, untouched by the churn)."""
    path = tmp_path / "f"
    path.write_bytes(b"\xab" * size)
    with MappedFile(path, "r+") as mf:
        tries = _during_every_copy(mf, lambda when, _: os.utime(path))
        assert mf.write(b"\xcd" * 100, size - 100) == 100
        assert mf.readinto(bytearray(size), 0) == size
        buf = bytearray(100)
        assert mf.readinto(buf, size - 100) == 100 and buf == b"\xcd" * 100
        assert len(tries) >= 5
    assert path.read_bytes()[-100:] == b"\xcd" * 100


def test_a_fault_in_the_last_try_is_reported_and_remembered(tmp_path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"\xab" * (3 * PAGE + 2000))
    with MappedFile(path, "r+") as mf:
        def touch(when: str, k: int) -> None:
            if when == "before" and k == 5:          # the last try: page 2 goes bad
                assert inject._libc.mprotect(mf.address + 2 * PAGE, PAGE, 0) == 0
            if when == "after":
                os.utime(path)
        _during_every_copy(mf, touch)
        assert mf.write(b"\xcd" * (PAGE + 2000), 2 * PAGE - 500) == 500
        assert mf.bad_ranges() == [(2 * PAGE, 3 * PAGE)]
        mf._careful.copy = mf._window.copy
        with pytest.raises(MemoryFaultError) as err:
            mf.read(10, 2 * PAGE)
        assert err.value.errno == errno.EIO
        with pytest.raises(MemoryFaultError) as err:
            mf.write(b"x", 2 * PAGE)
        assert err.value.side == "dst"
        inject._libc.mprotect(mf.address + 2 * PAGE, PAGE, 1)


def test_a_file_that_outgrows_its_mapping_when_no_mapping_can_be_made(tmp_path) -> None:
    """vm.max_map_count reached: calls within what is mapped still work, and a read
    or a write past it says why (ENOMEM) instead of counting as the end of the
    file (a read is never served by read(2): docs/ARCHITECTURE.md, "Machine
    checks"); one that starts inside is short at the mapping's end."""
    knob = "/proc/sys/vm/max_map_count"
    path = tmp_path / "f"
    data = bytes(i % 251 + 1 for i in range(256 * PAGE))
    path.write_bytes(data)
    with open(knob) as f:
        before = f.read().strip()
    with MappedFile(path, "r+") as mf:
        reserved = mf._map.length
        try:
            with open(knob, "w") as f:
                f.write(str(_maps() - 5))
        except OSError as exc:
            pytest.skip(f"cannot lower {knob} here: {exc.strerror}")
        try:
            os.truncate(path, reserved + 64 * PAGE)
            assert mf.read(100, 100 * PAGE) == data[100 * PAGE:100 * PAGE + 100]
            for call in (lambda: mf.read(100, reserved + PAGE),
                         lambda: mf.write(b"w" * 100, reserved + PAGE)):
                with pytest.raises(OSError) as err:
                    call()
                assert err.value.errno == errno.ENOMEM and err.value.filename == str(path)
            assert mf.readinto(bytearray(2 * PAGE), reserved - 100) == 100
        finally:
            with open(knob, "w") as f:
                f.write(before)
        assert mf.read(100, reserved + PAGE) == bytes(100)    # mapped again: a hole
