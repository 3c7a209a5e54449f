"""Symbol names that are not UTF-8, shown as readelf shows them.

Names are read from string tables as bytes and kept as ``str`` with the bytes
that are not UTF-8 as lone surrogates (Python's ``surrogateescape``), so that
nothing is lost. Lone surrogates are not text: strict JSON readers reject
them, and a UTF-8 terminal cannot print them. Where such a name is shown, it
is rendered as ``readelf --unicode=invalid`` renders it: each byte that is not
part of valid UTF-8 as ``{0x89}``, control characters as ``^H`` (``^?`` for
DEL). ``symbols --json`` adds the raw bytes in hex (``name_hex``) so they stay
recoverable.
"""

from __future__ import annotations

import json
import re
from typing import Any

#: A character a readelf-style rendering replaces: an escaped byte or a control character.
_UNSHOWN = re.compile("[\udc80-\udcff\x00-\x1f\x7f]")


def is_text(name: str) -> bool:
    """Whether the name is valid UTF-8 (no byte was escaped when it was read)."""
    return name.isascii() or not any(0xDC80 <= ord(c) <= 0xDCFF for c in name)


def _render(match: re.Match[str]) -> str:
    c = ord(match.group())
    if c >= 0xDC80:
        return f"{{{c - 0xDC00:#04x}}}"
    return "^?" if c == 0x7F else "^" + chr(c + 0x40)


def shown(name: str) -> str:
    """The name as readelf shows it when it is not valid UTF-8; unchanged otherwise."""
    return name if is_text(name) else _UNSHOWN.sub(_render, name)


def raw_hex(name: str) -> str:
    """The name's bytes as they are in the file, in hex."""
    return name.encode("utf-8", "surrogateescape").hex()


def json_safe(obj: Any) -> Any:
    """obj with every string that is not valid UTF-8 rendered by :func:`shown`."""
    if isinstance(obj, str):
        return shown(obj)
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def json_text(obj: Any, **options: Any) -> str:
    """``json.dumps(obj, **options)``, with any string that is not valid UTF-8 (a path or a
    name given as bytes) rendered by :func:`shown`: a lone surrogate is not JSON text."""
    text = json.dumps(obj, **options)
    if "\\udc" in text:
        text = json.dumps(json_safe(obj), **options)
    return text
