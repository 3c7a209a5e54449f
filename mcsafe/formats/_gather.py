"""Reading a regular grid of byte runs out of a file (a slice of a tensor): where
runs lie closer than a page, the span that holds them is read at once and the runs
gathered from it by a strided view (every page of such a span holds bytes the slice
needs, so a bad page there is one it needs too); elsewhere run by run. Either way
no page that the slice does not need is read."""

from __future__ import annotations

import itertools
from typing import Any, Callable

from extable.errors import missing_extra

try:
    import numpy as np
    from numpy.lib.stride_tricks import as_strided
except ModuleNotFoundError as _exc:
    raise missing_extra(_exc, "numpy", "mcsafe.formats", "numpy") from None

from ._read import Stopped

SPAN = 16 << 20                 # the most bytes read at once into a temporary buffer


def gather(fill: Callable[[Any, int], None], out: Any, base: int, run: int,
           walked: list[tuple[int, int]], page: int) -> None:
    """Fill `out` (a 1-D uint8 array) with the runs of `run` bytes at file offsets
    base + sum(i * step) over the walked axes ((length, step), outermost first), in
    C order. `fill(buffer, offset)` reads exactly or raises Stopped; a Stopped from a
    span read names the first byte of a run at or after where it stopped."""
    if not run or not out.size:
        return
    m = len(walked)
    # The innermost walked axes whose blocks lie closer than a page are gathered
    # from one read; the next one out, if its blocks are close too but its span is
    # too large, in chunks; the rest are walked here.
    g, extent = 0, run
    while g < m:
        length, step = walked[m - 1 - g]
        whole = (length - 1) * step + extent
        if step - extent >= page or whole > SPAN:
            break
        g, extent = g + 1, whole
    chunked = g < m and walked[m - 1 - g][1] - extent < page
    outer = walked[:m - g - chunked]
    inner = walked[m - g:]
    if not g and not chunked:
        _runs(fill, out, base, run, outer)
        return
    shape = [n for n, _ in inner] + [run]
    strides = [s for _, s in inner] + [1]
    head = [n for n, _ in outer]
    length, step = walked[m - 1 - g] if chunked else (1, 0)
    per = max(1, (SPAN - extent) // step + 1) if chunked else 1
    grid = out.reshape(head + [length] + shape)
    for index in itertools.product(*map(range, head)):
        at = base + sum(i * s for i, (_, s) in zip(index, outer))
        for c in range(0, length, per):
            n = min(per, length - c)
            first = at + c * step
            span = np.empty((n - 1) * step + extent, np.uint8)
            try:
                fill(span, first)
            except Stopped as stop:
                raise _needed(stop, first, [(n, step)] + inner, run) from None
            grid[index + (slice(c, c + n),)] = as_strided(span, [n] + shape, [step] + strides)


def _runs(fill: Callable[[Any, int], None], out: Any, base: int, run: int,
          walked: list[tuple[int, int]]) -> None:
    """Run by run, each read straight into its place."""
    offsets = np.array([base], dtype=np.int64)
    for length, step in reversed(walked):
        offsets = (np.arange(length, dtype=np.int64)[:, None] * step + offsets[None, :])
        offsets = offsets.ravel()
    for i, at in enumerate(offsets.tolist()):
        fill(out[i * run:(i + 1) * run], at)


def _needed(stop: Stopped, first: int, walked: list[tuple[int, int]], run: int) -> Stopped:
    """A span's read stopped at a byte between runs: name the first byte of a run at
    or after it instead (on the same page: the gaps are shorter than a page)."""
    offsets = np.array([first], dtype=np.int64)
    for length, step in reversed(walked):
        offsets = (np.arange(length, dtype=np.int64)[:, None] * step + offsets[None, :]).ravel()
    at = stop.fault.offset
    i = int(np.searchsorted(offsets + run, at, side="right"))
    if i < len(offsets) and offsets[i] > at:
        stop.fault = stop.fault._replace(offset=int(offsets[i]))
    return stop
