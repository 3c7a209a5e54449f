"""Addresses as users write them: a number, a symbol, or a symbol plus or minus an offset."""

from __future__ import annotations

import re

from .elf import ElfImage
from .errors import ExtableError

#: An address: symbol, symbol+off, symbol-off or a number (decimal or 0x hex).
ADDRESS = re.compile(r"^\s*([A-Za-z_.$][\w.$@]*)?\s*(?:([+-])?\s*(0x[0-9a-fA-F]+|\d+))?\s*$")


def resolve_address(image: ElfImage, value: int | str, what: str) -> int:
    """An address given as an integer, ``"0x1234"``, ``"symbol"`` or ``"symbol+0x10"``.

    The result must fit 64 bits and not be negative (ExtableError otherwise).
    """
    if isinstance(value, int) and not isinstance(value, bool):
        address = value
    else:
        m = ADDRESS.match(str(value))
        if not m or not (m.group(1) or m.group(3)):
            raise ExtableError(f"{what}: cannot read address {value!r}")
        base = 0
        if m.group(1):
            if m.group(1) not in image.symbol_addresses:
                raise ExtableError(f"{what}: unknown symbol {m.group(1)!r}")
            base = image.symbol_addresses[m.group(1)]
        off = int(m.group(3), 0) if m.group(3) else 0
        address = base - off if m.group(2) == "-" else base + off
    if not 0 <= address < 1 << 64:
        why = "negative" if address < 0 else "wider than 64 bits"
        raise ExtableError(f"{what}: {value!r} is {why}")
    return address
