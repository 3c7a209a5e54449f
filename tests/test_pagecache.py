"""mcsafe.pagecache.all_cached (cachestat(2)) against mincore(2), the per-page oracle,
asked about the same file at the same moment."""

from __future__ import annotations

import os
import tempfile

from hypothesis import given, settings
from hypothesis import strategies as st
from test_mapped_scrub import PAGE, _resident_of, evict, written

from mcsafe._mcsafe import _cached
from mcsafe.pagecache import all_cached

PAGES = 1024                            # 4 MiB: several large folios of a file written at once


@settings(max_examples=25, deadline=None)
@given(evicted=st.lists(st.tuples(st.integers(0, PAGES - 1), st.integers(1, 512)), max_size=4),
       asked=st.lists(st.tuples(st.integers(0, PAGES * PAGE - 1), st.integers(1, PAGES * PAGE)),
                      min_size=1, max_size=8))
def test_all_cached_agrees_with_mincore(evicted, asked) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "f")
        written(path, PAGES * PAGE)
        for first, n in evicted:
            evict(path, first * PAGE, n * PAGE)
        fd = os.open(path, os.O_RDONLY)
        try:
            resident = _resident_of(fd, PAGES * PAGE)
            for offset, length in asked:
                length = min(length, PAGES * PAGE - offset)
                pages = resident[offset // PAGE:-(-(offset + length) // PAGE)]
                assert all_cached(fd, offset, length) == all(pages), (offset, length)
                # the C call under it counts the pages the range touches, from any offset
                assert _cached(fd, offset, length) == all(pages), (offset, length)
        finally:
            os.close(fd)


def test_a_file_all_cached_and_one_evicted_from() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "f")
        written(path, PAGES * PAGE)
        with open(path, "rb") as f:
            assert len(f.read()) == PAGES * PAGE
        fd = os.open(path, os.O_RDONLY)
        try:
            assert all_cached(fd, 0, PAGES * PAGE)
            evict(path)
            assert not all_cached(fd, 0, PAGES * PAGE) and not all_cached(fd, 100, 1)
        finally:
            os.close(fd)


def test_cached_counts_every_page_an_unaligned_range_touches() -> None:
    """[100, 100 + PAGE) touches two pages: with the second evicted it is not all
    cached, although one page's worth of it is (main: True)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "f")
        written(path, 4 * PAGE)
        evict(path, 0, 4 * PAGE)
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)     # no readahead
            os.pread(fd, 1, 0)
            assert bytes(_resident_of(fd, 4 * PAGE)[:2]) == b"\1\0"
            assert not _cached(fd, 100, PAGE)
            assert _cached(fd, 100, PAGE - 100)
        finally:
            os.close(fd)
