"""``mcsafe scan`` against real failing files (FUSE), files that change under it,
big trees, sparse files, unreadable files, loops and special files (issue 21)."""

from __future__ import annotations

import contextlib
import errno
import json
import mmap
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcsafe import inject
from mcsafe.cli.scanfile import SMALL, FileReport, Scanner
from mcsafe.cli.stop import StopFlag
from mcsafe.cli.walk import Files, Target, Walk

from conftest import wait_gone
from terminal import run_on_terminal
from test_mapped_scrub import sparse

PAGE = inject.PAGE
WAIT = 120          # seconds: a deadline for a child that should end, never a pace


def mcsafe(*args: object, user: list[str] | None = None, **kwargs) -> subprocess.CompletedProcess:
    """The command in a child process, as a user runs it (optionally under a prefix
    such as setpriv)."""
    return subprocess.run([*(user or []), sys.executable, "-m", "mcsafe", *map(str, args)],
                          capture_output=True, text=True, timeout=WAIT, **kwargs)


def scan_json(*args: object, **kwargs) -> tuple[int, dict[str, dict], dict, str]:
    """(exit status, file objects by path, the summary, stderr) of scan --json."""
    p = mcsafe("scan", "--json", *args, **kwargs)
    lines = [json.loads(line) for line in p.stdout.splitlines()]
    assert lines and lines[-1]["type"] == "summary", (p.stdout, p.stderr)
    assert "Traceback" not in p.stderr, p.stderr
    files = {o["path"]: o for o in lines[:-1]}
    assert all(o["type"] == "file" for o in lines[:-1]) and len(files) == len(lines) - 1
    return p.returncode, files, lines[-1], p.stderr


def read2_bad_pages(path: str, size: int, direct: bool = False) -> list[tuple[int, int]]:
    """The oracle: the pages read(2) fails on with EIO, as byte ranges. direct: each
    page read alone with O_DIRECT, as a block device must be (through its page
    cache, a read fails with the whole readahead request it was batched in)."""
    bad = []
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECT if direct else 0))
    buf = mmap.mmap(-1, PAGE)                   # page-aligned, as O_DIRECT needs
    try:
        for p in range(-(-size // PAGE)):
            try:
                os.preadv(fd, [buf], p * PAGE)
            except OSError as exc:
                assert exc.errno == errno.EIO
                bad.append(p)
    finally:
        os.close(fd)
        buf.close()
    return inject.page_ranges(bad)


def bad_of(obj: dict) -> list[tuple[int, int]]:
    return [(b["start"], b["end"]) for b in obj["bad"]]


# -- failing files, found, with their cause ---------------------------------------------

def test_a_tree_with_failing_files_reports_exactly_their_bad_pages(failing_file, tmp_path) -> None:
    """Two failing files (a small one, read by one mapped copy, and a 3 MiB one, read
    by scrub) among clean files: exit 1, and each file's bad ranges are the pages
    read(2) fails on, cause 'io'; the clean files are clean."""
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "clean").write_bytes(os.urandom(10_000))
    (tree / "sub" / "empty").write_bytes(b"")
    small = failing_file(64 * PAGE, inject.page_ranges([3, 4, 40]), dir=tree)
    big = failing_file(3 << 20, [((1 << 20) + 5, (1 << 20) + 6), ((3 << 20) - 1, 3 << 20)],
                       name="big", dir=tree / "sub")
    code, files, summary, err = scan_json(tree)
    assert code == 1, err
    for f, size in ((small, 64 * PAGE), (big, 3 << 20)):
        got = files[f.path]
        assert got["status"] == "bad" and got["size"] == got["done"] == size
        assert bad_of(got) == read2_bad_pages(f.path, size)
        assert {b["cause"] for b in got["bad"]} == {"io"}
    assert files[str(tree / "clean")]["status"] == "clean"
    assert files[str(tree / "sub" / "empty")]["status"] == "clean"
    assert summary["bad_files"] == 2 and summary["bad_ranges"] == 4
    assert summary["bad_bytes"] == 5 * PAGE and summary["exit"] == 1
    human = mcsafe("scan", tree)
    assert human.returncode == 1
    bad_lines = [line for line in human.stdout.splitlines() if line.startswith("BAD ")]
    assert sorted(bad_lines) == sorted([
        f"BAD {small.path}: 2 bad ranges, 12.0 KiB of 256.0 KiB: [0x3000, 0x5000) io, "
        "[0x28000, 0x29000) io",
        f"BAD {big.path}: 2 bad ranges, 8.0 KiB of 3.0 MiB: [0x100000, 0x101000) io, "
        "[0x2ff000, 0x300000) io"])
    assert human.stdout.splitlines()[-1].startswith("scanned ")


def test_jobs_find_the_same_as_one_process(failing_file, tmp_path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    for i in range(40):
        (tree / f"f{i:02d}").write_bytes(os.urandom(i * 1000))
    for i in range(3):
        failing_file(32 * PAGE, inject.page_ranges([i, 10 + i]), dir=tree)
    one = scan_json(tree)
    two = scan_json("--jobs", "3", tree)
    assert one[0] == two[0] == 1
    assert one[1] == two[1]
    keep = ("files", "bytes", "clean", "bad", "bad_files", "bad_ranges", "bad_bytes", "exit")
    assert {k: one[2][k] for k in keep} == {k: two[2][k] for k in keep}


def test_a_named_block_device_on_a_failing_file_is_scanned(failing_file, loop_device) -> None:
    """A loop device over a FUSE failing file: a failing disk, named on the command
    line, is scanned as a block device; the pages read(2) of the device fails on
    are its bad ranges."""
    f = failing_file(256 * PAGE, inject.page_ranges([7, 100, 101]))
    dev = loop_device(Path(f.path))
    code, files, _, err = scan_json(dev)
    assert code == 1, err
    got = files[dev]
    assert got["kind"] == "block device" and got["size"] == 256 * PAGE
    assert bad_of(got) == read2_bad_pages(dev, 256 * PAGE, direct=True) == \
        inject.page_ranges([7, 100, 101])


# -- trees ------------------------------------------------------------------------------

def test_ten_thousand_small_files_and_one_failing(failing_file, tmp_path) -> None:
    tree = tmp_path / "many"
    for d in range(100):
        (tree / f"d{d:02d}").mkdir(parents=True)
        for i in range(100):
            (tree / f"d{d:02d}" / f"f{i:02d}").write_bytes(i.to_bytes(2, "little") * 2048)
    f = failing_file(4 * PAGE, inject.page_ranges([2]), dir=tree / "d50")
    code, files, summary, err = scan_json(tree)
    assert code == 1, err
    assert summary["files"] == 10_000 + 2           # and the failing file's backing
    assert summary["clean"] == 10_001 and summary["bad_files"] == 1
    assert bad_of(files[f.path]) == [(2 * PAGE, 3 * PAGE)]
    assert summary["bytes"] == 10_000 * 4096 + 2 * 4 * PAGE


def test_a_hole_between_data_costs_no_memory(tmp_path) -> None:
    """A 1 TiB file with data at its start and near its end, scanned under RLIMIT_DATA
    of 192 MiB: the page cache is followed chunk by chunk, not over the hole (main
    kept a byte per page from the first data to the last: 538 MB, 5 s; here a
    MemoryError)."""
    import resource
    path = tmp_path / "sparse"
    sparse(path, 1 << 40, {0: b"head", 1023 << 30: b"tail"})
    limit = 192 << 20
    code, files, summary, err = scan_json(
        path, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_DATA, (limit, limit)))
    assert code == 0, err
    assert (files[str(path)]["status"], files[str(path)]["done"]) == ("clean", 1 << 40)


def test_a_sparse_terabyte_is_scanned_by_its_data(tmp_path) -> None:
    path = tmp_path / "sparse"
    sparse(path, 1 << 40, {1 << 39: b"data" * 1000})
    proc = subprocess.Popen([sys.executable, "-m", "mcsafe", "scan", "--json", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=WAIT)
    lines = [json.loads(line) for line in out.splitlines()]
    assert proc.returncode == 0, err
    assert lines[0]["status"] == "clean" and lines[0]["size"] == lines[0]["done"] == 1 << 40


def test_memory_stays_bounded_on_a_large_file(tmp_path) -> None:
    """A 1 GiB file: the scanning process's peak resident set (VmHWM of its own
    memory, which rusage's maxrss is not: it starts from the parent's) stays far
    below it, the scan dropping its mapping's pages as it goes."""
    path = tmp_path / "large"
    chunk = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for _ in range(1024):
            f.write(chunk)
    code = ("import sys; from mcsafe.cli import main; rc = main(['scan', sys.argv[1]]); "
            "print(open('/proc/self/status').read().split('VmHWM:')[1].split()[0], "
            "file=sys.stderr); sys.exit(rc)")
    p = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                       timeout=WAIT)
    assert p.returncode == 0, p.stderr
    peak_kib = int(p.stderr.split()[-1])
    assert peak_kib < 200 << 10, f"peak RSS {peak_kib} KiB"


# -- what is not a file to scan, and what cannot be read ----------------------------------------

def test_special_files_found_while_walking_are_skipped_and_said(tmp_path) -> None:
    tree = tmp_path / "special"
    tree.mkdir()
    (tree / "file").write_bytes(b"x" * 5000)
    os.mkfifo(tree / "fifo")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tree / "sock"))
    os.mknod(tree / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mknod(tree / "loop", stat.S_IFBLK | 0o600, os.makedev(7, 0))
    try:
        code, files, summary, err = scan_json(tree)
    finally:
        sock.close()
    assert code == 0, err
    assert {p: (o["status"], o["kind"]) for p, o in files.items()} == {
        str(tree / "file"): ("clean", "file"), str(tree / "fifo"): ("skipped", "fifo"),
        str(tree / "sock"): ("skipped", "socket"), str(tree / "null"): ("skipped", "char device"),
        str(tree / "loop"): ("skipped", "block device")}
    assert "only when named" in files[str(tree / "loop")]["message"]
    human = mcsafe("scan", tree)
    assert f"SKIPPED {tree / 'fifo'}: a FIFO" in human.stdout.splitlines()
    # named, a FIFO cannot be scanned: exit 2, named on stderr, the rest still scanned
    code, files, summary, err = scan_json(tree / "fifo", tree / "file")
    assert code == 2 and files[str(tree / "file")]["status"] == "clean"
    assert f"mcsafe scan: {tree / 'fifo'}: a FIFO" in err


def test_pseudo_file_systems_are_not_walked() -> None:
    """procfs and sysfs: files whose sizes are not their contents (a 128 TiB
    /proc/kcore, 4 KiB sysfs attributes that cannot be mapped) are not read."""
    code, files, summary, err = scan_json("/proc", "/sys")
    assert code == 0, err
    assert {p: (o["status"], o["kind"]) for p, o in files.items()} == {
        "/proc": ("skipped", "file system"), "/sys": ("skipped", "file system")}
    assert files["/proc"]["message"] == \
        "a proc file system: its files' sizes are not their contents"


def test_symbolic_link_loops_end(tmp_path) -> None:
    tree = tmp_path / "loops"
    (tree / "d").mkdir(parents=True)
    (tree / "d" / "f").write_bytes(b"f" * 100)
    os.symlink("..", tree / "d" / "up")           # a loop if followed
    os.symlink(".", tree / "self")
    os.symlink("b", tree / "a")
    os.symlink("a", tree / "b")
    code, files, summary, err = scan_json(tree)
    assert code == 0, err
    assert list(files) == [str(tree / "d" / "f")]
    assert summary["symlinks_not_followed"] == 4
    code, files, _, err = scan_json(tree / "a")       # named: followed, and a loop
    assert code == 2 and files[str(tree / "a")]["status"] == "error"
    assert f"mcsafe scan: {tree / 'a'}: Too many levels of symbolic links" in err
    code, files, _, _ = scan_json(tree / "d" / "up")  # named: followed, walked once
    assert code == 0 and str(tree / "d" / "up" / "d" / "f") in files


def without_read_permission() -> list[str]:
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed: cannot drop root's capabilities")
    return ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--"]


def test_unreadable_files_and_directories_are_named_and_the_rest_scanned(tmp_path) -> None:
    tree = tmp_path / "perm"
    (tree / "closed").mkdir(parents=True)
    (tree / "closed" / "inside").write_bytes(b"i")
    (tree / "secret").write_bytes(b"s" * 100)
    (tree / "open").write_bytes(b"o" * 100)
    os.chmod(tree / "secret", 0)
    os.chmod(tree / "closed", 0)
    try:
        code, files, summary, err = scan_json(tree, user=without_read_permission())
    finally:
        os.chmod(tree / "closed", 0o755)
    assert code == 2
    assert files[str(tree / "open")]["status"] == "clean"
    assert files[str(tree / "secret")]["status"] == "error"
    assert f"mcsafe scan: {tree / 'secret'}: Permission denied" in err
    assert f"mcsafe scan: {tree / 'closed'}: cannot list: Permission denied" in err
    assert summary["error"] == 2


# -- files that change during the scan --------------------------------------------------------

def scan_with(path: Path, during) -> object:
    """Scan one file in this process, calling during() (once) after the first chunk."""
    done = []

    def progress(n: int) -> None:
        if not done:
            done.append(n)
            during()
    return Scanner(progress, lambda: False).scan(Target(str(path), str(path), None, True))


@pytest.fixture
def forty_mib(tmp_path) -> Path:
    path = tmp_path / "forty"
    with open(path, "wb") as f:
        f.write(os.urandom(40 << 20))
    return path


def test_a_file_cut_by_another_process_during_the_scan_is_changed_not_bad(forty_mib) -> None:
    r = scan_with(forty_mib, lambda: subprocess.run(["truncate", "-s", "20M", forty_mib],
                                                    check=True))
    assert (r.status, r.change, r.bad, r.size, r.size_now) == \
        ("changed", "shrank", [], 40 << 20, 20 << 20)
    r = scan_with(forty_mib, lambda: subprocess.run(["truncate", "-s", "1000", forty_mib],
                                                    check=True))
    assert (r.status, r.change, r.bad) == ("changed", "shrank", [])


def test_a_file_grown_by_another_process_during_the_scan_is_changed_not_bad(forty_mib) -> None:
    r = scan_with(forty_mib, lambda: subprocess.run(["truncate", "-s", "100M", forty_mib],
                                                    check=True))
    assert (r.status, r.change, r.bad, r.done, r.size_now) == \
        ("changed", "grew", [], 40 << 20, 100 << 20)
    assert "the first 41943040 scanned" in r.message


def test_a_file_written_replaced_or_deleted_during_the_scan(forty_mib, tmp_path) -> None:
    def write() -> None:
        with open(forty_mib, "r+b") as f:
            f.seek(30 << 20)
            f.write(b"new")
    assert (scan_with(forty_mib, write).change, scan_with(forty_mib, write).status) == \
        ("modified", "changed")
    other = tmp_path / "other"
    other.write_bytes(b"o")
    r = scan_with(forty_mib, lambda: os.rename(other, forty_mib))
    assert (r.status, r.change, r.size) == ("changed", "replaced", 40 << 20)
    forty_mib.write_bytes(os.urandom(40 << 20))
    r = scan_with(forty_mib, lambda: os.unlink(forty_mib))
    assert (r.status, r.change) == ("changed", "deleted")


def test_a_file_that_vanishes_or_turns_into_a_fifo_after_the_walk(tmp_path) -> None:
    tree = tmp_path / "t"
    tree.mkdir()
    for name in "abc":
        (tree / name).write_bytes(b"x")
    scanner = Scanner(lambda n: None, lambda: False)
    reports = []
    for item in Walk([str(tree)]):
        assert isinstance(item, Target)
        if item.name == "a":
            os.unlink(tree / "b")
            os.unlink(tree / "c")
            os.mkfifo(tree / "c")
        reports.append(scanner.scan(item))
    assert [(r.path, r.status, r.change) for r in reports] == [
        (str(tree / "a"), "clean", None), (str(tree / "b"), "vanished", None),
        (str(tree / "c"), "changed", "replaced")]


def test_a_failing_file_cut_at_its_bad_page_is_changed_not_bad(failing_file) -> None:
    """The cut happens in the FUSE server while the scan's read of the bad page is
    held, before the kernel says it failed: the page is past the end when judged."""
    f = failing_file(32 * PAGE, inject.page_ranges([20]))
    with f.on_failed_read(truncate=10 * PAGE):
        code, files, _, err = scan_json(f.path)
    assert code == 0, err
    got = files[f.path]
    assert (got["status"], got["change"], got["bad"], got["size_now"]) == \
        ("changed", "shrank", [], 10 * PAGE)


def test_a_failing_file_that_grows_at_its_bad_page_is_still_bad(failing_file) -> None:
    f = failing_file(32 * PAGE, inject.page_ranges([20]))
    with f.on_failed_read(append=b"z" * PAGE):
        code, files, _, err = scan_json(f.path)
    got = files[f.path]
    assert code == 1, err
    assert (got["status"], got["change"], bad_of(got)) == \
        ("bad", "grew", [(20 * PAGE, 21 * PAGE)])


# -- stopping ----------------------------------------------------------------------------------

class Inotify:
    """inotify events of one kind on a file or in a folder: wait (by a blocking read,
    not by polling) until n of them have happened, by anyone."""

    IN_OPEN, IN_MOVED_TO, IN_CLOEXEC = 0x20, 0x80, 0o2000000

    def __init__(self, path: str | Path, mask: int, name: str | None = None) -> None:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(self.IN_CLOEXEC)
        assert self.fd >= 0 and libc.inotify_add_watch(self.fd, os.fsencode(path), mask) >= 0
        self.name = name
        self.seen = 0

    def wait(self, n: int) -> None:
        import select
        while self.seen < n:
            assert select.select([self.fd], [], [], WAIT)[0], f"not {n} events"
            data = os.read(self.fd, 4096)
            while data:                  # struct inotify_event: wd, mask, cookie, len, name
                length = int.from_bytes(data[12:16], "little")
                name = data[16:16 + length].rstrip(b"\0").decode()
                if self.name is None or name == self.name:
                    self.seen += 1
                data = data[16 + length:]

    def close(self) -> None:
        os.close(self.fd)


def inside(f) -> tuple[object, Inotify]:
    """Make every failing read of f rewrite f's first byte with itself in the FUSE
    server (behind the mount), and watch for it: an event (inotify IN_MODIFY on the
    backing file) that says a reader is inside f, at a bad page."""
    IN_MODIFY = 0x2
    watch = Inotify(f.backing, IN_MODIFY)
    return f.on_failed_read(write=(f.contents()[:1], 0)), watch


def scan_until_inside(slow, sig: int, *args: object, hold: bool = False
                      ) -> tuple[subprocess.Popen[str], str, str]:
    """`mcsafe scan --json ARGS`, sent sig on the first failing read of `slow`;
    the process (ended), its stdout and its stderr. hold: the FUSE server keeps
    that read until the signal was sent, then lets it fail."""
    hook, watch = inside(slow)
    with hook, (slow.holding_failed_reads() if hold else contextlib.nullcontext()):
        proc = subprocess.Popen([sys.executable, "-m", "mcsafe", "scan", "--json", *map(str, args)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            watch.wait(1)                    # inside the failing read
            proc.send_signal(sig)
            if hold:
                slow.release()
            out, err = proc.communicate(timeout=WAIT)
        finally:
            watch.close()
            proc.kill()
            proc.wait()
    return proc, out, err


def scan_stopped_in_held_read(f, *args: object) -> tuple[subprocess.Popen[str], str, str]:
    """`mcsafe scan --json ARGS`, sent SIGINT while held inside a failing read of f."""
    return scan_until_inside(f, signal.SIGINT, *args, hold=True)


@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM", "SIGINT --jobs 2"])
def test_a_signal_stops_cleanly_with_the_partial_report(failing_file, how: str) -> None:
    """The signal is sent once the scan is inside the second file (its first failing
    read, told by the FUSE server), a 64 MiB one with a bad page in every 16
    (4096 failing FUSE reads left): that file is reported interrupted with what was
    found so far, the first as found, then the summary; exit 128 + signal."""
    first = failing_file(8 * PAGE, inject.page_ranges([1]), name="first")
    npages = (64 << 20) // PAGE
    bad = list(range(1, npages, 16))
    slow = failing_file(npages * PAGE, inject.page_ranges(bad), name="slow")
    sig = signal.Signals[how.split()[0]]
    extra = how.split()[1:]
    proc, out, err = scan_until_inside(slow, sig, *extra, first.path, slow.path)
    assert proc.returncode == 128 + sig, err
    lines = [json.loads(x) for x in out.splitlines()]
    assert (lines[0]["path"], lines[0]["status"], bad_of(lines[0])) == \
        (first.path, "bad", [(PAGE, 2 * PAGE)])
    assert lines[-1]["type"] == "summary" and lines[-1]["stopped"] is True
    assert lines[-1]["signal"] == sig.name and lines[-1]["exit"] == 128 + sig
    assert len(lines) == 3
    got = lines[1]
    assert (got["path"], got["status"]) == (slow.path, "interrupted")
    assert PAGE < got["done"] < npages * PAGE
    assert got["message"] == f"stopped by {sig.name} after {got['done']} of {npages * PAGE} bytes"
    assert bad_of(got) == [(p * PAGE, (p + 1) * PAGE) for p in bad if (p + 1) * PAGE <= got["done"]]
    assert "Traceback" not in err


def test_workers_end_with_a_parent_killed_outright(failing_file) -> None:
    """mcsafe scan --jobs 2 killed with SIGKILL while a worker is inside a slow failing
    file (its first failing read, told by the FUSE server) and the other waits for
    work: both workers end (each held the other's pipe to the parent, so the idle one
    never saw it close, and the busy one scanned on)."""
    npages = (64 << 20) // PAGE
    slow = failing_file(npages * PAGE, inject.page_ranges(range(1, npages, 16)), name="slow")
    hook, watch = inside(slow)
    with hook:
        proc = subprocess.Popen([sys.executable, "-m", "mcsafe", "scan", "--jobs", "2",
                                 slow.path], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            watch.wait(1)
            workers = children_of(proc.pid)
            assert len(workers) == 2, workers
            proc.kill()
            proc.wait()
            for pid in workers:
                wait_gone(pid, WAIT)
        finally:
            watch.close()
            proc.kill()
            proc.wait()


def children_of(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
            except (OSError, ValueError):
                continue
    return out



# -- options ------------------------------------------------------------------------------------

def test_one_file_system_and_exclude_leave_out_the_mount_and_the_pattern(failing_file,
                                                                          tmp_path) -> None:
    tree = tmp_path / "x"
    tree.mkdir()
    (tree / "keep.log").write_bytes(b"k")
    (tree / "skip.tmp").write_bytes(b"s")
    f = failing_file(8 * PAGE, inject.page_ranges([0]), dir=tree)
    code, files, summary, _ = scan_json("--one-file-system", tree)
    assert code == 0 and f.path not in files and summary["other_file_systems"] == 1
    code, files, summary, _ = scan_json("--exclude", "*.tmp", "--exclude", "*/mnt", tree)
    assert code == 0 and str(tree / "skip.tmp") not in files and f.path not in files
    assert summary["excluded"] == 2
    code, files, _, _ = scan_json(tree)
    assert code == 1 and files[f.path]["status"] == "bad"


def test_a_file_with_several_links_is_scanned_once(tmp_path) -> None:
    tree = tmp_path / "links"
    tree.mkdir()
    (tree / "a").write_bytes(b"a" * 100)
    os.link(tree / "a", tree / "b")
    for jobs in ("1", "2"):
        code, files, summary, _ = scan_json("--jobs", jobs, tree)
        assert code == 0 and list(files) == [str(tree / "a")] and summary["files"] == 1


def test_names_that_are_not_utf8_round_trip_through_json(tmp_path) -> None:
    name = b"caf\xe9-\xff"
    tree = tmp_path / "names"
    tree.mkdir()
    with open(os.path.join(os.fsencode(tree), name), "wb") as f:
        f.write(b"x")
    code, files, _, _ = scan_json(tree)
    assert code == 0
    (path,) = files
    assert os.fsencode(path) == os.path.join(os.fsencode(tree), name)


def test_usage_errors_exit_2_without_a_traceback() -> None:
    for args in (["scan"], ["scan", "--jobs", "0", "."], ["scan", "--bogus", "."], ["nope"]):
        p = mcsafe(*args)
        assert p.returncode == 2 and "usage:" in p.stderr and "Traceback" not in p.stderr


def test_help_covers_every_positional_and_the_version() -> None:
    p = mcsafe("scan", "--help")
    assert p.returncode == 0 and "PATH" in p.stdout and "exit status" in p.stdout
    assert "a file, a block device, or a directory to walk" in p.stdout
    p = mcsafe("--version")
    assert p.returncode == 0 and p.stdout.startswith("mcsafe ")
    top = mcsafe("--help")
    assert all(c in top.stdout for c in ("scan", "rescue", "demo"))


def test_the_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "mcsafe"
    assert script.exists()
    p = subprocess.run([str(script), "--version"], capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.startswith("mcsafe ")


def test_import_mcsafe_does_not_load_the_command_or_tqdm() -> None:
    code = ("import sys, mcsafe; print(sorted(m for m in sys.modules "
            "if m.startswith(('mcsafe.cli', 'tqdm', 'multiprocessing'))))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.stdout.strip() == "[]", p.stdout
    code = ("import sys; from mcsafe.cli import main; rc = main(['scan', '--json', '/dev/null']);"
            "print(sorted(m for m in sys.modules if m.startswith(('tqdm', 'multiprocessing'))),"
            " file=sys.stderr)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.stderr.strip().splitlines()[-1] == "[]", p.stderr     # no bar: no tqdm


def test_the_page_cache_is_left_as_found(tmp_path) -> None:
    from test_mapped_scrub import _resident_of_path, evict, warm, written
    size = 16 << 20
    path = tmp_path / "cache"
    written(path, size)
    evict(path)
    warm(path, 0, 4 << 20)
    before = _resident_of_path(path, size)
    assert mcsafe("scan", path).returncode == 0
    assert _resident_of_path(path, size) == before
    small = tmp_path / "small"
    small.write_bytes(os.urandom(64 * PAGE))
    os.sync()
    evict(small)
    assert mcsafe("scan", small).returncode == 0
    assert _resident_of_path(small, 64 * PAGE) == bytes(64)
    assert mcsafe("scan", "--keep-cache", path).returncode == 0
    assert _resident_of_path(path, size) == b"\1" * (size // PAGE)


def test_the_demo_ends_with_a_scan_of_a_tree_holding_a_failing_file() -> None:
    why = inject.fuse_unavailable()
    p = subprocess.run([sys.executable, "-m", "mcsafe", "demo"], capture_output=True,
                       text=True, timeout=WAIT)
    assert p.returncode == 0, p.stderr
    last = p.stdout.split("\n== ")[-1].splitlines()
    if why is not None:
        assert last[0] == f"mcsafe rescue and mcsafe scan of a failing disk: skipped ({why})"
        return
    assert last[0] == "mcsafe scan: a tree holding that image, logs and a FIFO"
    assert last[1] == "  $ mcsafe scan tree"
    assert any(line.startswith("    BAD tree/") and "[0x5000, 0x7000) io, [0x28000, 0x29000) io"
               in line for line in last)
    assert "    SKIPPED tree/logs/pipe: a FIFO" in last
    assert last[-1] == "    (exit status 1)"


def test_the_small_file_reader_reads_whole_or_says_where_it_faulted(failing_file) -> None:
    """_read_mapped, scan's one-call reader of small files: the file's size, or the
    CopyResult of the first fault at the first bad page (a file offset); the
    residency vector is filled before anything is read."""
    from mcsafe._mcsafe import _read_mapped
    f = failing_file(40 * PAGE, inject.page_ranges([9, 30]))
    fd = os.open(f.path, os.O_RDONLY)
    try:
        sink, vec = bytearray(16 << 10), bytearray(b"\xff" * 64)
        res = _read_mapped(fd, 40 * PAGE, sink, vec)
        assert res.copied == 9 * PAGE and res.fault.offset == 9 * PAGE
        assert (res.fault.side, res.fault.cause) == ("src", "io")
        assert set(vec[:40]) <= {0, 1} and vec[40:] == b"\xff" * 24
        assert _read_mapped(fd, 9 * PAGE, sink) == 9 * PAGE
        assert bytes(sink[:PAGE]) == f.contents()[8 * PAGE:9 * PAGE]    # the last piece
        assert _read_mapped(fd, 0, sink) == 0
        with pytest.raises(ValueError):
            _read_mapped(fd, 40 * PAGE, sink, bytearray(39))
    finally:
        os.close(fd)


# -- the batch reader of small files (C, the GIL released) and its fallback ------------

def batch_and_one_by_one(folder: str, names: list[str]) -> tuple[list, list]:
    """The reports (as fields) of a folder's files scanned by Scanner.scan_files (the
    batch reader, falling back to scan()) and by scan() alone, today's path; and
    which of them the batch reader read itself."""
    dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        batch: list = []
        read_in_c: list[str] = []

        def clean(prefix: str, names: list[str], sizes: list[int]) -> None:
            for name, size in zip(names, sizes, strict=True):
                read_in_c.append(prefix + name)
                batch.append(FileReport(prefix + name, "clean", "file", size,
                                        done=size).fields())
        Scanner(lambda n: None, lambda: False).scan_files(
            Files(folder + "/", names, dir_fd, None), lambda r: batch.append(r.fields()), clean)
        scanner = Scanner(lambda n: None, lambda: False)
        alone = [scanner.scan(Target(f"{folder}/{n}", n, dir_fd, False, None)) for n in names]
        return batch, [r.fields() for r in alone if r is not None], read_in_c
    finally:
        os.close(dir_fd)


_pages = st.lists(st.tuples(st.integers(0, (SMALL >> 12) + 2), st.integers(1, 3)), max_size=6)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(size=st.one_of(st.integers(0, 3 * PAGE), st.integers(SMALL - PAGE, SMALL + 3 * PAGE)),
       pages=_pages, offset=st.integers(0, PAGE - 1))
def test_the_batch_reader_reports_what_the_per_file_path_does(failing_file, size, pages,
                                                              offset) -> None:
    """A FUSE file with random bad ranges (or none), of sizes about the batch
    reader's limit: scan_files reports exactly what scan() does, its bad ranges
    those read(2) fails on; the batch reader reads it itself only when it is small
    and clean, else scan() does."""
    if not hasattr(failing_file, "one"):        # one FUSE file for every example
        failing_file.one = failing_file(PAGE)
    f = failing_file.one
    folder = os.path.dirname(f.path)
    f.resize(size)
    bad = [(p * PAGE + offset, p * PAGE + offset + n) for p, n in pages if p * PAGE < size]
    f.set_bad(bad)
    batch, alone, read_in_c = batch_and_one_by_one(folder, [os.path.basename(f.path)])
    f.set_bad(bad)                  # (dropping the cache again: both start alike)
    assert batch == alone
    (report,) = alone
    assert [(s, e) for s, e, _ in report[5]] == read2_bad_pages(f.path, size)
    assert read_in_c == ([f.path] if size <= SMALL and not report[5] else [])


def test_the_batch_reader_takes_only_plain_small_files(tmp_path) -> None:
    """What _scan_small reads itself (a regular file of one link, up to its limit),
    and what it leaves to scan(): a second link, a file over the limit, a symbolic
    link, a FIFO, a name gone; a folder of each is reported as scan() reports it."""
    from mcsafe._mcsafe import _scan_small
    names = {"a": 5000, "b": 0, "big": SMALL + 1, "linked": 10, "top": SMALL}
    for name, size in names.items():
        (tmp_path / name).write_bytes(os.urandom(size))
    os.link(tmp_path / "linked", tmp_path / "linked2")
    os.symlink("a", tmp_path / "sym")
    os.mkfifo(tmp_path / "fifo")
    order = ["a", "b", "big", "fifo", "gone", "linked", "linked2", "sym", "top"]
    dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        got = _scan_small(dir_fd, order, False, bytearray(SMALL // 64), SMALL, -1,
                          bytearray(SMALL // PAGE), os.geteuid(), False, 1 << 30)
        assert got == [5000, 0, None, None, None, None, None, None, SMALL]
        # on another device than the walk's root: not its to read
        assert _scan_small(dir_fd, ["a"], False, bytearray(64), SMALL,
                           os.fstat(dir_fd).st_dev + 1, None, 0, False, 1 << 30) == [None]
        # it stops after the file that reaches its budget of bytes
        assert _scan_small(dir_fd, order, False, bytearray(64), SMALL, -1, None, 0, False,
                           5001) == [5000, 0, None, None, None, None, None, None, SMALL]
        assert _scan_small(dir_fd, order, False, bytearray(64), SMALL, -1, None, 0, False,
                           5000) == [5000]
    finally:
        os.close(dir_fd)
    batch, alone, read_in_c = batch_and_one_by_one(str(tmp_path), order)
    assert batch == alone
    assert read_in_c == [str(tmp_path / n) for n in ("a", "b", "top")]


def test_a_stop_is_honoured_within_a_budget_of_reading(tmp_path) -> None:
    """A stop asked during a folder of small files: the batch reader ends its call
    once it has read its budget (as a large file's scrub ends its chunk), and no
    file after that is read or reported."""
    from mcsafe.cli.scanfile import BUDGET
    names = [f"f{i:02d}" for i in range(40)]
    for name in names:
        (tmp_path / name).write_bytes(os.urandom(SMALL))
    passed: list[int] = []
    clean: list[str] = []
    dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        Scanner(passed.append, lambda: bool(passed)).scan_files(
            Files(f"{tmp_path}/", names, dir_fd, None),
            lambda r: pytest.fail(f"a report: {r}"),
            lambda prefix, run, sizes: clean.extend(prefix + n for n in run))
    finally:
        os.close(dir_fd)
    assert clean == [f"{tmp_path}/{n}" for n in names[:BUDGET // SMALL]]
    assert passed == [SMALL * (BUDGET // SMALL)]


def test_the_batch_reader_leaves_the_page_cache_as_found(tmp_path) -> None:
    """Files of a walked folder, read by the batch reader: one all cached stays, one
    evicted is evicted again, one half cached has the same half cached after."""
    from test_mapped_scrub import _resident_of_path, evict, warm, written
    size = 64 * PAGE
    for name in ("cached", "cold", "half"):
        written(tmp_path / name, size)
    evict(tmp_path / "cold")
    evict(tmp_path / "half")
    warm(tmp_path / "half", 16 * PAGE, 16 * PAGE)
    warm(tmp_path / "cached", 0, size)
    before = {n: _resident_of_path(tmp_path / n, size) for n in ("cached", "cold", "half")}
    assert before["cached"] == b"\1" * 64 and before["cold"] == bytes(64)
    assert before["half"] == bytes(16) + b"\1" * 16 + bytes(32)
    _, _, read_in_c = batch_and_one_by_one(str(tmp_path), ["cached", "cold", "half"])
    assert len(read_in_c) == 3
    for name in ("cold", "half"):        # (batch_and_one_by_one scans each twice)
        evict(tmp_path / name)
    warm(tmp_path / "half", 16 * PAGE, 16 * PAGE)
    p = mcsafe("scan", tmp_path)
    assert p.returncode == 0 and "scanned 3 files" in p.stdout
    assert {n: _resident_of_path(tmp_path / n, size) for n in before} == before


def test_a_terminal_gets_a_progress_bar_and_a_pipe_none(tmp_path) -> None:
    """stderr a terminal (a pty): a tqdm bar with bytes and files; a pipe: nothing
    on stderr unless --progress."""
    tree = tmp_path / "bar"
    tree.mkdir()
    for i in range(5):
        (tree / f"f{i}").write_bytes(os.urandom(100_000))
    proc, seen = run_on_terminal([sys.executable, "-m", "mcsafe", "scan", str(tree)],
                                 "stderr", 100, stdout=subprocess.PIPE, text=True,
                                 timeout=WAIT)
    assert proc.returncode == 0
    text = seen.decode(errors="replace")
    import re
    # (the totals, counted in a thread, may come after so small a scan has ended)
    assert re.search(r"scanned: .*488k.*\b5(/5)? files\]", text.replace("K", "k")), text
    assert proc.stdout.startswith("scanned 5 files")
    quiet = mcsafe("scan", tree)
    assert quiet.stderr == ""
    loud = mcsafe("scan", "--progress", tree)       # lines every 10 s: none in this one
    assert loud.returncode == 0 and "Traceback" not in loud.stderr


def test_jobs_batches_are_bounded_in_files_and_bytes(tmp_path) -> None:
    """What a worker gets at once: 32 files, or 64 MiB of them (a bigger file alone),
    so that a tree of big files spreads over the workers."""
    from mcsafe.cli.jobs import _next_batch
    tree = tmp_path / "batches"
    tree.mkdir()
    for i in range(40):
        (tree / f"a{i:02d}").write_bytes(b"x")
    for i in range(3):
        sparse(tree / f"b{i}", 70 << 20, {})
    sparse(tree / "c", 10 << 20, {})
    it = iter(Walk([str(tree)]))
    sizes = []
    while (batch := _next_batch(it, lambda r: None)) is not None:
        sizes.append([os.path.basename(p) for p, _, _ in batch])
    assert [len(b) for b in sizes] == [32, 9, 1, 1, 1]
    assert sizes[1][-1] == "b0" and sizes[2:] == [["b1"], ["b2"], ["c"]]


# -- a small file whose read faults, and a stop, in the batch reader (the hostile review) ---

def test_a_faulting_small_file_leaves_the_page_cache_as_found(failing_file) -> None:
    """A 256 KiB FUSE file with a bad page in its middle, evicted, then scanned as
    a folder's file (the batch reader, which faults) and by --jobs 2 (scan() per
    file, the path before the batch reader): the same bad page, and not one page
    left in the page cache either way (the pages read before the fault included)."""
    from test_mapped_scrub import _resident_of_path, evict
    size = 256 << 10
    f = failing_file(size, [(size // 2, size // 2 + PAGE)])
    for extra in ([], ["--jobs", "2"]):
        evict(f.path)
        assert _resident_of_path(f.path, size) == bytes(size // PAGE)
        code, files, _, err = scan_json(*extra, os.path.dirname(f.path))
        assert code == 1, err
        assert bad_of(files[f.path]) == [(size // 2, size // 2 + PAGE)]
        assert _resident_of_path(f.path, size) == bytes(size // PAGE), extra


def test_a_faulting_small_file_is_read_no_more_than_per_file(failing_file) -> None:
    """The FUSE server is asked for a small file's bad page as often by the batch
    reader (which hands its fault to the scrub) as by --jobs 2 (scan() per file:
    one mapped copy, then the scrub), each from an evicted file: on a dying disk
    each failed read costs seconds. Then the same, with the page cache kept."""
    size = 256 << 10
    f = failing_file(size, [(size // 2, size // 2 + PAGE)])
    for keep in ([], ["--keep-cache"]):
        asked = []
        for extra in ([], ["--jobs", "2"]):
            f.set_bad(f.bad)        # (dropping the file's page cache: both start alike)
            before = f.stats()
            code, files, _, err = scan_json(*keep, *extra, os.path.dirname(f.path))
            assert code == 1 and bad_of(files[f.path]) == [(size // 2, size // 2 + PAGE)], err
            after = f.stats()
            asked.append((after["reads"] - before["reads"],
                          after["failed_reads"] - before["failed_reads"]))
        assert asked[0] == asked[1] and asked[0][1] > 0, (keep, asked)


def _mapped_files() -> set[str]:
    """The files this process has mapped now (/proc/self/maps)."""
    with open("/proc/self/maps") as f:
        return {line.split(None, 5)[5].strip() for line in f if len(line.split(None, 5)) == 6}


@pytest.mark.parametrize("restore", [False, True])
def test_the_batch_reader_leaves_no_mapping_behind(failing_file, tmp_path, restore) -> None:
    """The clean files' mappings are unmapped together when a call ends (runs of
    adjacent ones at once): after the call none of its files is mapped, whatever
    the mix of sizes (one page, several, up to the limit), cached or not, with a
    faulting file among them; the bytes read are the files' sizes."""
    from mcsafe._mcsafe import _scan_small
    sizes = [1, PAGE, PAGE + 1, 5 * PAGE, SMALL, 3, SMALL - 1, 0, 2 * PAGE] * 12
    names = [f"f{i:03d}" for i in range(len(sizes))]
    for name, size in zip(names, sizes):
        (tmp_path / name).write_bytes(os.urandom(size))
    for name in names[::5]:                 # some not cached: read, then evicted again
        fd = os.open(tmp_path / name, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
    bad = failing_file(16 * PAGE, inject.page_ranges([9]))
    os.symlink(bad.path, tmp_path / "zz-bad")   # followed: the faulting file among them
    before = _mapped_files()
    dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        got = _scan_small(dir_fd, names[:50] + ["zz-bad"] + names[50:], True,
                          bytearray(SMALL // 64), SMALL, -1,
                          bytearray(SMALL // PAGE) if restore else None, os.geteuid(),
                          False, 1 << 30)
    finally:
        os.close(dir_fd)
    assert got[:50] + got[51:] == sizes
    assert got[50].copied == 9 * PAGE
    mapped = _mapped_files() - before
    assert not {m for m in mapped if m.startswith(str(tmp_path)) or m == bad.path}, mapped


def test_the_batch_reader_hands_its_fault_over_and_counts_it_in_its_budget(failing_file) -> None:
    """_scan_small on a faulting file: the CopyResult of its fault, as _read_mapped
    answers (the bytes before the bad page copied; the fault's file offset), and
    its bytes count toward the budget: a budget of its size stops the call there."""
    from mcsafe._mcsafe import _scan_small
    size = 64 * PAGE
    f = failing_file(size, inject.page_ranges([40]))
    dir_fd = os.open(os.path.dirname(f.path), os.O_RDONLY | os.O_DIRECTORY)
    try:
        names = [os.path.basename(f.path), "gone"]
        got = _scan_small(dir_fd, names, False, bytearray(SMALL // 64), SMALL, -1,
                          bytearray(SMALL // PAGE), os.geteuid(), False, 1 << 30)
        assert len(got) == 2 and got[1] is None
        assert got[0].copied == 40 * PAGE
        assert (got[0].fault.offset, got[0].fault.side, got[0].fault.cause) == \
            (40 * PAGE, "src", "io")
        got = _scan_small(dir_fd, names, False, bytearray(64), SMALL, -1, None, 0, False, size)
        assert len(got) == 1 and got[0].copied == 40 * PAGE
    finally:
        os.close(dir_fd)


def test_a_stop_in_a_folder_reports_only_the_file_being_read(tmp_path) -> None:
    """A folder of files too large for the batch reader: a stop asked while the
    first is read (once it has passed its first chunk, of two) ends the folder
    there. That file is reported interrupted with how far it got; none of the
    files passed over is read or reported (not as interrupted after 0 bytes)."""
    from mcsafe.mapped.scrub import SCRUB_CHUNK
    names = [f"f{i}" for i in range(6)]
    for name in names:
        (tmp_path / name).write_bytes(os.urandom(SMALL + PAGE))
    (tmp_path / "f0").write_bytes(os.urandom(SCRUB_CHUNK + PAGE))
    passed: list[int] = []
    reports: list[FileReport] = []
    dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        Scanner(passed.append, lambda: bool(passed)).scan_files(
            Files(f"{tmp_path}/", names, dir_fd, None), reports.append,
            lambda path, size: pytest.fail(f"clean: {path}"))
    finally:
        os.close(dir_fd)
    assert [(r.path, r.status) for r in reports] == [(f"{tmp_path}/f0", "interrupted")]
    assert reports[0].done == sum(passed) == SCRUB_CHUNK
    assert reports[0].message == \
        f"stopped by a stop after {SCRUB_CHUNK} of {SCRUB_CHUNK + PAGE} bytes"


@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM"])
def test_a_signal_in_a_folder_reports_one_file_interrupted(failing_file, tmp_path,
                                                           how: str) -> None:
    """mcsafe scan of a folder whose first file (a 64 MiB FUSE file with a bad page
    in every 16, bind-mounted there) is being read when the signal comes (its first
    failing read, told by the FUSE server), the rest files too large for the batch
    reader: that file is the one reported interrupted, the summary counts one, and
    the files passed over are neither read nor reported; exit 128 + signal."""
    npages = (64 << 20) // PAGE
    slow = failing_file(npages * PAGE, inject.page_ranges(range(1, npages, 16)), name="slow")
    tree = tmp_path / "tree"
    tree.mkdir()
    for i in range(5):
        (tree / f"b{i}").write_bytes(os.urandom(SMALL + PAGE))
    target = tree / "a_slow"
    target.touch()
    done = subprocess.run(["mount", "--bind", slow.path, str(target)], capture_output=True,
                          text=True)
    if done.returncode:
        pytest.skip(f"cannot bind-mount a file here: {done.stderr.strip()!r}")
    sig = signal.Signals[how]
    try:
        proc, out, err = scan_until_inside(slow, sig, tree)
    finally:
        subprocess.run(["umount", str(target)], check=True)
    assert proc.returncode == 128 + sig, err
    lines = [json.loads(x) for x in out.splitlines()]
    assert [(o["path"], o["status"]) for o in lines[:-1]] == [(str(target), "interrupted")]
    got = lines[0]
    assert PAGE < got["done"] < npages * PAGE
    assert got["message"] == f"stopped by {sig.name} after {got['done']} of {npages * PAGE} bytes"
    summary = lines[-1]
    assert (summary["type"], summary["stopped"], summary["interrupted"]) == ("summary", True, 1)
    assert "Traceback" not in err


@pytest.mark.parametrize("jobs", [[], ["--jobs", "2"]])
def test_a_stop_inside_a_small_file_s_failing_read_reports_it_interrupted(
        failing_file, tmp_path, jobs: list[str]) -> None:
    """SIGINT while the batch reader is held inside a small FUSE file's failing read
    (bind-mounted between clean small files of a folder, a subfolder after them):
    that file was being read, so it is reported interrupted with the bytes read
    before its bad page; the files before it clean, nothing after it; exit 130. In
    one process as with --jobs (main, in one process: no report of it at all)."""
    bad = failing_file(8 * PAGE, inject.page_ranges([5]), name="bad")
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    for name in ("a0", "a1", "z0", "sub/s0"):
        (tree / name).write_bytes(os.urandom(3 * PAGE))
    target = tree / "b_bad"
    target.touch()
    done = subprocess.run(["mount", "--bind", bad.path, str(target)], capture_output=True,
                          text=True)
    if done.returncode:
        pytest.skip(f"cannot bind-mount a file here: {done.stderr.strip()!r}")
    try:
        proc, out, err = scan_stopped_in_held_read(bad, *jobs, tree)
    finally:
        subprocess.run(["umount", str(target)], check=True)
    assert proc.returncode == 128 + signal.SIGINT, err
    lines = [json.loads(x) for x in out.splitlines()]
    reports = sorted((o["path"], o["status"]) for o in lines[:-1])
    assert reports == [(str(tree / "a0"), "clean"), (str(tree / "a1"), "clean"),
                       (str(target), "interrupted")], lines
    # The bytes before the bad page were read; a worker's scrub may have judged that
    # page (bad, passed) before it saw the stop, the batch reader does not judge it
    got = next(o for o in lines if o.get("path") == str(target))
    assert (got["done"], bad_of(got)) in ((5 * PAGE, []), (6 * PAGE, [(5 * PAGE, 6 * PAGE)])), got
    summary = lines[-1]
    assert (summary["stopped"], summary["interrupted"], summary["clean"]) == (True, 1, 2), summary
    assert "Traceback" not in err, err


def test_a_stop_during_a_file_s_last_chunk_reports_what_was_read(failing_file) -> None:
    """SIGINT while the scan is held inside the failing read of a file's last page,
    in its last scrub chunk (the FUSE server keeps the read until the signal was
    sent): every byte was passed when the chunk ends, so the file is reported as
    read (bad, its bad page, done == size), not interrupted; the scan still stops
    with exit 130. (main: "interrupted", stopped after the whole file.)"""
    pages = SMALL // PAGE + 4                # past the batch reader, one scrub chunk
    size = pages * PAGE
    f = failing_file(size, inject.page_ranges([pages - 1]), name="last")
    proc, out, err = scan_stopped_in_held_read(f, f.path)
    lines = [json.loads(x) for x in out.splitlines()]
    assert proc.returncode == 128 + signal.SIGINT, err
    got = lines[0]
    assert (got["path"], got["status"], got["done"], bad_of(got)) == \
        (f.path, "bad", size, [(size - PAGE, size)]), got
    summary = lines[-1]
    assert (summary["stopped"], summary["interrupted"], summary["bad"], len(lines)) == \
        (True, 0, 1, 2), summary
    assert err.count("\n") <= 1 and "Traceback" not in err, err


@pytest.mark.parametrize("layout, read", [
    ("1 MiB of data, then a 40 MiB hole", True),
    ("1 MiB of data, a 40 MiB hole, 1 MiB of data", False)])
def test_a_stop_with_only_a_hole_left_reports_the_file_read(tmp_path, layout, read) -> None:
    """A stop asked once a sparse file's data was passed: where all that is left is
    a hole (SEEK_DATA finds no data after it), every byte the scan reads was read,
    so the file is reported read (clean, done == size), not interrupted; with data
    after the hole, it is interrupted where it stopped. (main: "interrupted" at the
    end of the data, though nothing was left to read.)"""
    path = tmp_path / "sparse"
    data = os.urandom(1 << 20)
    with open(path, "wb") as f:
        f.write(data)
        f.seek(41 << 20)
        if not read:
            f.write(data)
        f.truncate(f.tell() if not read else 41 << 20)
    size = path.stat().st_size
    passed = [0]
    scanner = Scanner(lambda n: passed.__setitem__(0, passed[0] + n),
                      lambda: passed[0] >= len(data))
    got = scanner.scan(Target(str(path), str(path), None, True))
    if read:
        assert (got.status, got.done, got.size, passed[0]) == ("clean", size, size, size), got
    else:
        assert got.status == "interrupted" and len(data) <= got.done < size, got


@pytest.mark.parametrize("small", [False, True])
def test_a_fuse_file_cut_behind_the_kernel_mid_scan_is_shrunk_to_the_cut(
        failing_file, small: bool) -> None:
    """Another client cuts the file in the server while the scan reads it (after the
    first 16 MiB chunk; or, small, a file the scan reads in one copy, cut as the
    copy stores its first byte: its sink stalls there, userfaultfd), in a page the kernel
    has not cached, the pages after it cached: its READ comes back short, the
    kernel zero-fills it and sets the size, nothing faults. Reported shrunk, not
    bad, with nothing past the cut counted as done (small: 262,144 done of a file
    of 213,052 on main)."""
    import uffd_stall
    if uffd_stall.unavailable():
        pytest.skip(uffd_stall.unavailable())
    pages = 64 if small else 4096 + 16
    size = pages * PAGE
    q = pages - 12
    cut = q * PAGE + 60
    f = failing_file(size)
    with open(f.path, "rb") as whole:                   # every page cached
        assert len(whole.read()) == size
    fd = os.open(f.path, os.O_RDONLY)
    os.posix_fadvise(fd, q * PAGE, PAGE, os.POSIX_FADV_DONTNEED)
    os.close(fd)
    cuts = []

    def cut_behind_the_kernel(*_: object) -> None:
        if not cuts:
            os.truncate(f.backing, cut)
            cuts.append(True)

    target = Target(f.path, f.path, None, True, None)
    if small:
        scanner = Scanner(lambda n: None, lambda: False, restore_cache=False)
        sink = len(scanner.sink) // PAGE
        with uffd_stall.stalled_buffer(sink, bytes(sink * PAGE),
                                       {0: cut_behind_the_kernel}) as stalled:
            scanner.sink = stalled
            report = scanner.scan(target)
    else:
        scanner = Scanner(cut_behind_the_kernel, lambda: False, restore_cache=False)
        report = scanner.scan(target)
    assert cuts
    assert (report.status, report.change, report.bad, report.size_now) == \
        ("changed", "shrank", [], cut)
    assert report.done <= cut, (report.done, cut)
