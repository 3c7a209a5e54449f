"""The parity harness (issue 18, item 3): random sequences of reads, writes, cuts,
extensions and pages going bad (in the FUSE server: another process), each result
of MappedFile and its adapters compared with the reference on the same file at
the same moment: os.pread, built-in open(), numpy.fromfile, and os.pwrite on a
twin file that lives through the same history.

The differences allowed are docs/howto/storage.md's ("Where it differs from pread(2)"),
each named where the comparison makes it:

1. remembered: a page MappedFile has met bad stays bad for the object's life (a
   bad-block list), where read(2) asks the disk again;
2. never extends: a write at or past the end counts only the bytes before the end,
   where pwrite(2) extends the file;
3. never short: read_array raises where the file ends or a page is bad inside the
   request, where numpy.fromfile returns fewer items without a word.
"""

from __future__ import annotations

import contextlib
import errno
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant, precondition,
                                 rule, run_state_machine_as_test)

from mcsafe import MappedFile, MemoryFaultError, fileio, inject

PAGE = inject.PAGE
PAGES = 12                                      # the files stay within this many pages
offsets = st.integers(0, PAGES * PAGE + 100)
lengths = st.integers(0, 3 * PAGE)


def outcome(call) -> bytes | int | tuple[str, int]:
    """What a call gave: its bytes or count, or ('error', errno)."""
    try:
        return call()
    except OSError as exc:
        return ("error", exc.errno)


class Backing:
    """Two files with the same history: `mapped` (read and written by MappedFile) and
    `twin` (written by os.pwrite), each resizable and with bad ranges if FUSE."""

    def __init__(self, kind: str, tmp_path, failing_file) -> None:
        self.kind = kind
        if kind == "fuse":
            self.files = [failing_file(b""), failing_file(b"")]
            self.paths = [f.path for f in self.files]
        else:
            self.files = []
            self.paths = [str(tmp_path / "mapped"), str(tmp_path / "twin")]

    def reset(self, data: bytes) -> None:
        for i, path in enumerate(self.paths):
            if self.files:
                self.files[i].set_bad([])
                self.files[i].resize(0)
                self.files[i].write(data, 0)
            else:
                with open(path, "wb") as f:
                    f.write(data)

    def resize(self, size: int) -> None:
        for i, path in enumerate(self.paths):
            if self.files:
                self.files[i].resize(size)
            else:
                os.truncate(path, size)

    def set_bad(self, pages: list[int]) -> None:
        for f in self.files:
            f.set_bad(inject.page_ranges(pages))

    def contents(self, i: int) -> bytes:
        if self.files:
            return self.files[i].contents()
        with open(self.paths[i], "rb") as f:
            return f.read()


class Parity(RuleBasedStateMachine):
    backing: Backing

    def __init__(self) -> None:
        super().__init__()
        self.mf: MappedFile | None = None
        self.fds: list[int] = []
        self.bad: set[int] = set()

    @initialize(data=st.binary(min_size=0, max_size=6 * PAGE))
    def start(self, data: bytes) -> None:
        self.backing.reset(data)
        self.mf = MappedFile(self.backing.paths[0], "r+")
        self.fds = [os.open(p, os.O_RDWR) for p in self.backing.paths]

    def teardown(self) -> None:
        if self.mf is not None:
            self.mf.close()
        for fd in self.fds:
            os.close(fd)

    # -- what the others do to the file ------------------------------------------

    @rule(size=st.integers(0, PAGES * PAGE))
    def resize(self, size: int) -> None:
        self.backing.resize(size)

    @precondition(lambda self: self.backing.kind == "fuse")
    @rule(pages=st.sets(st.integers(0, PAGES - 1), max_size=3))
    def pages_go_bad(self, pages: set[int]) -> None:
        self.backing.set_bad(sorted(pages))
        self.bad = set(pages)

    # -- the comparisons -----------------------------------------------------

    def remembered_cut(self, offset: int, want: bytes | int | tuple[str, int]
                       ) -> bytes | int | tuple[str, int]:
        """Difference 1: the reference's result cut at a page MappedFile remembers."""
        assert self.mf is not None
        if want == b"":
            return want                 # nothing asked: nothing touched
        for start, end in self.mf.bad_ranges():
            if end <= offset:
                continue
            if start <= offset:
                return ("error", errno.EIO)
            if isinstance(want, bytes) and offset + len(want) > start:
                return want[:start - offset]
            break
        return want

    @rule(offset=offsets, n=lengths)
    def read(self, offset: int, n: int) -> None:
        assert self.mf is not None
        buf = bytearray(n)

        def mapped() -> bytes:
            return bytes(buf[:self.mf.readinto(buf, offset)])        # type: ignore[union-attr]
        got = outcome(mapped)
        want = self.remembered_cut(offset, outcome(lambda: os.pread(self.fds[0], n, offset)))
        assert got == want, (offset, n, self.mf.bad_ranges())
        if isinstance(got, tuple):
            assert isinstance(got, tuple) and got[1] == errno.EIO

    @precondition(lambda self: self.backing.kind == "fuse")
    @rule(offset=offsets, n=lengths, grow=st.integers(1, PAGE))
    def read_while_another_client_appends(self, offset: int, n: int, grow: int) -> None:
        """Every read the server fails first appends to the file (as another client
        of a network file system would): a bad page must still be a bad page."""
        assert self.mf is not None
        fuse = self.backing.files[0]
        before = fuse.size
        buf = bytearray(n)
        with fuse.on_failed_read(append=b"g" * grow):
            got = outcome(lambda: bytes(buf[:self.mf.readinto(buf, offset)]))  # type: ignore
        want = self.remembered_cut(offset, outcome(lambda: os.pread(self.fds[0], n, offset)))
        # The append may come during the call (the kernel's READ ahead of it fails):
        # then the call may stop at the size it asked as it began, where pread(2)
        # begun with it would stop too (a FUSE file is not probed: no page of it was
        # read ahead at open).
        if isinstance(got, bytes) and isinstance(want, bytes) and got != want:
            assert want.startswith(got) and offset + len(got) == before, \
                (offset, n, len(got), len(want), before, self.mf.bad_ranges())
        else:
            assert got == want, (offset, n, self.mf.bad_ranges())
        grown = fuse.contents()[before:]
        if grown:                       # the twin lives through the same history, made
            with open(self.backing.files[1].backing, "r+b") as twin:     # the same way
                twin.seek(before)
                twin.write(grown)

    @precondition(lambda self: self.backing.kind == "fuse")
    @rule(offset=offsets, n=lengths, cut=st.integers(0, PAGES * PAGE))
    def read_while_another_client_cuts(self, offset: int, n: int, cut: int) -> None:
        """Every read the server fails first cuts (or extends) the file to `cut`: the
        call may count what it read before the cut, but never fewer bytes than
        the file holds after it (the file never ended before that), and only
        bytes that were the file's."""
        assert self.mf is not None
        fuse = self.backing.files[0]
        before = fuse.contents()
        buf = bytearray(n)
        with fuse.on_failed_read(truncate=cut):
            got = outcome(lambda: bytes(buf[:self.mf.readinto(buf, offset)]))  # type: ignore
        after = self.remembered_cut(offset, outcome(lambda: os.pread(self.fds[0], n, offset)))
        if isinstance(got, bytes):
            assert got == before[offset:offset + len(got)], (offset, n, cut)
            assert not isinstance(after, bytes) or len(got) >= len(after), \
                (offset, n, cut, len(got), len(after), self.mf.bad_ranges())
        else:
            assert got == ("error", errno.EIO) and after == got, (offset, n, cut, after)
        if fuse.size != os.fstat(self.fds[1]).st_size:     # the twin lives the same history
            os.truncate(self.backing.paths[1], fuse.size)

    @rule(offset=offsets, data=st.binary(min_size=1, max_size=2 * PAGE))
    def write(self, offset: int, data: bytes) -> None:
        assert self.mf is not None
        size = os.fstat(self.fds[1]).st_size
        # difference 2: never extends the file (pwrite(2) of what lies before the end);
        # difference 1: nor writes a page it remembers bad
        fits = self.remembered_cut(offset, data[:max(0, size - offset)])
        if isinstance(fits, bytes):
            want = outcome(lambda: os.pwrite(self.fds[1], fits, offset)) if fits else 0
        else:
            want = fits
        got = outcome(lambda: self.mf.write(data, offset))          # type: ignore[union-attr]
        assert got == want, (offset, len(data), size, self.mf.bad_ranges())

    @rule(offset=offsets)
    def stream(self, offset: int) -> None:
        """fileio.open() (a fresh MappedFile: nothing remembered) and built-in open()."""
        def read(opener):
            def call() -> bytes:
                with opener(self.backing.paths[0], "rb") as f:
                    f.seek(offset)
                    return f.read()
            return call
        assert outcome(read(fileio.open)) == outcome(read(open))

    @rule(offset=offsets, count=st.integers(-1, 3 * PAGE // 4))
    def array(self, offset: int, count: int) -> None:
        assert self.mf is not None
        try:
            got = self.mf.read_array(np.int32, count, offset)
        except MemoryFaultError as exc:
            got = exc
        if count == -1 and offset >= self.mf.size:
            return      # numpy.fromfile: "negative dimensions"; read_array: empty
        want = outcome(lambda: np.fromfile(self.backing.paths[0], np.int32, count,
                                           offset=offset))
        if isinstance(got, MemoryFaultError):
            # difference 3 (or 1): never short, where fromfile returns fewer items
            items = max(0, self.mf.size - offset) // 4 if count == -1 else count
            assert got.errno == errno.EIO
            assert isinstance(want, np.ndarray) and len(want) < items \
                or self.remembered_cut(offset, b"\0" * items * 4) != b"\0" * items * 4, \
                (offset, count, got)
            return
        assert isinstance(want, np.ndarray) and np.array_equal(got, want), (offset, count)

    # -- what must always hold --------------------------------------------------------

    @invariant()
    def same_history(self) -> None:
        if self.mf is not None:
            self.mf.sync()
            assert self.backing.contents(0) == self.backing.contents(1)

    @invariant()
    def remembers_only_pages_that_went_bad(self) -> None:
        if self.mf is not None and self.backing.kind == "plain":
            assert self.mf.bad_ranges() == []


@pytest.mark.parametrize("kind", ["plain", "fuse"])
def test_mapped_file_and_its_adapters_agree_with_the_references(kind, tmp_path, failing_file
                                                                ) -> None:
    class Run(Parity):
        backing = Backing(kind, tmp_path, failing_file)
    run_state_machine_as_test(Run, settings=settings(
        max_examples=100, stateful_step_count=25, deadline=None,
        suppress_health_check=[HealthCheck.too_slow]))
