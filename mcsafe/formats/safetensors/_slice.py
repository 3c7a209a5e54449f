"""get_slice's indexing, as the safetensors package (0.8) defines it, and the byte runs
of the file a slice needs.

What the reference accepts: an int (within int32; negative counts from the end; a
bool is an int), a slice with non-negative bounds and a positive step, at most one
``...``, a tuple of those, and the empty list (``0:0`` on the first axis). Its checks
are stricter than numpy's: a start at or past the dimension's size is out of bounds
even for an empty slice (so nothing can be sliced out of a tensor with a zero-length
axis but with ``()``), and so is a stop past it. One deliberate difference: a stop
before the start is refused with a SafetensorsError, where the reference fails inside
its own allocation with a SystemError.
"""

from __future__ import annotations

import operator
from typing import Any, NamedTuple

I32_MIN, I32_MAX = -(1 << 31), (1 << 31) - 1
U64 = (1 << 64) - 1


class SliceError(Exception):
    """An index the reference refuses; the message says why."""


class Axis(NamedTuple):
    start: int
    length: int
    step: int
    keep: bool      #: False for an int index, which drops the axis


def plan(key: Any, shape: tuple[int, ...]) -> list[Axis]:
    """One Axis per dimension of shape for the index `key`; SliceError if the
    reference refuses it (TypeError and OverflowError where it raises those)."""
    items = _items(key)
    if sum(1 for i in items if i is Ellipsis) > 1:
        raise SliceError("only one ellipsis (...) is allowed in slice index")
    if Ellipsis in items:
        at = items.index(Ellipsis)
        fill = len(shape) - (len(items) - 1)
        items = items[:at] + [slice(None)] * max(fill, 0) + items[at + 1:]
    if len(items) > len(shape):
        raise SliceError(f"more slicing indexes ({len(items)}) than dimensions in tensor "
                         f"({len(shape)})")
    axes = [_axis(i, item, shape[i]) for i, item in enumerate(items)]
    # dimensions left unindexed are whole, and not checked (the reference's too)
    return axes + [Axis(0, d, 1, True) for d in shape[len(items):]]


def _items(key: Any) -> list[Any]:
    if type(key) is list:
        if key:
            raise SliceError("non-empty lists are not implemented")
        return [slice(0, 0)]
    items = list(key) if type(key) is tuple else [key]
    for n, item in enumerate(items):
        if item is not Ellipsis and type(item) is not slice and _int32(item) is None:
            raise SliceError(f"unsupported slice index at position {n}: expected slice, "
                             f"int, or ellipsis, not {type(item).__name__}")
    return items


def _int32(item: Any) -> int | None:
    try:
        value = operator.index(item)
    except TypeError:
        return None
    return value if I32_MIN <= value <= I32_MAX else None


def _axis(i: int, item: Any, size: int) -> Axis:
    if type(item) is slice:
        start = _bound(item.start, 0)
        stop = _bound(item.stop, size)
        step = 1 if item.step is None else operator.index(item.step)
        if step <= 0:
            raise SliceError(f"slice step must be a positive integer, got {step}")
        if start >= size:
            raise SliceError(f"index {start} out of bounds for tensor dimension #{i} of "
                             f"size {size}")
        if stop > size:
            raise SliceError(f"index {stop - 1} out of bounds for tensor dimension #{i} of "
                             f"size {size}")
        if stop < start:
            raise SliceError(f"slice {start}:{stop} of dimension #{i} ends before it starts")
        return Axis(start, -(-(stop - start) // step), step, True)
    index = _int32(item)
    assert index is not None
    if index < 0:
        if index + size < 0:
            raise SliceError(f"invalid index {index} for dimension {i} of size {size}")
        index += size
    if index >= size:
        raise SliceError(f"index {index} out of bounds for tensor dimension #{i} of size "
                         f"{size}")
    return Axis(index, 1, 1, False)


def _bound(value: Any, default: int) -> int:
    """A slice bound as the reference reads it: a usize."""
    if value is None:
        return default
    bound = operator.index(value)       # TypeError for a float, as the reference
    if bound < 0:
        raise OverflowError("can't convert negative int to unsigned")
    if bound > U64:
        raise OverflowError("int too big to convert")
    return bound


def out_shape(axes: list[Axis]) -> tuple[int, ...]:
    return tuple(a.length for a in axes if a.keep)


class Layout(NamedTuple):
    """Where a slice's bytes are in the tensor's data, in bits: runs of ``run`` bits at
    ``base`` + the sum of i * step over the walked axes (each ``(length, step)``,
    outermost first; i < length), in the order of the output."""

    base: int
    run: int
    walked: list[tuple[int, int]]


def layout(axes: list[Axis], shape: tuple[int, ...], bits: int) -> Layout:
    """The innermost whole axes, and the axis outside them when its step is 1, make
    one run; the axes outside that are walked."""
    strides = [bits] * len(shape)
    for j in range(len(shape) - 2, -1, -1):
        strides[j] = strides[j + 1] * shape[j + 1]
    k, run = len(axes), bits
    while k and axes[k - 1][:3] == (0, shape[k - 1], 1):
        run *= shape[k - 1]
        k -= 1
    base = 0
    if k and axes[k - 1].step == 1:
        base = axes[k - 1].start * strides[k - 1]
        run *= axes[k - 1].length
        k -= 1
    base += sum(a.start * strides[j] for j, a in enumerate(axes[:k]))
    return Layout(base, run, [(a.length, a.step * strides[j]) for j, a in enumerate(axes[:k])])
