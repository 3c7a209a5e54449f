"""Naming a location: ``.text+0x1a3 <foo+0x13>``, or the address in a linked image."""

from __future__ import annotations

import numpy as np

from .image import KernelImage

_SHIFT = np.uint64(44)
_MASK = np.uint64((1 << 44) - 1)


class Namer:
    """Turns (section, offset) arrays into symbol+offset strings, decoding only the names used."""

    def __init__(self, image: KernelImage) -> None:
        self.image = image
        self.syms = image.code_symbols
        self._names: dict[int, str] = {}

    def symbols(self, sec: np.ndarray, off: np.ndarray) -> list[str | None]:
        """``name+0xoff`` of the sized code symbol holding each location, else None."""
        out: list[str | None] = [None] * len(sec)
        if self.syms is None or not len(self.syms.key) or not len(sec):
            return out
        key = (sec.astype(np.uint64) << _SHIFT) | (off.astype(np.uint64) & _MASK)
        valid = (sec >= 0) & (off >= 0)
        i = np.searchsorted(self.syms.key, key, side="right").astype(np.int64) - 1
        # an alias or a nested symbol can sit just before the one holding us: look back a little
        for back in range(4):
            j = np.maximum(i - back, 0)
            start = self.syms.key[j]
            hit = (valid & (i - back >= 0) & ((start >> _SHIFT) == (key >> _SHIFT))
                   & (key >= start) & (key - start < self.syms.size[j]))
            for k in np.flatnonzero(hit).tolist():
                if out[k] is None:
                    delta = int(key[k] - start[k])
                    name = self._name(int(j[k]))
                    out[k] = f"{name}+{delta:#x}" if delta else name
        return out

    def _name(self, i: int) -> str:
        assert self.syms is not None
        off = int(self.syms.name_off[i])
        if off not in self._names:
            self._names[off] = self.image.cstring(self.syms.strtab, off)
        return self._names[off]

    def section_name(self, sec: int) -> str | None:
        return self.image.sections[sec].name if sec >= 0 else None
