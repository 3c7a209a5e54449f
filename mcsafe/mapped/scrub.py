"""scrub(): read a file (or a range of it) once, finding every bad range, in bounded
memory; optionally handing the bytes read to a sink, skipping holes, and giving
back the page cache it brought in."""

from __future__ import annotations

import os

from .._types import MemoryFaultError
from ..pagecache import Restorer, readahead, sees_cache
from ._sys import PAGE, next_data
from .badranges import BadRanges
from .careful import Careful
from .mapping import Window

TYPE_CHECKING = False      # (typing: type checkers only)
if TYPE_CHECKING:
    from typing import Callable

    from typing_extensions import Buffer

    Sink = Callable[[int, "memoryview | int"], object]

SCRUB_CHUNK = 16 << 20      # pages dropped per madvise: measured 8-13% faster than 4 MiB
                            # (fewer TLB shootdowns), 32 MiB no better; 1 MiB costs 15%
SCRUB_BUF = 256 << 10       # the pieces a scrub hands to its sink: fits L2, so the copy
                            # in and the sink's pwrite out are both cached (1 GiB through
                            # pwrite: 793 ms against 950 with 1 MiB, 859 with 128 KiB)


def scrub(window: Window, bad: BadRanges, careful: Careful, read: Callable[[Buffer, int], int],
          progress: Callable[[int, int], object] | None, start: int, end: int | None,
          sink: Sink | None, skip_holes: bool, restore_cache: bool) -> list[tuple[int, int]]:
    """Read [start, end) of the file (known bad ranges skipped untouched, each page
    that faults judged by the careful read path, which remembers it, the pages
    read dropped from this process as it goes): every byte loaded and nothing
    stored (the scan) or, with a sink, through read() (MappedFile.readinto: exact
    counts) a piece at a time. Returns every bad range."""
    buf = bytearray(SCRUB_BUF if sink is not None else PAGE)
    offset = start
    stop = window.refresh()
    if end is not None:
        stop = min(stop, end)
    keeper = Restorer(window.fd, max(SCRUB_CHUNK, readahead(window.fd))) \
        if restore_cache and sees_cache(window.fd) else None
    while offset < stop:
        window.check_open()                         # close() in another thread: stop
        known = bad.at_or_after(offset)
        if known is not None and known[0] <= offset:
            offset = known[1]                       # known bad: skip, untouched
        else:
            data, data_end = next_data(window.fd, offset, stop) if skip_holes else \
                (offset, stop)
            if data > offset:                       # a hole, or the file cut short
                stop = min(stop, window.refresh())
                if sink is not None and min(data, stop) > offset:
                    sink(offset, min(data, stop) - offset)
                offset = max(offset, min(data, stop))
            else:
                n = min(SCRUB_CHUNK, data_end - offset)
                if known is not None:
                    n = min(n, known[0] - offset)
                first = offset
                if keeper is not None:
                    keeper.before(window.map.address, offset, n, stop)
                if sink is None:
                    offset, stop = _chunk(window, bad, careful, buf, offset, n, stop)
                else:
                    offset, stop = _chunk_into(window, bad, read, buf, offset, n, stop, sink)
                if keeper is not None:
                    keeper.after(first, offset - first)
        if progress is not None:
            progress(min(offset, stop), stop)
    return bad.ranges()


def _chunk(window: Window, bad: BadRanges, careful: Careful, buf: bytearray, offset: int,
           n: int, stop: int) -> tuple[int, int]:
    """Scan [offset, offset + n) (buf: a page for the careful read of a page that
    faulted): the offset reached (past a page that faulted) and where the scrub
    stops now."""
    res = window.scan(offset, n)
    if isinstance(res, int):
        window.drop(offset, res)
        if res < n:                                 # the file shrank under us
            stop = min(stop, window.refresh())
        return offset + res, stop
    assert res.fault is not None
    window.drop(offset, res.copied)
    offset += res.copied
    rest_of_page = memoryview(buf)[:PAGE - offset % PAGE]
    try:
        careful.read(rest_of_page, offset, 0, res.fault)
    except MemoryFaultError:                        # remembered as a bad page
        pass
    stop = min(stop, window.refresh())
    known = bad.at_or_after(offset)
    if offset < stop and (known is None or known[0] > offset):
        offset = offset // PAGE * PAGE + PAGE       # always move on
    return offset, stop


def _chunk_into(window: Window, bad: BadRanges, read: Callable[[Buffer, int], int],
                buf: bytearray, offset: int, n: int, stop: int, sink: Sink) -> tuple[int, int]:
    """Read [offset, offset + n) a buffer at a time with read() (exact counts) and
    hand the bytes to sink; stop early at a bad page (which read() remembers: the
    scrub skips it next) or the end of the file."""
    view = memoryview(buf)
    first, end = offset, offset + n
    try:
        while offset < end:
            piece = view[:min(len(view), end - offset)]
            try:
                got = read(piece, offset)
            except MemoryFaultError:
                known = bad.at_or_after(offset)
                if known is None or known[0] > offset:
                    raise                   # not the file's (EFAULT): not ours to skip
                break
            if got:
                sink(offset, piece[:got])
            offset += got
            if got < len(piece):
                stop = min(stop, window.refresh())
                known = bad.at_or_after(offset)
                if got == 0 and offset < stop and (known is None or known[0] > offset):
                    # cut and written again under every try: pass the page over
                    offset = offset // PAGE * PAGE + PAGE
                break
    finally:
        window.drop(first, offset - first)
    return offset, stop
