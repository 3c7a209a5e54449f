"""mcsafe: a machine-check-safe copy for Python, recovered through compiled exception tables.

``copy(dst, src)`` copies like memcpy; when a page of either buffer faults
(poisoned memory, a mapping of a file that shrank, a protected page) it returns
the number of bytes copied before the fault instead of killing the process.
The recovery goes through the exception table that ``extable`` compiled into
this package's extension: the signal handler looks the faulting instruction up
and resumes the copy at its landing pad.
"""

import typing as _typing

from ._mcsafe import (GIL_RELEASE_BYTES, SMALL_COPY_BYTES, claimed_faults, copy, copy_report,
                      handler_installed, install, poison_log, published_tables, table_status)
from ._types import CopyResult, FaultInfo, MemoryFaultError, PoisonNotice
from .mapped import MappedFile
from .registry import TableError, register, unregister

__version__ = "0.1.0"


def __getattr__(name: str) -> _typing.Any:
    # mcsafe.inject (fault injection for tests and demos: a sixth of import mcsafe's
    # time) is imported when first used.
    if name == "inject":
        import importlib
        return importlib.import_module(".inject", __name__)
    raise AttributeError(f"module 'mcsafe' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | {"inject"})


def get_include() -> list[str]:
    """Include folders for C or Cython code using mcsafe.h, _mcsafe.pxd or extable.h."""
    import os

    import extable

    here = os.path.dirname(os.path.abspath(__file__))
    return [os.path.join(here, "_core"), extable.include_dir()]


__all__ = ["GIL_RELEASE_BYTES", "SMALL_COPY_BYTES", "CopyResult", "FaultInfo", "MappedFile",
           "MemoryFaultError", "PoisonNotice", "TableError", "claimed_faults", "copy",
           "copy_report", "get_include", "handler_installed", "inject", "install", "poison_log",
           "published_tables", "register", "table_status", "unregister"]
