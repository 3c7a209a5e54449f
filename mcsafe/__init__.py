"""mcsafe: a machine-check-safe copy for Python, recovered through compiled exception tables.

``copy(dst, src)`` copies like memcpy; when a page of either buffer faults
(poisoned memory, a mapping of a file that shrank, a protected page) it returns
the number of bytes copied before the fault instead of killing the process.
The recovery goes through the exception table that ``extable`` compiled into
this package's extension: the signal handler looks the faulting instruction up
and resumes the copy at its landing pad.
"""

from __future__ import annotations

from ._mcsafe import (GIL_RELEASE_BYTES, SMALL_COPY_BYTES, claimed_faults, copy, copy_report,
                      handler_installed, install, published_tables, table_status)
from ._types import CopyResult, FaultInfo, MemoryFaultError

__version__ = "0.1.0"

__all__ = ["GIL_RELEASE_BYTES", "SMALL_COPY_BYTES", "CopyResult", "FaultInfo",
           "MemoryFaultError", "claimed_faults", "copy", "copy_report", "handler_installed",
           "install", "published_tables", "table_status"]
