"""The ``#:`` comments of NamedTuple fields, for autodoc.

A NamedTuple field is a property whose docstring is "Alias for field number N";
autodoc shows that instead of the ``#:`` comment written beside the field (and
for a subclass such as FaultInfo, whose fields a private base defines, it finds
no comment at all). This looks the comment up along the class's MRO and uses it;
a field without one shows nothing rather than the alias text.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

from sphinx.application import Sphinx
from sphinx.pycode import ModuleAnalyzer
from sphinx.util.inspect import safe_getattr

ALIAS = re.compile(r"^Alias for field number \d+$")


def _owner(name: str) -> type | None:
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:-1]:
            obj = safe_getattr(obj, attr, None)
        return obj if isinstance(obj, type) else None
    return None


def field_doc(app: Sphinx, what: str, name: str, obj: Any, options: Any,
              lines: list[str]) -> None:
    if not (len(lines) >= 1 and ALIAS.match(lines[0].strip())):
        return
    lines.clear()
    cls, attr = _owner(name), name.rpartition(".")[2]
    for base in getattr(cls, "__mro__", ()):
        try:
            docs = ModuleAnalyzer.for_module(base.__module__).find_attr_docs()
        except Exception:                   # a built-in base has no source to read
            continue
        found = docs.get((base.__qualname__, attr))
        if found:
            lines.extend(line for line in found if line.strip())
            return


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("autodoc-process-docstring", field_doc)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
