"""Naming a location: ``.text+0x1a3 <foo+0x13>``, or the address in a linked image."""

from __future__ import annotations

from bisect import bisect_right

from ..names import shown
from .image import KEY_SHIFT, KernelImage


class Namer:
    """Turns (section, offset) lists into symbol+offset strings, decoding only the names used
    (one that is not UTF-8 shown as readelf shows it)."""

    def __init__(self, image: KernelImage) -> None:
        self.image = image
        self.syms = image.code_symbols
        self._names: dict[int, str] = {}

    def symbols(self, sec: list[int], off: list[int]) -> list[str | None]:
        """``name+0xoff`` of the sized code symbol holding each location, else None."""
        syms = self.syms
        out: list[str | None] = [None] * len(sec)
        if syms is None or not syms.key:
            return out
        keys, sizes, name = syms.key, syms.size, self._name
        for k, (s, o) in enumerate(zip(sec, off)):
            if s < 0 or o < 0:
                continue
            key = (s << KEY_SHIFT) | o
            i = bisect_right(keys, key) - 1
            # an alias or a nested symbol can sit just before the one holding us: look back
            for j in range(i, max(i - 4, -1), -1):
                if keys[j] >> KEY_SHIFT != s:
                    break
                delta = key - keys[j]
                if delta < sizes[j]:
                    out[k] = f"{name(j)}+{delta:#x}" if delta else name(j)
                    break
        return out

    def check(self) -> None:
        """Raise now, before anything is printed, if a code symbol's name could not be read
        (its offset past the string table, or a table not ending in NUL)."""
        syms = self.syms
        if syms is None or not syms.name_off:
            return
        worst = max(syms.name_off)
        self.image.cstring(syms.strtab, worst)
        if not self.image.section_bytes(syms.strtab).endswith(b"\0"):
            self.image.cstring(syms.strtab, len(self.image.section_bytes(syms.strtab)) - 1)

    def _name(self, i: int) -> str:
        assert self.syms is not None
        off = self.syms.name_off[i]
        if off not in self._names:
            self._names[off] = shown(self.image.cstring(self.syms.strtab, off))
        return self._names[off]
