"""extable: compile user-space exception tables into ELF files.

Data flows one way: ELF (:mod:`extable.elf`) → fault sites (:mod:`extable.sites`,
:mod:`extable.spec`) → table (:mod:`extable.compiler`, :mod:`extable.table`) →
bytes → ELF (:mod:`extable.writer`) → runtime (the ``mcsafe`` package).
"""

from __future__ import annotations

import os

__version__ = "0.1.0"


def include_dir() -> str:
    """The folder holding ``extable.h``, for ``-I``."""
    return os.path.join(os.path.dirname(os.path.realpath(__file__)), "include")


from .errors import CheckFailed, ExtableError  # noqa: E402

__all__ = ["CheckFailed", "ExtableError", "__version__", "include_dir"]
