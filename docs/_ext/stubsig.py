"""Signatures of the compiled extension's functions, from its .pyi.

Cython records a function's parameters but not their types; the types are in
``mcsafe/_mcsafe.pyi`` (what mypy reads). This extension gives autodoc those
signatures for every function (and method of a class: MappedFile.readinto is
``mcsafe._mcsafe._FastPath.readinto``) documented from ``mcsafe._mcsafe``, so the API
reference shows what a type checker sees. A function missing from the stub is
an error: the stub and the extension must not drift apart.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
from typing import Any

from sphinx.application import Sphinx
from sphinx.errors import ExtensionError

STUBBED = ("mcsafe._mcsafe",)


@functools.cache
def _stub(module: str) -> dict[str, ast.FunctionDef]:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ExtensionError(f"stubsig: cannot find {module}")
    path = spec.origin.rsplit("/", 1)[0] + "/" + module.rsplit(".", 1)[1] + ".pyi"
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    found = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    for c in (n for n in tree.body if isinstance(n, ast.ClassDef)):    # methods: by qualname
        found.update({f"{c.name}.{m.name}": m for m in c.body if isinstance(m, ast.FunctionDef)})
    return found


def process_signature(app: Sphinx, what: str, name: str, obj: Any, options: Any,
                      signature: str | None, return_annotation: str | None
                      ) -> tuple[str | None, str | None] | None:
    module = getattr(obj, "__module__", None)
    if what not in ("function", "method") or module not in STUBBED:
        return None
    name = obj.__qualname__
    stub = _stub(module).get(name)
    if stub is None:
        raise ExtensionError(f"stubsig: {module}.{name} is not in {module}.pyi")
    args = stub.args
    if what == "method":        # shown bound, as autodoc shows methods: without self
        args = ast.arguments(posonlyargs=args.posonlyargs, args=args.args[1:],
                             vararg=args.vararg, kwonlyargs=args.kwonlyargs,
                             kw_defaults=args.kw_defaults, kwarg=args.kwarg,
                             defaults=args.defaults)
    returns = ast.unparse(stub.returns) if stub.returns is not None else None
    return f"({ast.unparse(args)})", returns


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("autodoc-process-signature", process_signature)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
