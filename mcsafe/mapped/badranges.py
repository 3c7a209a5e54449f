"""The bad-range memory: pages met bad, kept for the life of a MappedFile as a
bad-block list, so later calls stop before them without touching them again."""

from __future__ import annotations

import bisect
import signal
import threading

from .._mcsafe import _Starts
from .._types import FaultInfo, MemoryFaultError
from ._sys import PAGE


class BadRanges(_Starts):
    """Bad ranges in file offsets ([start, end), page-granular, merged, sorted),
    each with the fault that found it. Read without the lock: the lists are
    replaced together (publish(), in the extension's base class), never mutated,
    so a reader sees a consistent pair."""

    def __init__(self) -> None:
        self.publish([], [])
        self._first_fault: dict[int, FaultInfo] = {}
        self.lock = threading.Lock()

    def __bool__(self) -> bool:
        return bool(self.starts)

    def __len__(self) -> int:
        return len(self.starts)

    def ranges(self) -> list[tuple[int, int]]:
        with self.lock:
            return list(zip(self.starts, self.ends))

    def faults(self) -> list[tuple[int, int, FaultInfo]]:
        """The ranges, each with the first fault met in it."""
        with self.lock:
            return [(s, e, self._first_fault[s]) for s, e in zip(self.starts, self.ends)]

    def at_or_after(self, offset: int) -> tuple[int, int] | None:
        """The first bad range that ends after offset."""
        starts, ends = self.starts, self.ends
        i = bisect.bisect_right(ends, offset)
        return (starts[i], ends[i]) if i < len(starts) else None

    def remember(self, info: FaultInfo) -> None:
        """Record the page of a fault at file offset info.offset."""
        start = info.offset // PAGE * PAGE
        end = start + PAGE
        with self.lock:
            starts, ends = list(self.starts), list(self.ends)
            i = bisect.bisect_left(ends, start)
            j = bisect.bisect_right(starts, end)
            kept = info                # the fault a later EIO on the range reports
            if i < j:
                start, end = min(start, starts[i]), max(end, ends[j - 1])
                kept = self._first_fault.get(starts[i], info)
                for s in starts[i:j]:
                    self._first_fault.pop(s, None)
            starts[i:j], ends[i:j] = [start], [end]
            self._first_fault[start] = kept
            self.publish(starts, ends)

    def known_bad(self, start: int, offset: int, address: int, what: str, path: str
                  ) -> MemoryFaultError:
        """The error of a call whose first byte, at offset (mapped at address), lies
        in the bad range starting at start."""
        with self.lock:
            info = self._first_fault.get(start)
        if info is None:   # pragma: no cover - merged away under us: any fault of the range
            info = FaultInfo(address, offset, "src", signal.SIGBUS, 0)
        return MemoryFaultError(info._replace(offset=offset, address=address,
                                              side="src" if what == "read" else "dst"),
                                f"{what} (known bad range)", path)

    def after_fork(self) -> None:
        self.lock = threading.Lock()
