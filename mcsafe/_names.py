"""Names for the signal handlers mcsafe finds installed over itself, for the
warning it gives when it puts itself in front of one again."""

from __future__ import annotations

import os
import signal

from ._mcsafe import _handler_origin


def handler_name(sig: int, address: int) -> str:
    """``name (file)`` for a handler's address: the dynamic symbol there, else
    the function the file's symbol table places it in (faulthandler's and the
    signal module's handlers are static functions); SIG_DFL and SIG_IGN by name;
    for the signal module's handler, the Python callable it runs."""
    if address in (int(signal.SIG_DFL), int(signal.SIG_IGN)):
        return signal.Handlers(address).name
    origin = _handler_origin(address)
    if origin is None:
        return f"a handler at {address:#x}"
    file, symbol, vaddr = origin
    path = file or os.readlink("/proc/self/exe")        # the main program has no name
    if symbol is None:
        symbol = _symbol_at(path, vaddr)
    name = f"{symbol} ({os.path.basename(path)})"
    python = signal.getsignal(sig)
    if symbol == "signal_handler" and callable(python):
        name += f", which runs the Python handler {getattr(python, '__qualname__', python)!r}"
    return name


def _symbol_at(path: str, vaddr: int) -> str:
    from extable.elf import ElfImage
    from extable.errors import ExtableError

    try:
        with ElfImage(path) as image:
            return image.describe(vaddr)
    except ExtableError:
        return f"{vaddr:#x}"
