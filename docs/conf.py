"""Sphinx configuration of the documentation site (make docs).

Why Sphinx with furo and not MkDocs-material with mkdocstrings: the pages in
this folder are Markdown and stay so (myst-parser reads them as they are, and
they are also read on their own, in the repository and in the package); the
command reference must come from the real argparse parsers, which
sphinx-argparse renders and MkDocs has no maintained equivalent for; and
``sphinx-build -n`` checks every cross-reference, including the types in the
API's signatures, so a renamed function or a broken link fails the build.
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "_ext"))

import mcsafe  # noqa: E402  (the installed package: autodoc imports it)

project = "mcsafe and extable"
author = "the mcsafe authors"
copyright = "the mcsafe authors, MIT licence"
release = version = mcsafe.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinxarg.ext",
    "stubsig",
    "fielddocs",
]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]
templates_path: list[str] = []

myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence", "deflist"]

html_theme = "furo"
html_title = f"mcsafe {release}"
html_static_path: list[str] = []
html_copy_source = False

autodoc_default_options = {"members": True, "member-order": "bysource"}
autodoc_typehints = "signature"
autodoc_preserve_defaults = True

# Types from outside the project. With no network here, intersphinx cannot fetch
# the Python and numpy inventories, so these names are shown unlinked instead of
# failing -n; any other unresolved name (ours) still fails the build.
nitpick_ignore_regex = [
    ("py:.*", r"(numpy|npt|np|os|io|typing|typing_extensions|collections\.abc|types|ctypes"
              r"|_typeshed|pathlib|argparse|_pytest|pytest)\..*"),
    # SafeSlice's constructor takes a private header record; users never call it
    # (safe_open.get_slice makes a SafeSlice).
    ("py:class", r"mcsafe\.formats\.safetensors\._header\.TensorInfo"),
    ("py:class", r"Buffer|SupportsIndex|PathLike|StrOrBytesPath|FileDescriptorOrPath"
                 r"|ReadableBuffer|WriteableBuffer|DTypeLike|ArrayLike|NDArray|Self|T"),
    # Names that exist for type checkers only: FaultInfo's Literal aliases (defined
    # under TYPE_CHECKING so that import mcsafe loads no typing; FaultInfo's fields
    # list their values) and read_array's scalar TypeVar.
    ("py:class", r"(mcsafe\._types\.)?(Side|Cause)|(mcsafe\.mapped\.file\.)?Scalar"),
    ("py:class", r"(Iterator|Iterable|Callable|Sequence|Mapping|Generator|ContextManager"
                 r"|Literal|Any|IO|BinaryIO|TextIO|ndarray|dtype|module|ModuleType|CDLL"
                 r"|BufferedReader|BufferedRandom|BufferedWriter|TextIOWrapper|RawIOBase"
                 r"|IOBase|Path)"),
]
