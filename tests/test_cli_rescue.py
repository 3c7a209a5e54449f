"""``mcsafe rescue`` against GNU ddrescue on the same failing files (FUSE): the same
mapfile, the same output bytes; ddrescuelog reads ours; a rerun retries only what
is not rescued; stops, crashes, sparse files, in place, and errors (issue 21)."""

from __future__ import annotations

import datetime as dt
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcsafe import inject
from mcsafe.cli.mapfile import Mapfile, MapfileError

from test_cli_scan import WAIT, Inotify, inside
from test_mapped_scrub import sparse

PAGE = inject.PAGE


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed (Debian package gddrescue; make test installs it)")
    return path


def rescue(*args: object, **kwargs) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "mcsafe", "rescue", *map(str, args)],
                       capture_output=True, text=True, timeout=WAIT, **kwargs)
    assert "Traceback" not in p.stderr, p.stderr
    return p


def ddrescue(src: str, out: Path, mapfile: Path, *extra: str) -> None:
    p = subprocess.run([need("ddrescue"), "-q", "-b", str(PAGE), *extra, src, str(out),
                        str(mapfile)], capture_output=True, text=True, timeout=WAIT)
    assert p.returncode == 0, p.stderr


def ddrescuelog(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([need("ddrescuelog"), *map(str, args)], capture_output=True,
                          text=True, timeout=WAIT)


def blocks(path: Path) -> list[tuple[int, int, str]]:
    return list(Mapfile.load(str(path)).blocks())


def listed(mapfile: Path, types: str) -> list[int]:
    """Page numbers of the blocks of the given types, as ddrescuelog lists them."""
    p = ddrescuelog("-b", PAGE, f"--list-blocks={types}", mapfile)
    assert p.returncode == 0, p.stderr
    return [int(x) for x in p.stdout.split()]


# -- the reference: GNU ddrescue on the same failing file -----------------------------------

def test_the_same_mapfile_and_bytes_as_ddrescue(failing_file, tmp_path) -> None:
    """Bad pages drawn by hypothesis on one FUSE file: mcsafe rescue and ddrescue
    (sector = page) write the same blocks, the same bytes, the same DST size; and
    ddrescuelog lists the same bad and finished pages from both mapfiles."""
    npages = 48
    f = failing_file(npages * PAGE)

    @settings(max_examples=10, deadline=None)
    @given(bad=st.sets(st.integers(0, npages - 1), max_size=8))
    def check(bad: set[int]) -> None:
        f.set_bad(inject.page_ranges(sorted(bad)))
        work = Path(tmp_path / f"run-{len(os.listdir(tmp_path))}")
        work.mkdir()
        ours, theirs = work / "ours", work / "theirs"
        p = rescue(f.path, ours, "--map", work / "ours.map")
        assert p.returncode == (1 if bad else 0), p.stderr
        ddrescue(f.path, theirs, work / "theirs.map")
        assert blocks(work / "ours.map") == blocks(work / "theirs.map")
        assert ours.read_bytes() == theirs.read_bytes()
        for types in ("-", "+", "?*/"):
            assert listed(work / "ours.map", types) == listed(work / "theirs.map", types)
        assert listed(work / "ours.map", "-") == sorted(bad)
        truth = f.contents()
        data = ours.read_bytes()
        for page in range(len(data) // PAGE):
            want = bytes(PAGE) if page in bad else truth[page * PAGE:(page + 1) * PAGE]
            assert data[page * PAGE:(page + 1) * PAGE] == want, page
    check()


def test_ddrescuelog_reads_our_mapfile(failing_file, tmp_path) -> None:
    f = failing_file(32 * PAGE, inject.page_ranges([3, 4, 31]))
    out, mapfile = tmp_path / "out", tmp_path / "out.map"
    assert rescue(f.path, out).returncode == 1
    status = ddrescuelog("-t", mapfile)
    assert status.returncode == 0, status.stderr
    text = " ".join(status.stdout.split())
    assert f"rescued: {29 * PAGE} B, in 2 area(s)" in text
    assert f"bad-sector: {3 * PAGE} B, in 2 area(s)" in text
    assert "current status: finished" in text
    assert ddrescuelog("-D", mapfile).returncode == 1        # not everything rescued
    assert out.stat().st_size == 31 * PAGE                   # nothing past the last byte read
    clean = failing_file(8 * PAGE)
    assert rescue(clean.path, tmp_path / "clean").returncode == 0
    assert ddrescuelog("-D", tmp_path / "clean.map").returncode == 0


def test_rescue_finishes_what_ddrescue_left(failing_file, tmp_path) -> None:
    """ddrescue --no-trim --no-scrape leaves non-trimmed blocks; mcsafe rescue,
    given its mapfile, reads only those and ends with the same map as a whole
    ddrescue run."""
    npages = 256
    bad = [10, 11, 100, 200]
    f = failing_file(npages * PAGE, inject.page_ranges(bad))
    out, mapfile = tmp_path / "out", tmp_path / "out.map"
    ddrescue(f.path, out, mapfile, "--no-scrape", "--no-trim", "--cluster-size=16")
    assert Mapfile.load(str(mapfile)).total("*/?") > len(bad) * PAGE     # left for later
    p = rescue(f.path, out, "--map", mapfile)
    assert p.returncode == 1, p.stderr
    assert listed(mapfile, "-") == bad and listed(mapfile, "?*/") == []
    ddrescue(f.path, tmp_path / "whole", tmp_path / "whole.map")
    assert blocks(mapfile) == blocks(tmp_path / "whole.map")
    assert out.read_bytes() == (tmp_path / "whole").read_bytes()


# -- running again ----------------------------------------------------------------------------

def test_a_rerun_reads_only_what_is_not_rescued(failing_file, tmp_path) -> None:
    """After a first run, the failing file heals at two of its three bad pages and its
    good bytes change behind the mount (as another client would write them): the
    rerun fills the two healed pages with their bytes now, leaves the third bad,
    and never reads a page rescued before (DST keeps the first run's bytes)."""
    npages = 64
    f = failing_file(npages * PAGE, inject.page_ranges([5, 20, 50]))
    first = f.contents()
    out = tmp_path / "out"
    assert rescue(f.path, out).returncode == 1
    assert listed(tmp_path / "out.map", "-") == [5, 20, 50]
    f.set_bad(inject.page_ranges([20]))
    f.write(b"N" * (npages * PAGE), 0)            # stops short at page 20: every good page
    f.write(b"N" * (43 * PAGE), 21 * PAGE)
    assert f.contents() == b"N" * (20 * PAGE) + first[20 * PAGE:21 * PAGE] + \
        b"N" * (43 * PAGE)
    p = rescue(f.path, out)
    assert p.returncode == 1, p.stderr
    assert listed(tmp_path / "out.map", "-") == [20]
    data = out.read_bytes()
    for page in range(npages):
        chunk = data[page * PAGE:(page + 1) * PAGE]
        if page in (5, 50):
            assert chunk == b"N" * PAGE, page           # healed: read now
        elif page == 20:
            assert chunk == bytes(PAGE)
        else:
            assert chunk == first[page * PAGE:(page + 1) * PAGE], page   # never read again
    mapfile = Mapfile.load(str(tmp_path / "out.map"))
    assert (mapfile.current_pass, mapfile.current_status) == (2, "+")


def test_a_retry_run_stopped_says_it_was_retrying(failing_file, tmp_path) -> None:
    """A run that only retries bad blocks, stopped inside SRC (its first failing read,
    told by the FUSE server): the mapfile's current status is '-' (retrying), not the
    '+' (finished) the run before it left."""
    f = failing_file(64 * PAGE, inject.page_ranges([5, 20]))
    out = tmp_path / "out"
    assert rescue(f.path, out).returncode == 1
    assert Mapfile.load(str(tmp_path / "out.map")).current_status == "+"
    hook, watch = inside(f)
    with hook:
        proc = subprocess.Popen([sys.executable, "-m", "mcsafe", "rescue", f.path, str(out)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            watch.wait(1)
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=WAIT)
        finally:
            watch.close()
            proc.kill()
            proc.wait()
    assert proc.returncode == 130
    m = Mapfile.load(str(tmp_path / "out.map"))
    assert (m.current_status, m.current_pass) == ("-", 2)
    assert m.ranges("-") == inject.page_ranges([5, 20])


def test_a_signal_leaves_dst_and_the_mapfile_consistent_and_a_rerun_finishes(
        failing_file, tmp_path) -> None:
    """SIGINT once the rescue is inside SRC (its first failing read, told by the FUSE
    server): exit 130, DST is in place with what was rescued, the mapfile says so
    (the rest non-tried), no temporary file is left; a rerun finishes and both runs
    together equal one."""
    npages = (64 << 20) // PAGE
    bad = list(range(1, npages, 16))
    f = failing_file(npages * PAGE, inject.page_ranges(bad))
    out = tmp_path / "out"
    out.write_bytes(b"old")
    hook, watch = inside(f)
    with hook:
        proc = subprocess.Popen([sys.executable, "-m", "mcsafe", "rescue", f.path, str(out)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            watch.wait(1)
            assert out.read_bytes() == b"old"          # DST untouched until the end
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=WAIT)
        finally:
            watch.close()
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "stopped by SIGINT" in err and "run again" in err
    assert sorted(os.listdir(tmp_path)) == ["out", "out.map"]
    m = Mapfile.load(str(tmp_path / "out.map"))
    assert m.current_status == "?" and m.total("?") > 0 and m.total("+") >= PAGE
    assert m.ranges("-")[0] == (PAGE, 2 * PAGE)
    truth = f.contents()
    data = out.read_bytes()
    assert len(data) == m.finished_end
    for s, e in m.ranges("+"):
        assert data[s:e] == truth[s:e]
    f.set_bad(inject.page_ranges(bad[:10]))         # and heal most, to finish quickly
    assert rescue(f.path, out).returncode == 1
    assert listed(tmp_path / "out.map", "-") == bad[:10]
    data = out.read_bytes()
    for page in range(npages):
        want = bytes(PAGE) if page in bad[:10] else truth[page * PAGE:(page + 1) * PAGE]
        assert data[page * PAGE:(page + 1) * PAGE] == want, page


def test_a_crash_in_place_leaves_a_mapfile_that_dst_agrees_with(failing_file, tmp_path) -> None:
    """--in-place --save-every 0 (the mapfile saved after every write, DST synced
    first), killed with SIGKILL after its fifth save (inotify): every byte the
    mapfile on disk says was rescued is in DST; a rerun from it finishes."""
    npages = (32 << 20) // PAGE
    bad = list(range(1, npages, 16))
    f = failing_file(npages * PAGE, inject.page_ranges(bad))
    out = tmp_path / "out"
    saves = Inotify(tmp_path, Inotify.IN_MOVED_TO, "out.map")
    proc = subprocess.Popen([sys.executable, "-m", "mcsafe", "rescue", "--in-place",
                             "--save-every", "0", f.path, str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        saves.wait(5)
        proc.kill()
        proc.wait()
    finally:
        saves.close()
    assert proc.returncode == -signal.SIGKILL
    truth = f.contents()
    m = Mapfile.load(str(tmp_path / "out.map"))
    assert m.current_status == "?" and 0 < m.total("+") < npages * PAGE // 2
    data = out.read_bytes()
    for s, e in m.ranges("+"):
        assert data[s:e] == truth[s:e]
    f.set_bad([])
    assert rescue(f.path, out).returncode == 0
    assert out.read_bytes() == truth


# -- what DST gets ----------------------------------------------------------------------------

def test_holes_zero_fill_and_nothing_past_the_last_byte_read(failing_file, tmp_path) -> None:
    f = failing_file(16 * PAGE, inject.page_ranges([2, 3, 14, 15]))
    truth = f.contents()
    assert rescue(f.path, tmp_path / "holes").returncode == 1
    assert rescue("--zero-fill", f.path, tmp_path / "zeros").returncode == 1
    for name in ("holes", "zeros"):
        data = (tmp_path / name).read_bytes()
        assert len(data) == 14 * PAGE                     # the bad tail is not invented
        assert data == truth[:2 * PAGE] + bytes(2 * PAGE) + truth[4 * PAGE:14 * PAGE]
    fd = os.open(tmp_path / "holes", os.O_RDONLY)
    try:
        assert os.lseek(fd, 0, os.SEEK_HOLE) == 2 * PAGE  # a hole where the bad pages were
        assert os.lseek(fd, 2 * PAGE, os.SEEK_DATA) == 4 * PAGE
    finally:
        os.close(fd)
    fd = os.open(tmp_path / "zeros", os.O_RDONLY)
    try:
        assert os.lseek(fd, 0, os.SEEK_HOLE) == 14 * PAGE  # written: no hole
    finally:
        os.close(fd)


def test_a_sparse_terabyte_stays_sparse(tmp_path) -> None:
    src = tmp_path / "sparse"
    sparse(src, 1 << 40, {1 << 30: b"middle" * 1000, (1 << 40) - 10: b"end" * 3 + b"!"})
    out = tmp_path / "out"
    p = rescue(src, out)
    assert p.returncode == 0, p.stderr
    assert out.stat().st_size == 1 << 40 and out.stat().st_blocks * 512 < 1 << 20
    with open(out, "rb") as f:
        f.seek(1 << 30)
        assert f.read(6000) == b"middle" * 1000
        f.seek((1 << 40) - 10)
        assert f.read() == b"end" * 3 + b"!"
    assert blocks(tmp_path / "out.map") == [(0, 1 << 40, "+")]


def test_a_hole_costs_no_memory(tmp_path) -> None:
    """A 1 TiB SRC with data at its start and near its end, a hole between, rescued
    under RLIMIT_DATA of 192 MiB: what SRC's page cache held is followed chunk by
    chunk, not over the hole (main kept a byte per page from the first data to the
    last: 537 MB of memory, found by review, and failed here)."""
    src = tmp_path / "sparse"
    sparse(src, 1 << 40, {0: b"head", 1023 << 30: b"tail"})
    limit = 192 << 20
    p = rescue("--no-sync", src, tmp_path / "out",
               preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_DATA, (limit, limit)))
    assert p.returncode == 0, p.stderr
    with open(tmp_path / "out", "rb") as f:
        assert f.read(4) == b"head"
        f.seek(1023 << 30)
        assert f.read(8) == b"tail" + bytes(4)


def test_in_place_over_an_older_copy(failing_file, tmp_path) -> None:
    """--in-place into a longer file holding other bytes: good pages overwritten, bad
    pages punched (read as zeros, not the old bytes), the file not shortened."""
    f = failing_file(8 * PAGE, inject.page_ranges([3]))
    out = tmp_path / "out"
    out.write_bytes(b"O" * (12 * PAGE))
    assert rescue("--in-place", f.path, out).returncode == 1
    truth = f.contents()
    assert out.read_bytes() == truth[:3 * PAGE] + bytes(PAGE) + truth[4 * PAGE:] + \
        b"O" * (4 * PAGE)


def test_in_place_onto_a_block_device(failing_file, loop_device, tmp_path) -> None:
    backing = tmp_path / "disk"
    backing.write_bytes(b"D" * (16 * PAGE))
    dev = loop_device(backing)
    f = failing_file(8 * PAGE, inject.page_ranges([1]))
    p = rescue(f.path, dev)
    assert p.returncode == 2 and f"{dev} is a block device: say where the mapfile goes" in \
        p.stderr
    p = rescue("--map", tmp_path / "dev.map", f.path, dev)
    assert p.returncode == 2 and "written in place only (--in-place)" in p.stderr
    p = rescue("--in-place", "--zero-fill", "--map", tmp_path / "dev.map", f.path, dev)
    assert p.returncode == 1, p.stderr
    with open(dev, "rb") as d:
        got = d.read()
    truth = f.contents()
    assert got == truth[:PAGE] + bytes(PAGE) + truth[2 * PAGE:] + b"D" * (8 * PAGE)


def test_from_a_failing_block_device(failing_file, loop_device, tmp_path) -> None:
    """SRC a loop device over a failing file (a failing disk): the same map as
    ddrescue's, and the readable bytes."""
    f = failing_file(64 * PAGE, inject.page_ranges([3, 40, 41]))
    dev = loop_device(Path(f.path))
    out = tmp_path / "disk.img"
    p = rescue(dev, out)
    assert p.returncode == 1, p.stderr
    assert listed(tmp_path / "disk.img.map", "-") == [3, 40, 41]
    ddrescue(dev, tmp_path / "theirs", tmp_path / "theirs.map", "--idirect")
    assert blocks(tmp_path / "disk.img.map") == blocks(tmp_path / "theirs.map")
    assert out.read_bytes() == (tmp_path / "theirs").read_bytes()


def test_dst_that_fails_to_write_stops_with_a_consistent_mapfile(failing_file, tmp_path) -> None:
    """DST is itself a failing file (writes fail at its bad page): exit 2 naming DST,
    the mapfile says what was written; once DST heals, a rerun finishes."""
    src = tmp_path / "src"
    src.write_bytes(os.urandom(64 * PAGE))
    dst = failing_file(64 * PAGE, inject.page_ranges([40]), name="dst")
    mapfile = tmp_path / "m.map"
    p = rescue("--in-place", "--map", mapfile, src, dst.path)
    assert p.returncode == 2 and f"mcsafe rescue: {dst.path}: Input/output error" in p.stderr
    m = Mapfile.load(str(mapfile))
    assert m.finished_end <= 40 * PAGE and m.total("?") >= 24 * PAGE
    dst.set_bad([])
    assert rescue("--in-place", "--map", mapfile, src, dst.path).returncode == 0
    assert dst.contents() == src.read_bytes()


@pytest.mark.parametrize("how", ["fsync fails", "fsync fails once, saving after each chunk",
                                 "close fails, --no-sync", "fsync and close fail",
                                 "fsync and close fail, saving after each chunk"])
def test_dst_that_cannot_be_made_durable_is_an_error_and_not_counted(failing_file, tmp_path,
                                                                   how: str) -> None:
    """DST's fsync (or close, as NFS reports a lost write) fails, in place on a FUSE
    file: as cp ("failed to close": an error, exit 1), the run is an error (exit 2,
    documented) in one line naming DST, and neither the report nor the mapfile
    counts as rescued what was written after the last successful sync. A failed
    fsync is not retried into a success (Linux may have dropped the pages: the next
    fsync would then succeed). (main: "rescued all 64 MiB" from the in-memory map,
    with the mapfile saying 0; after one failed fsync the mapfile claimed the
    chunk; a failing close was a traceback, and so was a close failing after the
    final fsync had: an s3fs-like DST failing the upload at fsync and at flush.)
    A rerun that can sync finishes."""
    size = 64 << 20
    src = tmp_path / "src"
    src.write_bytes(os.urandom(size))
    dst = failing_file(PAGE, name="dst")
    mapfile = tmp_path / "m.map"
    extra, kw = {"fsync fails": ([], {}),
                 "fsync fails once, saving after each chunk": (["--save-every", "0"],
                                                                {"times": 1}),
                 "close fails, --no-sync": (["--no-sync"], {"close": True, "times": 0}),
                 "fsync and close fail": ([], {"close": True}),
                 "fsync and close fail, saving after each chunk": (["--save-every", "0"],
                                                                   {"close": True})}[how]
    with dst.failing_sync(**kw):
        p = rescue("--in-place", *extra, "--map", mapfile, src, dst.path)
    assert p.returncode == 2, p
    m = Mapfile.load(str(mapfile))
    assert m.total("+") == 0 and listed(mapfile, "+") == [], blocks(mapfile)
    assert p.stdout.startswith(f"rescued 0 of {size} bytes"), p.stdout
    assert p.stderr.count("\n") == 1 and p.stderr.startswith(
        f"mcsafe rescue: {dst.path}: Input/output error "), p.stderr
    again = rescue("--in-place", "--map", mapfile, src, dst.path)
    assert again.returncode == 0, again
    assert dst.contents() == src.read_bytes() and listed(mapfile, "?*/-") == []


def test_the_longest_dst_name_a_temporary_file_allows(tmp_path) -> None:
    """DST is written as ".NAME.XXXXXXXX.part" (8 random characters, as tempfile's):
    a 240-byte NAME is the longest that fits NAME_MAX (255) and is rescued; one
    byte more is one line naming DST, exit 2, nothing left behind."""
    data = os.urandom(100_000)
    (tmp_path / "src").write_bytes(data)
    name_max = os.pathconf(tmp_path, "PC_NAME_MAX")
    longest = "d" * (name_max - len("..XXXXXXXX.part"))
    p = rescue(tmp_path / "src", tmp_path / longest, "--map", tmp_path / "m.map")
    assert p.returncode == 0, p.stderr
    assert (tmp_path / longest).read_bytes() == data
    too_long = tmp_path / (longest + "d")
    p = rescue(tmp_path / "src", too_long, "--map", tmp_path / "n.map")
    assert (p.returncode, p.stderr) == (2, f"mcsafe rescue: {too_long}: File name too long\n")
    assert sorted(os.listdir(tmp_path)) == sorted(["src", longest, "m.map"])


# -- errors ---------------------------------------------------------------------------------------

def test_errors_are_one_line_and_exit_2(tmp_path) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"s" * 100)
    cases = [
        ((tmp_path / "missing", tmp_path / "o1"), "No such file or directory"),
        ((tmp_path, tmp_path / "o2"), "directory"),
        ((src, src), "are the same file"),
    ]
    bad_map = tmp_path / "bad.map"
    bad_map.write_text("# a comment\n0x0 + 1\n0x0 0x10 +\n0x20 0x10 -\n")
    cases.append(((src, tmp_path / "o3", "--map", bad_map),
                  f"{bad_map}, line 4: the block at 0x20 does not start where"))
    done = tmp_path / "done.map"
    done.write_text("0x0 + 1\n0x0 0x64 +\n")
    cases.append(((src, tmp_path / "gone", "--map", done), "does not exist, but"))
    for args, words in cases:
        p = rescue(*args)
        assert p.returncode == 2, (args, p.stdout, p.stderr)
        assert len(p.stderr.strip().splitlines()) == 1 and words in p.stderr, p.stderr
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o3").exists()
    assert [n for n in os.listdir(tmp_path) if n.endswith(".part")] == []


def test_a_hugetlbfs_src_that_cannot_be_mapped_is_one_line_and_exit_2(tmp_path) -> None:
    """A file on hugetlbfs with no huge page free to map it: one line naming SRC and
    why, exit 2 (it was a traceback, exit 1), nothing written."""
    with open("/proc/meminfo") as f:
        free = next(int(line.split()[1]) for line in f if line.startswith("HugePages_Free"))
    if free:
        pytest.skip(f"{free} huge pages are free on this machine: a hugetlbfs file maps")
    mnt = tmp_path / "huge"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "hugetlbfs", "none", str(mnt)], capture_output=True,
                          text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a hugetlbfs here: {done.stderr.strip()!r}")
    try:
        src = mnt / "src"
        fd = os.open(src, os.O_CREAT | os.O_RDWR, 0o600)
        os.ftruncate(fd, 4 << 20)
        os.close(fd)
        p = rescue("--no-sync", src, tmp_path / "dst")
        assert (p.returncode, p.stdout) == (2, "")
        assert p.stderr == f"mcsafe rescue: {src}: mmap: Cannot allocate memory\n"
        assert sorted(os.listdir(tmp_path)) == ["huge"]
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_help_describes_every_positional() -> None:
    p = subprocess.run([sys.executable, "-m", "mcsafe", "rescue", "--help"],
                       capture_output=True, text=True)
    assert p.returncode == 0
    for words in ("SRC", "DST", "the file or block device to rescue", "--map", "--zero-fill",
                  "--in-place", "exit status"):
        assert words in p.stdout, words


# -- the mapfile, as text ----------------------------------------------------------------------

@settings(max_examples=400, deadline=None)
@given(size=st.integers(1, 200),
       changes=st.lists(st.tuples(st.integers(0, 220), st.integers(0, 220),
                                  st.sampled_from("?*/-+")), max_size=12))
def test_mapfile_blocks_follow_every_change_as_a_byte_map_would(size, changes) -> None:
    m = Mapfile(size)
    model = ["?"] * size
    for a, b, status in changes:
        m.set(a, b, status)
        model[a:b] = [status] * len(model[a:b])
        flat = [s for _, n, s in m.blocks() for _ in range(n)]
        assert flat == model
        assert all(x != y for x, y in zip(m.statuses, m.statuses[1:]))
    again = Mapfile.parse(m.format("cmd", time.time(), False))
    assert list(again.blocks()) == list(m.blocks())


ZONES = ["UTC", "Europe/Paris", "America/St_Johns", "Asia/Kathmandu", "Australia/Lord_Howe",
         "Pacific/Kiritimati"]


@settings(max_examples=200, deadline=None)
@given(started=st.floats(0, 2 ** 34), zone=st.sampled_from(ZONES))
def test_mapfile_dates_are_the_local_times_datetime_gives(started: float, zone: str) -> None:
    """The start and current times a mapfile is written with are the local date and
    time datetime gives for the same instants, as the header said when it was
    written from datetime.now(): in zones with summer time, odd offsets (+5:45,
    -3:30, +14) and a half-hour summer shift (Lord Howe)."""
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("TZ", zone)
            time.tzset()
            before = f"{dt.datetime.now():%Y-%m-%d %H:%M:%S}"
            text = Mapfile(4096).format("cmd", started, False)
            after = f"{dt.datetime.now():%Y-%m-%d %H:%M:%S}"
            expected = f"{dt.datetime.fromtimestamp(started):%Y-%m-%d %H:%M:%S}"
    finally:
        time.tzset()
    lines = text.split("\n")
    assert lines[2] == f"# Start time:   {expected}"
    assert lines[3].startswith("# Current time: ")
    assert before <= lines[3][len("# Current time: "):] <= after


def test_fallocate_reserves_room_past_the_end_and_says_why_it_cannot(tmp_path) -> None:
    """The extension's fallocate(2), as the mapfile's reserve uses it: KEEP_SIZE
    allocates blocks past the end, the size unchanged; a failure is errno's OSError."""
    import errno

    from mcsafe._mcsafe import _fallocate
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.write(fd, b"x" * 100)
        _fallocate(fd, 1, 0, 1 << 20)                  # FALLOC_FL_KEEP_SIZE
        st = os.fstat(fd)
        assert st.st_size == 100 and st.st_blocks * 512 >= 1 << 20
    finally:
        os.close(fd)
    with pytest.raises(OSError) as exc:
        _fallocate(fd, 1, 0, 4096)                     # closed
    assert exc.value.errno == errno.EBADF


def test_mapfile_reads_what_ddrescue_accepts_and_names_what_it_does_not() -> None:
    m = Mapfile.parse("# c\n  0x10  -  3 \n0 4096 +\n010000 0x1000 +\n8192 512 ?\n")
    assert (m.current_pos, m.current_status, m.current_pass) == (16, "-", 3)
    assert list(m.blocks()) == [(0, 8192, "+"), (8192, 512, "?")]
    assert Mapfile.parse("") is None and Mapfile.parse("# c\n\n  \n") is None
    # glibc reads "0x" alone as 0: a block of size 0, status "-" (ddrescuelog agrees)
    assert Mapfile.parse("0 + 1\n0 0x-1 +\n").size == 0
    for text, words in (("0x0 x 1\n", "line 1: not a status line"),
                        ("0 + 1\n0 10 x\n", "line 2: not a block"),
                        ("0 + 1\n0 0xg +\n", "line 2: not a block"),    # 0x: 0, then g
                        ("0 + 1\n0 0x10 +\n0x10 0 +\n", "line 3: a block at 0x10 of size 0")):
        with pytest.raises(MapfileError, match=words):
            Mapfile.parse(text)


# -- empty mapfiles, as ddrescue reads them -------------------------------------------------

@pytest.mark.parametrize("text", ["", "# made by mktemp, then a comment\n\n   \n"])
def test_an_empty_mapfile_starts_a_new_rescue_as_in_ddrescue(tmp_path, text) -> None:
    src = tmp_path / "src"
    src.write_bytes(os.urandom(100_000))
    (tmp_path / "theirs.map").write_text(text)
    ddrescue(str(src), tmp_path / "theirs", tmp_path / "theirs.map")
    (tmp_path / "m.map").write_text(text)
    p = rescue("--map", tmp_path / "m.map", src, tmp_path / "mine")
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "mine").read_bytes() == src.read_bytes()
    assert blocks(tmp_path / "m.map") == blocks(tmp_path / "theirs.map") == \
        [(0, 100_000, "+")]


def test_ddrescue_s_mapfile_of_an_empty_input_is_resumed(tmp_path) -> None:
    """ddrescue on an empty input writes one block of size 0 ("0x00000000 0x00000000 ?");
    ddrescuelog reads it, and so does rescue, once the input holds data too."""
    src = tmp_path / "src"
    src.write_bytes(b"")
    ddrescue(str(src), tmp_path / "dst", tmp_path / "dst.map")
    assert "0x00000000  0x00000000  ?" in (tmp_path / "dst.map").read_text()
    assert ddrescuelog("-t", tmp_path / "dst.map").returncode == 0
    p = rescue(src, tmp_path / "dst")
    assert p.returncode == 0, p.stderr
    src.write_bytes(b"now some data" * 1000)
    p = rescue(src, tmp_path / "dst")
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "dst").read_bytes() == src.read_bytes()


def test_a_block_of_size_0_is_read_where_ddrescuelog_reads_it() -> None:
    """ddrescuelog takes a block of size 0 at position 0 before any other, and
    refuses one anywhere else (checked against ddrescuelog itself)."""
    for text, ok in (("0 ? 1\n0 0 ?\n", True), ("0 + 1\n0 0 -\n", True),
                     ("0 ? 1\n0 0 ?\n0 0x1000 +\n", True),
                     ("0 ? 1\n0 0x1000 +\n0x1000 0 ?\n", False),
                     ("0 ? 1\n0 0x1000 +\n0x1000 0 ?\n0x1000 0x1000 ?\n", False)):
        theirs = subprocess.run([need("ddrescuelog"), "-t", "-"], input=text,
                                capture_output=True, text=True)
        assert (theirs.returncode == 0) == ok, (text, theirs.stderr)
        if ok:
            m = Mapfile.parse(text)
            assert m.size == sum(n for _, n, _ in m.blocks())
        else:
            with pytest.raises(MapfileError, match="of size 0"):
                Mapfile.parse(text)


# -- every mapfile ddrescuelog reads, and nothing else, read the same ---------------------------

def _written(value: int, style: str) -> str:
    sign, value = ("-", -value) if value < 0 else ("", value)
    return sign + {"hex": f"0x{value:X}", "lower": f"0x{value:x}", "dec": str(value),
                   "oct": f"0{value:o}" if value else "0", "bare": "0x"}[style]


# C's isspace() is " \t\n\v\f\r" only: "\x1c"-"\x1f" (Python's whitespace) are not
NOISE = st.lists(st.sampled_from(["# a comment", "", "   ", "  # indented", "\t", "\v\f",
                                  "\r", "\x1c", "\0"]), max_size=2)
STYLES = st.sampled_from(["hex", "lower", "dec", "oct"] * 3 + ["bare"])
JUNK = st.sampled_from(["", "", "", " 7", " junk", " # c", "x", "\0", "\r", "\x1f"])
SEP = st.sampled_from([" ", " ", "  ", "\t", "\v", "\f", "\r", "\x1c", "\x1e", " " * 118,
                       " " * 120])
LEAD = st.sampled_from([""] * 8 + [" ", "\r", "\v", "\x1d", " " * 140])
# ddrescue reads a line up to "\n" only: a lone "\r" (or "\v", "\f") leaves one line
EOL = st.sampled_from(["\n"] * 8 + ["\r\n", "\r", "\v", "\f\n"])
HUGE = [1 << 63, (1 << 64) + 5, 10 ** 23]


@st.composite
def near_mapfiles(draw) -> str:
    """Mapfiles as ddrescue writes them, and near them: comments and blank lines
    anywhere, numbers in hex, decimal or octal (or a bare "0x"), past 2^63 too, a
    status line with or without its pass (past a C int too), blocks that start past
    0, leave gaps, overlap, have size 0, odd status letters, text after the fields,
    no space before a status; C whitespace and Python's own ("\x1c"-"\x1f") between
    and before fields, lines ended by a lone "\r", NULs, lines longer than the 127
    characters ddrescue keeps of a line."""
    lines = draw(NOISE)
    if draw(st.integers(0, 9)):
        status = draw(st.sampled_from("?*/-FG+" * 3 + "xX#"))
        passes = draw(st.sampled_from(["", "", "", " 1", " 1", " 3", " 08", " 2.5", " 0",
                                       " -1", " 0x2", " 2147483647", " 2147483648",
                                       " 4294967297", " -4294967294", " 99999999999999999999"]))
        pos = draw(st.sampled_from([0, 0, 0, 0, 0x2000, 123, -1, *HUGE]))
        lines.append(f"{draw(LEAD)}{_written(pos, draw(STYLES))}{draw(SEP)}{status}{passes}"
                     f"{draw(JUNK)}")
        lines += draw(NOISE)
    pos = draw(st.sampled_from([0, 0, 0, 0x1000, 0x4000, 77]))
    for _ in range(draw(st.integers(0, 6))):
        size = draw(st.integers(1, 1 << 16)) if draw(st.integers(0, 9)) else \
            draw(st.sampled_from([0, *HUGE]))
        pos += draw(st.sampled_from([0] * 10 + [1, -1, 0x1000, -0x1000]))
        status = draw(st.sampled_from("?*/-+" * 4 + "xF#"))
        before = draw(st.sampled_from([" ", "\t", "", "\v"]))
        lines.append(f"{draw(LEAD)}{_written(pos, draw(STYLES))}{draw(SEP)}"
                     f"{_written(size, draw(STYLES))}{before}{status}{draw(JUNK)}")
        lines += draw(NOISE)
        pos += size
    return "".join(line + draw(EOL) for line in lines)


def _merged(blocks: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    out: list[tuple[int, int, str]] = []
    for p, n, s in blocks:
        if n == 0:
            continue
        if out and out[-1][2] == s and out[-1][0] + out[-1][1] == p:
            out[-1] = (out[-1][0], out[-1][1] + n, s)
        else:
            out.append((p, n, s))
    return out


@settings(max_examples=600, deadline=None)
@given(text=near_mapfiles())
def test_mapfiles_are_read_as_ddrescuelog_reads_them(text: str) -> None:
    """Differential against ddrescuelog (GNU ddrescue's own reader): the same
    mapfiles are accepted, a refused one is refused at the same line, and an
    accepted one has the same status line and the same status for every byte of
    its domain (ddrescuelog --change-types with no change writes the mapfile as
    it read it). Bytes before a first block that starts past 0 are outside
    ddrescuelog's domain; ours reads them as non-tried, as ddrescue does when it
    resumes from such a mapfile (test below)."""
    theirs = subprocess.run([need("ddrescuelog"), "--change-types=?*/-+,?*/-+", "-"],
                            input=text, capture_output=True, text=True, timeout=WAIT)
    try:
        ours = Mapfile.parse(text, "-")
    except MapfileError as exc:
        assert theirs.returncode != 0, (text, str(exc), theirs.stdout)
        line = str(exc).split(",")[1].split(":")[0].strip()
        assert f"Error in mapfile, {line}:" in theirs.stderr, (text, str(exc), theirs.stderr)
        return
    assert theirs.returncode == 0, (text, ours, theirs.stderr)
    said = [x.split() for x in theirs.stdout.splitlines() if x and not x.startswith("#")]
    if not said:                                  # "Nothing to do; domain is empty."
        assert ours is None or ours.total("?*/-+") == 0, (text, ours)
        return
    assert ours is not None
    (pos, status, passes), rest = said[0], said[1:]
    assert (ours.current_pos, ours.current_status, ours.current_pass) == \
        (int(pos, 16), status, int(passes)), text
    blocks = _merged([(int(p, 16), int(n, 16), s) for p, n, s in rest])
    begin = blocks[0][0] if blocks else 0
    mine = _merged([(max(p, begin), p + n - max(p, begin), s) for p, n, s in ours.blocks()
                    if p + n > begin])
    assert mine == blocks, text
    assert list(ours.blocks())[:1] == ([(0, begin, "?")] if begin and rest[0][2] != "?"
                                        else list(ours.blocks())[:1]), text


def test_a_mapfile_whose_only_block_is_at_llong_max_has_an_empty_domain() -> None:
    """A block at 2^63 (read as LLONG_MAX, as sscanf's %lli saturates) is cut to size 0
    at LLONG_MAX, as ddrescue's Block ends by LLONG_MAX: no block holds a byte, and
    the mapfile is read as one of an empty input, as ddrescuelog reads it ("domain
    is empty"). (Found by the differential test above: main raised IndexError.)"""
    text = "0x0 ?\n0x8000000000000000 0x8000000000000000 ?\n"
    theirs = subprocess.run([need("ddrescuelog"), "--change-types=?*/-+,?*/-+", "-"],
                            input=text, capture_output=True, text=True, timeout=WAIT)
    assert (theirs.returncode, theirs.stderr) == \
        (0, "ddrescuelog: Nothing to do; domain is empty.\n")
    m = Mapfile.parse(text, "-")
    assert m is not None and (m.size, list(m.blocks())) == (0, [])
    assert (m.current_pos, m.current_status, m.current_pass) == (0, "?", 1)


def test_every_mapfile_written_is_one_ddrescuelog_reads(tmp_path) -> None:
    """A run resumed from pass INT_MAX (the largest pass ddrescue reads, a C int)
    stays at it, and a DST whose name holds a newline keeps the command-line comment
    on one line (main: pass 2^31, and the rest of the name as a line of its own:
    both mapfiles refused by ddrescuelog, and by the next run)."""
    src = tmp_path / "src"
    src.write_bytes(os.urandom(8 * PAGE))
    mapfile = tmp_path / "m.map"
    mapfile.write_text(f"0 + 2147483647\n0 {8 * PAGE:#x} ?\n")
    p = rescue("--map", mapfile, src, tmp_path / "dst\n0 0x1000 +")
    assert p.returncode == 0, p
    assert ddrescuelog("-t", mapfile).returncode == 0, mapfile.read_text()
    m = Mapfile.load(str(mapfile))
    assert (m.current_pass, blocks(mapfile)) == (2147483647, [(0, 8 * PAGE, "+")])
    assert (tmp_path / "dst\n0 0x1000 +").read_bytes() == src.read_bytes()
    assert rescue("--map", mapfile, src, tmp_path / "dst\n0 0x1000 +").returncode == 0


def test_a_mapfile_that_starts_past_0_is_resumed_as_ddrescue_does(tmp_path) -> None:
    """A mapfile whose first block starts past 0 (ddrescue -i 0x4000's, without the
    non-tried block 1.27 writes before it, as older writers leave it): resumed from
    it, ddrescue reads the bytes before too (outside the mapfile's domain, they are
    non-tried); mcsafe rescue, given the same mapfile, does the same and ends with
    the same mapfile and bytes. (main: refused, "the block at 0x4000 does not start
    where the one before ends (0x0)".)"""
    src = tmp_path / "src"
    src.write_bytes(os.urandom(64 * PAGE))
    theirs = tmp_path / "theirs.map"
    ddrescue(str(src), tmp_path / "theirs", theirs, "-i", "0x4000")
    lines = theirs.read_text().splitlines()
    first = next(i for i, x in enumerate(lines) if x.startswith("0x00000000  0x00004000  ?"))
    theirs.write_text("\n".join(lines[:first] + lines[first + 1:]) + "\n")
    assert _without_comments(theirs)[1].startswith("0x00004000  ")
    shutil.copy(theirs, tmp_path / "ours.map")
    shutil.copy(tmp_path / "theirs", tmp_path / "ours")
    ddrescue(str(src), tmp_path / "theirs", theirs)
    p = rescue(src, tmp_path / "ours", "--map", tmp_path / "ours.map")
    assert p.returncode == 0, p.stderr
    assert blocks(tmp_path / "ours.map") == blocks(theirs) == [(0, 64 * PAGE, "+")]
    assert (tmp_path / "ours").read_bytes() == (tmp_path / "theirs").read_bytes() == \
        src.read_bytes()


# -- stdout and usage ------------------------------------------------------------------------

def test_stdout_that_cannot_be_written_is_one_line_and_exit_2(tmp_path) -> None:
    """A report to a full disk (/dev/full): one line naming standard output, exit 2
    (for scan 1 would mean bad ranges found), no traceback; the rescue itself done."""
    src = tmp_path / "src"
    src.write_bytes(os.urandom(100_000))
    for args in (("scan", src), ("scan", "--json", src),
                 ("rescue", src, tmp_path / "dst")):
        with open("/dev/full", "w") as full:
            p = subprocess.run([sys.executable, "-m", "mcsafe", *map(str, args)], stdout=full,
                               stderr=subprocess.PIPE, text=True, timeout=WAIT)
        assert p.returncode == 2, (args, p.stderr)
        assert p.stderr.splitlines() == [f"mcsafe {args[0]}: standard output: "
                                         "No space left on device"], p.stderr
    assert (tmp_path / "dst").read_bytes() == src.read_bytes()


@pytest.mark.parametrize("command", ["scan", "rescue"])
def test_a_closed_pipe_ends_quietly_as_cat_does(tmp_path, command) -> None:
    """stdout a pipe whose reader has gone: killed by SIGPIPE (exit 141 in a shell),
    nothing on stderr."""
    src = tmp_path / "src"
    src.write_bytes(os.urandom(100_000))
    args = ["scan", str(src), str(src)] if command == "scan" else \
        ["rescue", str(src), str(tmp_path / "dst")]
    r, w = os.pipe()
    os.close(r)
    try:
        p = subprocess.run([sys.executable, "-m", "mcsafe", *args], stdout=w,
                           stderr=subprocess.PIPE, text=True, timeout=WAIT)
    finally:
        os.close(w)
    assert (p.returncode, p.stderr) == (-signal.SIGPIPE, "")


def test_usage_errors_are_rescue_s_own(tmp_path) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"s" * 100)
    p = rescue(src, tmp_path / "dst", "--bogus")
    assert p.returncode == 2 and p.stderr.startswith("usage: python -m mcsafe rescue ")
    assert p.stderr.splitlines()[-1] == \
        "python -m mcsafe rescue: error: unrecognized arguments: --bogus"
    for value in ("-5", "nan", "x"):
        p = rescue("--save-every", value, src, tmp_path / "dst")
        assert p.returncode == 2 and "argument --save-every: " in p.stderr, (value, p.stderr)
    assert not (tmp_path / "dst").exists()


# -- a full disk, an unwritable mapfile, the page cache, SRC cut short ----------------------

# -- what a full disk, an unwritable mapfile and odd mapfiles do -----------------------------

def test_a_full_disk_stops_with_a_mapfile_that_says_how_far_it_got(tmpfs, tmp_path) -> None:
    """DST and its mapfile on a 4 MiB tmpfs, SRC 12 MiB: DST fills the disk. One
    line naming DST, exit 2; the mapfile (saved into the room reserved for it when
    the run began) says what DST holds; with room again, a rerun finishes."""
    disk = tmpfs("4m")
    src = tmp_path / "src"
    data = os.urandom(12 << 20)
    src.write_bytes(data)
    dst, mapfile = disk / "dst", disk / "dst.map"
    p = rescue(src, dst)
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert p.stderr.splitlines() == [f"mcsafe rescue: {dst}: No space left on device; "
                                     "run again to go on"]
    m = Mapfile.load(str(mapfile))
    done = m.finished_end
    assert 0 < done < 4 << 20 and m.total("+") == done
    assert list(m.blocks()) == [(0, done, "+"), (done, (12 << 20) - done, "?")]
    assert dst.read_bytes() == data[:done]
    assert sorted(os.listdir(disk)) == ["dst", "dst.map"]
    assert ddrescuelog("-D", mapfile).returncode == 1      # not everything rescued
    # the last block taken by another file: the mapfile is written over itself, in
    # the room reserved for it, up front and at the end
    fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        with pytest.raises(OSError, match="No space left"):
            while True:
                os.write(fd, b"f" * PAGE)
    finally:
        os.close(fd)
    assert os.statvfs(disk).f_bavail == 0
    p = rescue("--no-sync", src, dst)
    assert p.returncode == 2 and p.stderr.splitlines() == \
        [f"mcsafe rescue: {dst}: No space left on device; run again to go on"]
    assert f"# Command line: mcsafe rescue --no-sync {src} {dst}\n" in mapfile.read_text()
    assert blocks(mapfile) == [(0, done, "+"), (done, (12 << 20) - done, "?")]
    assert sorted(os.listdir(disk)) == ["dst", "dst.map", "filler"]
    os.unlink(disk / "filler")
    subprocess.run(["mount", "-o", "remount,size=32m", str(disk)], check=True)
    p = rescue(src, dst)
    assert p.returncode == 0, p.stderr
    assert dst.read_bytes() == data
    assert ddrescuelog("-D", mapfile).returncode == 0


def test_a_full_disk_in_place_keeps_saving_the_mapfile(tmpfs, tmp_path) -> None:
    """--in-place, a save after every chunk: the saves that come after the disk is
    full still succeed (in the room kept for the mapfile), the last says how far."""
    disk = tmpfs("4m")
    src = tmp_path / "src"
    data = os.urandom(12 << 20)
    src.write_bytes(data)
    dst = disk / "dst"
    p = rescue("--in-place", "--save-every", 0, "--map", disk / "d.map", src, dst)
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    assert "No space left on device" in p.stderr and "Traceback" not in p.stderr
    m = Mapfile.load(str(disk / "d.map"))
    assert 0 < m.finished_end and dst.read_bytes()[:m.finished_end] == data[:m.finished_end]


def test_a_mapfile_longer_than_its_room_on_a_full_disk_is_not_torn(failing_file, tmpfs,
                                                                    tmp_path) -> None:
    """The mapfile's file system is full and the final mapfile (3000 bad ranges,
    some 90 KiB) is longer than the room reserved at its last save (64 KiB): the
    mapfile saved last stays whole (ddrescuelog reads it), one line naming it, exit
    2; with room again, a rerun goes on from it and finishes. (main: the new text
    was written over the old in place until the disk ran out: a torn mapfile,
    unreadable by ddrescuelog and by the rerun.)"""
    pages = 6000
    src = failing_file(pages * PAGE, inject.page_ranges(range(1, pages, 2)), name="src")
    disk = tmpfs("512k")
    mapfile = disk / "dst.map"
    with open(disk / "filler", "wb") as filler:    # all but 80 KiB: the first save fits
        st = os.statvfs(disk)
        filler.write(b"\0" * (st.f_bavail * st.f_frsize - (80 << 10)))
    p = rescue("--map", mapfile, src.path, tmp_path / "dst")
    assert p.returncode == 2, p
    assert p.stderr.splitlines() == [f"mcsafe rescue: {mapfile}: No space left on device; "
                                     "run again to go on"], p.stderr
    assert ddrescuelog("-t", mapfile).returncode == 0
    assert Mapfile.load(str(mapfile)) == Mapfile(pages * PAGE)  # as saved before the copy
    assert sorted(os.listdir(disk)) == ["dst.map", "filler"]
    os.unlink(disk / "filler")
    p = rescue("--map", mapfile, src.path, tmp_path / "dst")
    assert p.returncode == 1, p
    assert blocks(mapfile) == [(i * PAGE, PAGE, "-+"[i % 2 == 0]) for i in range(pages)]
    want, hole = src.contents(), bytes(PAGE)
    assert (tmp_path / "dst").read_bytes() == b"".join(
        want[i * PAGE:(i + 1) * PAGE] if i % 2 == 0 else hole for i in range(pages - 1))


def test_a_mapfile_that_cannot_be_written_is_refused_before_anything_is_copied(
        tmpfs, tmp_path) -> None:
    """Its folder missing, on a read-only file system, or an existing one there to
    resume from: one line naming the mapfile, exit 2, DST not created."""
    src = tmp_path / "src"
    src.write_bytes(os.urandom(100_000))
    ro = tmpfs("64k")
    (ro / "old.map").write_text("0x0 + 1\n0x0 0x186A0 ?\n")
    subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
    for mapfile, why in ((tmp_path / "no" / "such" / "x.map", "No such file or directory"),
                         (ro / "x.map", "Read-only file system"),
                         (ro / "old.map", "Read-only file system")):
        p = rescue("--map", mapfile, src, tmp_path / "dst")
        assert p.returncode == 2, (mapfile, p.stdout, p.stderr)
        assert p.stderr.splitlines() == [f"mcsafe rescue: {mapfile}: {why}"]
        assert sorted(os.listdir(tmp_path)) == sorted(["src", ro.name])


# -- page cache, stdout, usage -------------------------------------------------------------------

@pytest.mark.parametrize("size", [500_000, 32 << 20])
def test_the_page_cache_of_src_is_left_as_found(tmp_path, size) -> None:
    """As scan: pages rescue brought in are evicted again, from the tail that opening
    SRC reads too; pages cached before stay."""
    from test_mapped_scrub import _resident_of_path, evict, warm, written
    src = tmp_path / "src"
    written(src, size)
    evict(src)
    warm(src, 0, 2 << 20 if size > 4 << 20 else 4 * PAGE)
    before = _resident_of_path(src, size)
    p = rescue("--no-sync", src, tmp_path / "dst")
    assert p.returncode == 0, p.stderr
    after = _resident_of_path(src, size)
    assert after == before, f"{after.count(1) - before.count(1)} more pages cached"


def _rescue_held(dst, offset: int, meanwhile: Callable[[subprocess.Popen], object],
                 *args: object) -> tuple[subprocess.Popen, str, str]:
    """Rescue (--no-sync --in-place, args, then dst: a FailingFile) while its first
    write past offset is held in the FUSE server, and call meanwhile(the process)
    while it is: (the process, its stdout, its stderr)."""
    with dst.holding_writes(offset):
        p = subprocess.Popen([sys.executable, "-m", "mcsafe", "rescue", "--no-sync",
                              "--in-place", *map(str, args), dst.path],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            dst.wait_for_held_write(WAIT)
            meanwhile(p)
        finally:
            dst.release_writes()
            out, err = p.communicate(timeout=WAIT)
    return p, out, err


def test_src_s_pages_evicted_mid_run_are_given_back_after_they_are_read_again(
        failing_file, tmp_path) -> None:
    """SRC (80 MiB) is all cached when the rescue starts; while its write of the second
    16 MiB into DST (a FUSE file, in place) is held in the server, another process
    evicts SRC's last 32 MiB. The rescue reads them again and evicts them again:
    SRC's cache ends as it was when the rescue read each part, the first 48 MiB
    cached, the rest not (cachestat is asked per chunk, not once at the start).
    (The third 16 MiB is mapped in by then, while the second is written, and no
    process can evict a page mapped.)"""
    from test_mapped_scrub import _resident_of_path, evict, warm, written
    size, kept = 80 << 20, 48 << 20
    src = tmp_path / "src"
    written(src, size)
    warm(src, 0, size)
    dst = failing_file(PAGE)
    dst.resize(size)
    def meanwhile(_: subprocess.Popen) -> None:
        evict(src, kept, size - kept)
        assert _resident_of_path(src, size) == \
            bytes([1]) * (kept // PAGE) + bytes((size - kept) // PAGE)
    p, _, err = _rescue_held(dst, 16 << 20, meanwhile, "--map", tmp_path / "m.map", src)
    assert p.returncode == 0, err
    after = _resident_of_path(src, size)
    assert (after[:kept // PAGE].count(0), after[kept // PAGE:].count(1)) == (0, 0)
    assert dst.contents() == src.read_bytes()


def test_pages_read_ahead_into_the_next_chunk_are_given_back(tmp_path) -> None:
    """SRC cached but for a few pages either side of the 16 MiB chunk boundary:
    reading the first chunk reads ahead into the second (the kernel's window
    around a fault), which then looks all cached. The Restorer saw those pages
    cold before, so it follows the second chunk too and evicts them: SRC's cache
    ends as found."""
    from mcsafe.cli.onecopy import CHUNK
    from mcsafe.pagecache import readahead
    from test_mapped_scrub import _resident_of_path, evict, warm, written
    src = tmp_path / "src"
    size = 2 * CHUNK
    written(src, size)
    with open(src, "rb") as f:
        cold = readahead(f.fileno()) // 8 // PAGE * PAGE
    evict(src)
    warm(src, 0, CHUNK - cold)
    warm(src, CHUNK + cold, size - CHUNK - cold)
    before = _resident_of_path(src, size)
    assert before.count(0) == 2 * cold // PAGE
    p = rescue("--no-sync", src, tmp_path / "dst")
    assert p.returncode == 0, p.stderr
    after = _resident_of_path(src, size)
    assert after == before, f"{after.count(1) - before.count(1)} more pages cached"


def test_a_signal_after_the_last_byte_was_read_ends_as_a_finished_run(
        failing_file, tmp_path) -> None:
    """SIGINT arrives while the last chunk's write into DST (a FUSE file, in place) is
    held in the server: nothing is left to try once it returns, so the run ends
    as a finished one (mapfile finished, exit 0), not "0 bytes not tried yet; run
    again to go on" (exit 130)."""
    src = tmp_path / "src"
    data = os.urandom(32 << 20)
    src.write_bytes(data)
    dst = failing_file(PAGE)
    dst.resize(len(data))
    mapfile = tmp_path / "m.map"
    p, out, err = _rescue_held(dst, 16 << 20, lambda p: p.send_signal(signal.SIGINT),
                               "--map", mapfile, src)
    assert (p.returncode, err) == (0, "")
    assert out.startswith(f"rescued {len(data)} of {len(data)} bytes (100.00%)")
    assert blocks(mapfile) == [(0, len(data), "+")]
    assert "# current_pos  current_status  current_pass" in mapfile.read_text()
    assert Mapfile.load(str(mapfile)).current_status == "+"
    assert dst.contents() == data


def test_src_cut_during_the_rescue_is_said_in_one_line(failing_file, tmp_path) -> None:
    """The FUSE server cuts SRC (4 MiB) to 10 pages when its bad page 20 is read: what
    read(2) would have given stays rescued, the rest is not tried; stderr says SRC
    was cut, exit 1 (ranges not rescued)."""
    size = 1024 * PAGE
    f = failing_file(size, inject.page_ranges([20]))
    data = f.contents()
    mapfile = tmp_path / "m.map"
    with f.on_failed_read(truncate=10 * PAGE):
        p = rescue("--map", mapfile, f.path, tmp_path / "dst")
    assert p.returncode == 1, p.stderr
    assert p.stderr.splitlines() == [
        f"mcsafe rescue: {f.path} was cut from {size} to {10 * PAGE} bytes during the "
        f"rescue: {size - 10 * PAGE} bytes past the cut were not read"]
    assert blocks(mapfile) == [(0, 10 * PAGE, "+"), (10 * PAGE, size - 10 * PAGE, "?")]
    assert (tmp_path / "dst").read_bytes() == data[:10 * PAGE]



# -- the one-copy path: pwrite(2) to DST straight from SRC's mapping ---------------------------

def mapped(path: str) -> tuple[int, int, int]:
    """(fd, address, size) of a whole-file shared mapping of path."""
    from mcsafe._mcsafe import _map
    fd = os.open(path, os.O_RDONLY)
    size = os.fstat(fd).st_size
    return fd, _map(size, 1, 1, fd, 0), size     # PROT_READ, MAP_SHARED


def test_a_write_from_the_mapping_stops_short_at_a_failing_page(failing_file, tmp_path) -> None:
    """The kernel's copy from user memory meets a FUSE page that fails with EIO: the
    write comes back short at that page, then fails with EFAULT; no signal. What
    was written is the file's."""
    from mcsafe._mcsafe import _unmap
    from mcsafe.cli import onecopy
    f = failing_file(16 * PAGE, inject.page_ranges([5]))
    fd, address, size = mapped(f.path)
    out = os.open(tmp_path / "out", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        assert onecopy._write(out, address, size, 0) == (5 * PAGE, 0)
        assert onecopy._write(out, address + 5 * PAGE, PAGE, 5 * PAGE) == (0, 0)
        assert os.pread(out, size, 0) == f.contents()[:5 * PAGE]
    finally:
        os.close(out)
        _unmap(address, size)
        os.close(fd)


def test_a_write_from_the_mapping_stops_short_where_another_process_cut_src(tmp_path) -> None:
    """SRC cut by another process (truncate(1)) after it was mapped: the write from
    the mapping comes back short at the page after the cut (the rest of the cut
    page reads as zeros, as the kernel maps it); copy() writes up to the cut and
    returns the rest for the careful path."""
    from mcsafe._mcsafe import _unmap
    from mcsafe.cli import onecopy
    src = tmp_path / "src"
    data = os.urandom(64 * PAGE)
    src.write_bytes(data)
    fd, address, size = mapped(str(src))
    out = os.open(tmp_path / "out", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        subprocess.run(["truncate", "-s", str(10 * PAGE + 100), src], check=True)
        assert onecopy._write(out, address, size, 0) == (11 * PAGE, 0)
        assert os.pread(out, size, 0) == data[:10 * PAGE + 100] + bytes(PAGE - 100)
        done: list[tuple[int, int]] = []
        got = onecopy.copy(fd, address, out, 0, size, lambda o, n: done.append((o, n)),
                           lambda o, n: None, lambda d, t: None, lambda: os.fstat(fd).st_size,
                           False)
        cut = 10 * PAGE + 100            # written up to the cut, the rest handed over
        assert got == (cut, size) and done == [(0, cut)]
    finally:
        os.close(out)
        _unmap(address, size)
        os.close(fd)


@pytest.mark.parametrize("machine, release, why", [
    ("x86_64", "6.18.44-fc-v1272", None), ("x86_64", "5.17.0-1-amd64", None),
    ("x86_64", "5.16.18", "older than 5.17"), ("aarch64", "6.12.0", "aarch64: no machine"),
    ("x86_64", "weird", "not understood")])
def test_the_one_copy_path_is_taken_where_the_kernel_recovers_its_copy(
        monkeypatch, machine: str, release: str, why: str | None) -> None:
    from mcsafe.cli import onecopy
    monkeypatch.delenv(onecopy.SWITCH, raising=False)
    got = onecopy.unavailable(machine, release)
    assert got is None if why is None else why in got
    monkeypatch.setenv(onecopy.SWITCH, "0")
    assert onecopy.unavailable(machine, release) == f"{onecopy.SWITCH}=0"


def test_a_clean_file_is_copied_by_the_one_copy_path_alone(tmp_path) -> None:
    """Where it is available, a clean SRC goes through onecopy.copy only: MappedFile's
    scrub (the two-copy path) is never asked; DST and the mapfile are complete. (In
    a child: the command installs signal handlers of its own.)"""
    from mcsafe.cli import onecopy
    if onecopy.unavailable() is not None:
        pytest.skip(f"the one-copy path is not taken here: {onecopy.unavailable()}")
    src = tmp_path / "src"
    data = os.urandom((20 << 20) + 123)
    src.write_bytes(data)
    script = textwrap.dedent(f"""\
        import sys
        from mcsafe.cli import main, onecopy
        from mcsafe.mapped import MappedFile
        calls, real = [], onecopy.copy
        onecopy.copy = lambda *a: calls.append(a[3:5]) or real(*a)
        def scrub(*a, **k):
            raise AssertionError("scrub was asked")
        MappedFile.scrub = scrub
        code = main(["rescue", "--no-sync", {str(src)!r}, {str(tmp_path / "out")!r}])
        print(code, calls, file=sys.stderr)
        """)
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=WAIT)
    assert p.stderr.splitlines()[-1] == f"0 [(0, {len(data)})]", p.stderr
    assert (tmp_path / "out").read_bytes() == data
    assert blocks(tmp_path / "out.map") == [(0, len(data), "+")]


def _without_comments(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if not line.startswith("#")]


def _data_extents(path: Path) -> list[tuple[int, int]]:
    """[start, end) of each run of data of a file (SEEK_DATA, SEEK_HOLE): its holes."""
    out = []
    fd = os.open(path, os.O_RDONLY)
    try:
        end = os.fstat(fd).st_size
        offset = 0
        while offset < end:
            try:
                data = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError:             # ENXIO: only a hole is left
                break
            offset = os.lseek(fd, data, os.SEEK_HOLE)
            out.append((data, offset))
    finally:
        os.close(fd)
    return out


@settings(max_examples=12, deadline=None)
@given(pages=st.lists(st.integers(0, 4200), max_size=8, unique=True),
       size=st.integers(1, 4200 * PAGE))
def test_one_copy_and_two_copies_rescue_the_same(pages, size) -> None:
    """The same failing file (random bad pages, a size not a multiple of pages, over
    the 16 MiB the one-copy path maps in at a time) rescued with the one-copy path
    and without it (MCSAFE_RESCUE_ONE_COPY=0): the same exit, the same bytes, the
    same holes, the same mapfile; its bad blocks are the pages read(2) fails on."""
    import tempfile
    from mcsafe.cli import onecopy
    if not os.path.exists("/dev/fuse"):
        pytest.skip("no /dev/fuse on this machine: failing files need FUSE")
    bad = inject.page_ranges(sorted(p for p in pages if p * PAGE < size))
    with inject.failing_file(size, bad) as f, tempfile.TemporaryDirectory() as tmp:
        runs = {}
        for switch in ("1", "0"):
            out = Path(tmp) / f"out{switch}"
            p = rescue(f.path, out, env={**os.environ, onecopy.SWITCH: switch})
            runs[switch] = (p.returncode, out.read_bytes(), _data_extents(out),
                            _without_comments(Path(str(out) + ".map")))
        assert runs["1"] == runs["0"]
        code, data, _, _ = runs["1"]
        assert code == (1 if bad else 0)
        want_bad = [(s, min(e, size)) for s, e in bad]
        assert Mapfile.load(str(Path(tmp) / "out1.map")).ranges("-") == \
            [(s, e) for s, e in want_bad if s < e]


def _maps_of(start: int, end: int) -> list[str]:
    """The lines of /proc/self/maps of mappings that overlap [start, end)."""
    out = []
    with open("/proc/self/maps") as f:
        for line in f:
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            if lo < end and hi > start:
                out.append(line.strip())
    return out


@pytest.fixture(params=["tmp_path", "tmpfs"])
def src_folder(request, tmp_path) -> Path:
    """A folder for SRC: the tests' own (ext4 here: the kernel aligns a mapping of
    2 MiB or more itself), or on tmpfs (/dev/shm: it does not, unless mounted with
    huge=; SourceMap then places the mapping by hand)."""
    if request.param == "tmp_path":
        return tmp_path
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm (tmpfs) on this machine")
    import tempfile
    folder = Path(tempfile.mkdtemp(dir="/dev/shm"))
    request.addfinalizer(lambda: shutil.rmtree(folder))
    return folder


def _check_mapping(folder: Path, address: int, size: int, data: bytes, fd: int) -> None:
    """Only SRC's mapping is at address, read only and shared, nothing of a
    reservation around it; copy() from it writes SRC's bytes."""
    from mcsafe.cli import onecopy
    end = address + -(-size // PAGE) * PAGE
    lines = _maps_of(address - onecopy.PMD_SIZE, end + onecopy.PMD_SIZE)
    ours = [line for line in lines if line.endswith(str(folder / "src"))]
    assert [line.split()[:2] for line in ours] == [[f"{address:x}-{end:x}", "r--s"]]
    # no PROT_NONE leftover of the reservation next to it
    assert not [line for line in lines if line.split()[1] == "---p"], lines
    out = os.open(folder / "out", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        got = onecopy.copy(fd, address, out, 0, size, lambda o, n: None, lambda o, n: None,
                           lambda d, t: None, lambda: size, False)
        assert got == (size, size) and os.pread(out, size + 1, 0) == data
    finally:
        os.close(out)


@pytest.mark.parametrize("size", [1, PAGE, (3 << 20) + 5, 8 << 20])
def test_src_is_mapped_at_a_pmd_aligned_address_and_nothing_around_it_is_kept(
        src_folder, size) -> None:
    """SourceMap maps SRC of PMD_SIZE or more at a PMD-aligned address (the kernel's,
    or one it places by hand), smaller ones where the kernel chooses: the file's
    mapping alone, read only and shared; unmapped again by close()."""
    from mcsafe.cli import onecopy
    data = os.urandom(size)
    (src_folder / "src").write_bytes(data)
    fd = os.open(src_folder / "src", os.O_RDONLY)
    m = onecopy.SourceMap(fd, size)
    start, end = m.address, m.address + -(-size // PAGE) * PAGE
    try:
        assert m.address % onecopy.PMD_SIZE == 0 or size < onecopy.PMD_SIZE
        _check_mapping(src_folder, m.address, size, data, fd)
    finally:
        m.close()
        os.close(fd)
    assert not [line for line in _maps_of(start, end) if line.endswith(str(src_folder / "src"))]


@pytest.mark.parametrize("size", [1, PAGE, (3 << 20) + 5, 8 << 20])
def test_a_mapping_placed_by_hand_is_pmd_aligned_and_alone(tmp_path, size) -> None:
    """map_aligned(), where the kernel does not align SRC's mapping: PMD_SIZE more is
    reserved, the file mapped at the first aligned address inside, the rest given
    back."""
    from mcsafe._mcsafe import _unmap
    from mcsafe.cli import onecopy
    data = os.urandom(size)
    (tmp_path / "src").write_bytes(data)
    fd = os.open(tmp_path / "src", os.O_RDONLY)
    address = onecopy.map_aligned(fd, size)
    try:
        assert address % onecopy.PMD_SIZE == 0
        _check_mapping(tmp_path, address, size, data, fd)
    finally:
        _unmap(address, size)
        os.close(fd)


def test_an_empty_src_maps_nothing(tmp_path) -> None:
    from mcsafe.cli import onecopy
    (tmp_path / "src").write_bytes(b"")
    fd = os.open(tmp_path / "src", os.O_RDONLY)
    try:
        m = onecopy.SourceMap(fd, 0)
        assert m.address == 0
        m.close()
    finally:
        os.close(fd)


# -- address space: SRC is mapped once at a time ------------------------------------------------

def _resume_at_a_bad_page(f, folder: Path, size: int, todo: int, bad: int) -> tuple[Path, Path]:
    """f (a FailingFile) made size bytes, sparse, with its page at `bad` bad; a DST
    and a mapfile in folder that say all was rescued but the MiB from `todo`."""
    f.resize(size)
    f.set_bad([(bad, bad + PAGE)])
    dst, mapfile = folder / "dst", folder / "dst.map"
    with open(dst, "wb") as out:
        out.truncate(size)
    m = 1 << 20
    mapfile.write_text(f"{todo:#x}  ?  1\n0x0  {todo:#x}  +\n{todo:#x}  {m:#x}  ?\n"
                       f"{todo + m:#x}  {size - todo - m:#x}  +\n")
    return dst, mapfile


def _limited(limit: int) -> Callable[[], None]:
    return lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def test_a_failing_src_needs_no_more_address_space_than_its_size(failing_file, tmp_path) -> None:
    """RLIMIT_AS of SRC's size and 256 MiB (the interpreter needs about 20): SRC's
    mapping for the one-copy path is given back before MappedFile maps SRC for the
    bad page, so the rescue records it and ends (exit 1), where two mappings of
    SRC at once could not be made ("mmap: Cannot allocate memory; run again to go
    on", exit 2, on every run)."""
    size = 1 << 30
    todo = bad = size - (2 << 20)
    bad += 8 * PAGE
    f = failing_file(PAGE)
    dst, mapfile = _resume_at_a_bad_page(f, tmp_path, size, todo, bad)
    p = rescue("--no-sync", f.path, dst, preexec_fn=_limited(size + (256 << 20)))
    assert p.returncode == 1, p.stderr
    assert blocks(mapfile) == [(0, bad, "+"), (bad, PAGE, "-"),
                               (bad + PAGE, size - bad - PAGE, "+")]
    with open(dst, "rb") as out:
        assert os.pread(out.fileno(), 1 << 20, todo) == bytes(1 << 20)


def test_a_src_of_more_than_half_the_address_space_is_rescued(failing_file, tmpfs) -> None:
    """A 70 TiB SRC (sparse, on a tmpfs; x86-64 gives a process 128 TiB) with a bad page:
    it is mapped once, so the bad page is recorded (exit 1), not ENOMEM (exit 2)."""
    size, at = 70 << 40, 69 << 40
    folder = tmpfs("64m")
    f = failing_file(PAGE, dir=str(folder))
    dst, mapfile = _resume_at_a_bad_page(f, folder, size, at, at)
    p = rescue("--no-sync", f.path, dst)
    assert p.returncode == 1, p.stderr
    assert blocks(mapfile) == [(0, at, "+"), (at, PAGE, "-"), (at + PAGE, size - at - PAGE, "+")]


# -- the one-copy path's second thread (onecopy.Ahead) ----------------------------------------

def _threads() -> int:
    """How many Python threads this process runs (as threading joins a thread, the
    count goes down before the join returns; /proc/self/task may list the thread a
    moment longer, on its way out of pthread_exit)."""
    import _thread
    return _thread._count()


def _rss_kb(address: int) -> int:
    """The resident kB of this process's mapping that starts at address (smaps)."""
    with open("/proc/self/smaps") as f:
        lines = f.read().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{address:x}-"))
    return next(int(line.split()[1]) for line in lines[start + 1:]
                if line.startswith("Rss:"))


def _outcomes(monkeypatch) -> list[str]:
    """What each of Ahead's jobs said of the chunk it was given, as copy() takes it."""
    from mcsafe.cli import onecopy
    seen: list[str] = []
    real = onecopy.Ahead.result

    def result(self) -> str:
        value = real(self)
        if value:                       # ("" where no job was running)
            seen.append(value)
        return value
    monkeypatch.setattr(onecopy.Ahead, "result", result)
    return seen


def _warm(path: str, size: int) -> None:
    """Read every page of path that can be read, so that it is in the page cache."""
    fd = os.open(path, os.O_RDONLY)
    try:
        for offset in range(0, size, PAGE):
            try:
                os.pread(fd, PAGE, offset)
            except OSError:
                pass
    finally:
        os.close(fd)


@pytest.mark.parametrize("evicted", [False, True])
def test_a_chunk_the_second_thread_cannot_map_in_is_left_to_the_careful_path(
        failing_file, tmp_path, monkeypatch, evicted) -> None:
    """SRC (a FUSE file of three chunks and a bit, read once, so cached) fails with EIO
    at a page in its third chunk; the second thread maps in the second chunk while
    the first is written. The third has a page whose data is not in the page cache:
    the thread leaves it to the writing thread (a stop would otherwise wait for a
    read only the thread asked for), whose map-in fails. Where the page's absence
    is missed (evicted: it went between the thread's look and its map-in), the
    thread's own map-in fails. Either way copy() returns that chunk for the careful
    path before DST is touched for it (DST holds the first two chunks, SRC's bytes,
    and is no longer), the bad page is asked of the server as often as without the
    thread, the thread has ended, and no page of SRC is left mapped."""
    from mcsafe._mcsafe import _unmap
    from mcsafe.cli import onecopy
    chunk = onecopy.CHUNK
    size = 3 * chunk + 5 * PAGE
    f = failing_file(size, inject.page_ranges([(2 * chunk) // PAGE + 7]))
    data = f.contents()
    _warm(f.path, size)
    if evicted:
        monkeypatch.setattr(onecopy, "_read_already", lambda address, length: True)
    outcomes = _outcomes(monkeypatch)
    before = _threads()
    fd, address, size = mapped(f.path)
    out = os.open(tmp_path / "out", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        with monkeypatch.context() as alone:        # the reference: no second thread
            alone.setattr(onecopy.Ahead, "started", classmethod(lambda cls: False))
            asked = f.stats()["failed_reads"]
            assert onecopy.copy(fd, address, out, 0, size, lambda o, n: None,
                                lambda o, n: None, lambda d, t: None, lambda: size,
                                False) == (2 * chunk, 3 * chunk)
            alone_asked = f.stats()["failed_reads"] - asked
        os.ftruncate(out, 0)
        asked = f.stats()["failed_reads"]
        done: list[tuple[int, int]] = []
        got = onecopy.copy(fd, address, out, 0, size, lambda o, n: done.append((o, n)),
                           lambda o, n: None, lambda d, t: None, lambda: size, False)
        assert got == (2 * chunk, 3 * chunk)
        assert outcomes == [onecopy.MAPPED, onecopy.FAILED if evicted else onecopy.SKIPPED]
        assert done == [(0, chunk), (chunk, chunk)]
        assert os.fstat(out).st_size == 2 * chunk
        assert os.pread(out, size, 0) == data[:2 * chunk]
        assert f.stats()["failed_reads"] - asked == alone_asked > 0
        assert _threads() == before
        assert _rss_kb(address) == 0
    finally:
        os.close(out)
        _unmap(address, size)
        os.close(fd)


def test_a_stop_waits_for_no_read_only_the_second_thread_would_make(failing_file,
                                                                   tmp_path) -> None:
    """SRC (a FUSE file of four chunks, read once, so cached) has a bad page in its
    second chunk whose read the server holds, as a dying disk's slow sector or a
    server that does not answer. SIGINT comes while the first chunk is written (its
    write held in DST, a FUSE file): the rescue stops at once (exit 130, the first
    chunk finished in the mapfile, the rest non-tried), with the bad page not asked
    of the server again, as without the second thread; it does not wait for the
    held read (before the fix: until the server let it fail)."""
    from mcsafe.cli import onecopy
    chunk = onecopy.CHUNK
    size = 4 * chunk
    src = failing_file(size, inject.page_ranges([chunk // PAGE + 7]))
    _warm(src.path, size)
    dst = failing_file(PAGE)
    dst.resize(size)
    mapfile = tmp_path / "map"
    asked = src.stats()["failed_reads"]
    with src.holding_failed_reads():
        try:
            p, out, err = _rescue_held(dst, 0, lambda p: p.send_signal(signal.SIGINT),
                                       "--map", mapfile, src.path)
        finally:
            src.release()
    assert p.returncode == 128 + signal.SIGINT, err
    assert src.stats()["failed_reads"] == asked
    assert list(Mapfile.load(str(mapfile)).blocks()) == [(0, chunk, "+"), (chunk, size - chunk, "?")]


def test_an_interrupt_between_chunks_ends_the_second_thread_and_unmaps_src(
        tmp_path) -> None:
    """SIGINT (Python's own handler: KeyboardInterrupt) arrives while the first chunk's
    progress is told, the second thread mapping in the second: the interrupt goes
    out of copy() once the thread has ended and every page of SRC is unmapped;
    DST holds the first chunk, as without the thread."""
    from mcsafe._mcsafe import _unmap
    from mcsafe.cli import onecopy
    chunk = onecopy.CHUNK
    src = tmp_path / "src"
    data = os.urandom(4 * chunk)
    src.write_bytes(data)
    before = _threads()
    fd, address, size = mapped(str(src))
    out = os.open(tmp_path / "out", os.O_RDWR | os.O_CREAT, 0o600)
    alive: list[int] = []

    def progress(done: int, total: int) -> None:
        alive.append(_threads() - before)
        os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    try:
        with pytest.raises(KeyboardInterrupt):
            onecopy.copy(fd, address, out, 0, size, lambda o, n: None, lambda o, n: None,
                         progress, lambda: size, True)
        assert alive == [1]             # the second thread, while the first chunk's told
        assert _threads() == before
        assert _rss_kb(address) == 0
        assert os.pread(out, size, 0) == data[:chunk]
    finally:
        os.close(out)
        _unmap(address, size)
        os.close(fd)


def test_sigint_while_the_second_thread_maps_in_ends_the_rescue_as_without_it(
        failing_file, tmp_path) -> None:
    """SIGINT reaches the rescue while its write of SRC's second 16 MiB into DST (a FUSE
    file, in place) is held in the server, its second thread alive (mapping in the
    third): the signal is the writing thread's (the other blocks every signal), so
    the rescue stops after that write, as it did with one thread: exit 130, the
    first 32 MiB rescued and recorded, the rest not tried."""
    src = tmp_path / "src"
    data = os.urandom(64 << 20)
    src.write_bytes(data)
    dst = failing_file(PAGE)
    dst.resize(len(data))
    mapfile = tmp_path / "m.map"
    threads: list[int] = []

    def meanwhile(p: subprocess.Popen) -> None:
        threads.append(len(os.listdir(f"/proc/{p.pid}/task")))
        p.send_signal(signal.SIGINT)
    p, out, err = _rescue_held(dst, 16 << 20, meanwhile, "--map", mapfile, src)
    assert threads == [2]
    assert p.returncode == 128 + signal.SIGINT, err
    assert err == f"stopped by SIGINT: {32 << 20} bytes not tried yet; run again to go on\n"
    assert out.startswith(f"rescued {32 << 20} of {len(data)} bytes")
    assert blocks(mapfile) == [(0, 32 << 20, "+"), (32 << 20, 32 << 20, "?")]
    assert dst.contents() == data[:32 << 20] + bytes(32 << 20)


@pytest.mark.parametrize("bad_chunk", [1, 2])
def test_a_cached_failing_src_is_rescued_the_same_with_the_second_thread(
        failing_file, tmp_path, bad_chunk) -> None:
    """A FUSE SRC of three chunks and a bit, read once (all but its bad pages cached,
    so the second thread maps chunks in), with bad pages in its second or third
    chunk: rescued with the one-copy path and without it, the same exit, bytes,
    holes and mapfile, its bad blocks the pages read(2) fails on."""
    from mcsafe.cli import onecopy
    chunk = onecopy.CHUNK
    size = 3 * chunk + 123
    pages = [bad_chunk * chunk // PAGE + 3, bad_chunk * chunk // PAGE + 1000]
    bad = inject.page_ranges(pages)
    f = failing_file(size, bad)
    with open(f.path, "rb", buffering=0) as src:
        for offset in range(0, size, PAGE):
            if offset // PAGE not in pages:
                assert len(src.read(PAGE) if src.seek(offset) == offset else b"") > 0
    runs = {}
    for switch in ("1", "0"):
        out = tmp_path / f"out{switch}"
        p = rescue(f.path, out, env={**os.environ, onecopy.SWITCH: switch})
        runs[switch] = (p.returncode, out.read_bytes(), _data_extents(out),
                        _without_comments(Path(str(out) + ".map")))
    assert runs["1"] == runs["0"]
    assert runs["1"][0] == 1
    assert Mapfile.load(str(tmp_path / "out1.map")).ranges("-") == bad


def test_a_wait_for_the_second_thread_survives_an_interrupt_just_after_it_ended() -> None:
    """onecopy._wait: a signal handler that raises (SIGALRM -> KeyboardInterrupt here)
    just after acquire() took the lock, as CPython runs pending handlers right after
    the call returns, must not make the wait ask for the lock again (which it holds:
    a wait for ever). A thousand trials in a child, each a lock released by another
    thread that signals the process at once: the child ends."""
    script = textwrap.dedent("""
        import _thread, os, signal, threading, time
        from mcsafe.cli import onecopy
        def boom(*_):
            raise KeyboardInterrupt
        signal.signal(signal.SIGALRM, boom)
        raised = 0
        for i in range(1000):
            lock = _thread.allocate_lock(); lock.acquire(); over = [False]; gone = [False]
            def other():
                time.sleep(0.0005)
                over[0] = True
                lock.release()
                os.kill(os.getpid(), signal.SIGALRM)
                gone[0] = True
            try:
                _thread.start_new_thread(other, ())
                onecopy._wait(lock, lambda: over[0])
            except KeyboardInterrupt:
                raised += 1
            while not gone[0]:                  # (an interrupt here is the harness's)
                try:
                    time.sleep(0.0001)
                except KeyboardInterrupt:
                    pass
        print(raised)
    """)
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=WAIT)
    assert p.returncode == 0, p.stderr
    assert 0 < int(p.stdout) <= 1000      # the interrupts were raised, once the wait was over


def test_a_chunk_being_written_when_written_raises_is_unmapped(tmp_path) -> None:
    """written() (the mapfile's periodic save) raises after the first chunk's write:
    copy() raises it with no page of SRC left mapped (the chunk written, the one the
    second thread mapped in) and the thread ended."""
    from mcsafe._mcsafe import _unmap
    from mcsafe.cli import onecopy
    chunk = onecopy.CHUNK
    src = tmp_path / "src"
    src.write_bytes(os.urandom(3 * chunk))
    src.read_bytes()                                # cached: the thread takes chunk 2
    before = _threads()
    fd, address, size = mapped(str(src))
    out = os.open(tmp_path / "out", os.O_RDWR | os.O_CREAT, 0o600)

    def written(offset: int, n: int) -> None:
        raise OSError(28, "No space left on device")

    try:
        with pytest.raises(OSError, match="No space"):
            onecopy.copy(fd, address, out, 0, size, written, lambda o, n: None,
                         lambda d, t: None, lambda: size, False)
        assert _threads() == before
        assert _rss_kb(address) == 0
    finally:
        os.close(out)
        _unmap(address, size)
        os.close(fd)


def test_the_one_copy_path_of_a_fuse_src_cut_behind_the_kernel_copies_what_pread_reads(
        failing_file, tmp_path) -> None:
    """Another client cuts SRC in the server once its size was asked, in a page the
    kernel has not cached (the pages after it cached): the kernel learns of the
    cut from that page's short READ (zero-filled from the cut, no page unmapped).
    DST gets exactly what pread(2) reads of SRC then, nothing past the cut; the
    rest is handed to the careful path."""
    from mcsafe.cli import onecopy
    size = 64 * PAGE
    data = (bytes(range(1, 256)) * 1100)[:size]
    q = 52
    cut = q * PAGE + 60
    f = failing_file(data)
    with open(f.path, "rb") as whole:                   # every page cached
        assert whole.read() == data
    fd = os.open(f.path, os.O_RDONLY)
    dfd = os.open(tmp_path / "dst", os.O_RDWR | os.O_CREAT)
    try:
        os.posix_fadvise(fd, q * PAGE, PAGE, os.POSIX_FADV_DONTNEED)
        source = onecopy.SourceMap(fd, os.lseek(fd, 0, os.SEEK_END))
        os.truncate(f.backing, cut)
        try:
            written: list[tuple[int, int]] = []
            got = onecopy.copy(fd, source.address, dfd, 0, size,
                               lambda at, n: written.append((at, n)), lambda at, n: None,
                               lambda at, end: None, lambda: os.lseek(fd, 0, os.SEEK_END),
                               False)
        finally:
            source.close()
        ref = os.pread(fd, size, 0)
    finally:
        os.close(fd)
        os.close(dfd)
    assert ref == data[:cut]
    assert (got, written) == ((cut, size), [(0, cut)])
    assert (tmp_path / "dst").read_bytes() == ref
