"""The system calls Python's mmap module does not make (it refuses to map past the
end of a file, and a file that can grow has to be mapped past its end), and
page arithmetic."""

from __future__ import annotations

import ctypes
import mmap
import os

from .._libc import MAP_FAILED, libc

__all__ = ["MAP_FAILED", "MAP_FIXED", "MS_SYNC", "PAGE", "PROT_NONE", "errno_now", "libc",
           "oserror", "pages"]

PAGE = mmap.PAGESIZE
MAP_FIXED = 0x10
PROT_NONE = 0
MS_SYNC = 4


def pages(n: int) -> int:
    """n rounded up to whole pages."""
    return -(-n // PAGE) * PAGE


def oserror(err: int, name: str, what: str) -> OSError:
    return OSError(err, f"{what}: {os.strerror(err)}", name)


def errno_now() -> int:
    return ctypes.get_errno()
