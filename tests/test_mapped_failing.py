"""MappedFile on files that fail for real (a FUSE file whose bad pages fail for every
reader): a bad page is a bad page whatever else the file does meanwhile, and is
never mistaken for the end of the file (issue 18, item 1)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap

import pytest

from mcsafe import MappedFile, MemoryFaultError, fileio, inject

PAGE = inject.PAGE
BAD = 5                                  # the bad page of a 16-page file
CHANGES = {"none": {}, "append": {"append": b"a" * 64},
           "rewrite page 0": {"write": (b"r" * PAGE, 0)},
           "extend": {"truncate": 32 * PAGE}}


def changing(f, change: str):
    """While the block runs, every failing read first makes `change` to the file."""
    if change == "none":
        import contextlib
        return contextlib.nullcontext()
    return f.on_failed_read(**CHANGES[change])


@pytest.mark.parametrize("change", list(CHANGES))
def test_a_bad_page_is_bad_while_the_file_changes(failing_file, change: str) -> None:
    f = failing_file(16 * PAGE, inject.page_ranges([BAD]))
    data = inject.pattern(16 * PAGE)
    with MappedFile(f.path) as mf, changing(f, change):
        with pytest.raises(MemoryFaultError) as exc:
            mf.readinto(bytearray(PAGE), BAD * PAGE)
        assert (exc.value.errno, exc.value.offset, exc.value.cause) == \
            (errno.EIO, BAD * PAGE, "io")
        assert mf.bad_ranges() == [(BAD * PAGE, (BAD + 1) * PAGE)]
        buf = bytearray(PAGE)
        assert mf.readinto(buf, 20380) == BAD * PAGE - 20380           # 100: short before
        assert buf[:100] == data[20380:BAD * PAGE]
        assert mf.readinto(buf, 16392) == BAD * PAGE - 16392           # 4088
        asked = f.stats()["failed_reads"]
        with pytest.raises(MemoryFaultError):                           # remembered:
            mf.readinto(buf, BAD * PAGE + 10)
        assert f.stats()["failed_reads"] == asked                      # not asked again
    assert f.size >= 16 * PAGE


@pytest.mark.parametrize("change", list(CHANGES))
def test_a_stream_raises_at_the_bad_page_instead_of_ending(failing_file, change: str) -> None:
    f = failing_file(16 * PAGE, inject.page_ranges([BAD]))
    with changing(f, change), fileio.open(f.path) as stream:
        with pytest.raises(MemoryFaultError) as exc:
            stream.read()
        assert exc.value.offset == BAD * PAGE


@pytest.mark.parametrize("change", list(CHANGES))
def test_a_write_into_a_bad_page_raises_instead_of_efbig(failing_file, change: str) -> None:
    f = failing_file(16 * PAGE, inject.page_ranges([BAD]))
    with MappedFile(f.path, "r+") as mf, changing(f, change):
        with pytest.raises(MemoryFaultError) as exc:
            mf.write(b"w" * 10, BAD * PAGE + 4)
        assert (exc.value.errno, exc.value.side) == (errno.EIO, "dst")
        assert mf.write(b"w" * PAGE, BAD * PAGE - 8) == 8                # short before it
    with changing(f, change), fileio.open(f.path, "rb+", buffering=0) as raw:
        raw.seek(BAD * PAGE)
        with pytest.raises(MemoryFaultError):
            raw.write(b"x")


def test_a_cut_below_the_faulting_page_is_the_end_of_the_file(failing_file) -> None:
    """The other side of the rule: a page the file no longer reaches is no bad page."""
    f = failing_file(16 * PAGE, inject.page_ranges([BAD]))
    with MappedFile(f.path) as mf, f.on_failed_read(truncate=3 * PAGE):
        assert mf.size == 16 * PAGE
        assert mf.readinto(bytearray(PAGE), BAD * PAGE) == 0
        assert mf.bad_ranges() == []
        assert mf.readinto(bytearray(4 * PAGE), 2 * PAGE) == PAGE


def test_a_cut_above_the_offset_is_not_the_end_of_the_file(failing_file) -> None:
    """A read from inside the page before the bad one, and the file cut (by another
    client, as the page fails) to 1,000 bytes past the read's offset: the file
    never ended at the offset, so the answer is what pread(2) reads now, not 0."""
    f = failing_file(16 * PAGE, inject.page_ranges([BAD]))
    offset, cut = (BAD - 1) * PAGE + 1000, (BAD - 1) * PAGE + 2000
    with MappedFile(f.path) as mf, f.on_failed_read(truncate=cut):
        buf = bytearray(2 * PAGE)
        assert mf.readinto(buf, offset) == 1000
        assert buf[:1000] == inject.pattern(16 * PAGE)[offset:cut]
        assert mf.bad_ranges() == []


APPENDER = """
    import os, sys
    fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND)
    print("ready", flush=True)
    while True:                       # until killed
        os.write(fd, b"x" * 64)
"""


def test_a_bad_page_is_bad_under_another_process_appending(failing_file) -> None:
    """No instrumentation: another process appends as fast as it can while the same
    calls run a fixed number of times; every one of them must see the bad page."""
    f = failing_file(16 * PAGE, inject.page_ranges([BAD]))
    writer = subprocess.Popen([sys.executable, "-c", textwrap.dedent(APPENDER), f.path],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline() == "ready\n"
        for _ in range(100):
            with MappedFile(f.path) as mf:          # a new object: nothing remembered
                with pytest.raises(MemoryFaultError):
                    mf.readinto(bytearray(PAGE), BAD * PAGE)
            with MappedFile(f.path) as mf:
                assert mf.readinto(bytearray(PAGE), 16392) == BAD * PAGE - 16392
    finally:
        writer.kill()
        writer.wait()


def test_other_readers_agree_with_mapped_file(failing_file) -> None:
    """The reference: os.pread and built-in open() on the same file at the same time."""
    f = failing_file(16 * PAGE, inject.page_ranges([BAD]))
    fd = os.open(f.path, os.O_RDONLY)
    try:
        with MappedFile(f.path) as mf:
            for offset, n in ((0, 16 * PAGE), (16392, PAGE), (20380, PAGE), (BAD * PAGE, 1),
                              (6 * PAGE, 10 * PAGE), (16 * PAGE - 5, 100)):
                try:
                    want: bytes | int = os.pread(fd, n, offset)
                except OSError as exc:
                    want = exc.errno
                try:
                    got: bytes | int = mf.read(n, offset)
                except MemoryFaultError as exc:
                    got = exc.errno
                assert got == want, (offset, n)
    finally:
        os.close(fd)


HANG = 30.0     # seconds a held stat waits at most: a deadline, never a pace


@pytest.mark.parametrize("offset", [5 * PAGE, 16 * PAGE - 100])
def test_a_hung_server_stops_only_the_reading_thread(failing_file, offset: int) -> None:
    """The size a FUSE read asks (a GETATTR) waits for a server that hangs; the
    other threads run meanwhile, as they do while os.pread waits (the GIL is
    released around the question). The main thread below runs Python while the
    reader's GETATTR is held: without the release it could not run until the
    server gave up the hold (HANG), and would see none waiting."""
    import threading
    f = failing_file(16 * PAGE)
    data = inject.pattern(16 * PAGE)
    with MappedFile(f.path) as mf:
        assert mf.read(16 * PAGE) == data                  # every page mapped
        buf = bytearray(100)
        got: list[int] = []
        with f.holding_getattrs(HANG):
            reader = threading.Thread(target=lambda: got.append(mf.readinto(buf, offset)))
            reader.start()
            waiting = f.wait_for_held_getattr(HANG)
        reader.join(HANG)
        assert waiting == 1, "the main thread ran only once the held GETATTR had ended"
        assert (got, bytes(buf)) == ([100], data[offset:offset + 100])


def test_a_fuse_read_asks_the_server_twice_as_often_as_pread(failing_file) -> None:
    """A read asks the file's size before its copy, as pread(2) does (so another
    client's write is seen), and after it (so a cut during it is): two GETATTRs
    (attr_timeout=0) where pread(2) sends one, and no more."""
    f = failing_file(8 * PAGE)
    data = inject.pattern(8 * PAGE)
    buf = bytearray(100)
    with MappedFile(f.path) as mf:
        assert mf.read(8 * PAGE) == data                   # every page cached
        fd = os.open(f.path, os.O_RDONLY)
        try:
            asked = {}
            for name, read in (("mapped", mf.readinto), ("pread", lambda b, at: os.preadv(fd, [b], at))):
                before = f.stats()["getattrs"]
                for at in (0, 100, 3 * PAGE - 50, 8 * PAGE - 100):
                    assert (read(buf, at), bytes(buf)) == (100, data[at:at + 100])
                asked[name] = f.stats()["getattrs"] - before
        finally:
            os.close(fd)
    assert asked["mapped"] == 2 * asked["pread"] == 8
