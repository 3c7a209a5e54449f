"""The system calls Python's mmap module does not make (it refuses to map past the
end of a file, and a file that can grow has to be mapped past its end), made by
the extension, and page arithmetic."""

from __future__ import annotations

import errno
import mmap
import os

from .._mcsafe import _advise as advise
from .._mcsafe import _fs_type as fs_type
from .._mcsafe import _map as map_memory
from .._mcsafe import _Memory as Memory
from .._mcsafe import _set_word as set_word
from .._mcsafe import _sync as sync
from .._mcsafe import _unmap as unmap
from .._mcsafe import _word_at as word_at

__all__ = ["MS_SYNC", "Memory", "PAGE", "PREFAULT_BYTES", "advise", "fs_type", "map_memory", "next_data",
           "oserror", "pages",
           "set_word", "sync", "unmap", "word_at"]

PAGE = mmap.PAGESIZE
MS_SYNC = 4
#: New arrays of at least this many bytes have their pages faulted in before the
#: copy fills them (_prefault): below it the advice's system call costs more than
#: the faults it saves.
PREFAULT_BYTES = 64 << 10


def pages(n: int) -> int:
    """n rounded up to whole pages."""
    return -(-n // PAGE) * PAGE


def oserror(err: int, name: str, what: str) -> OSError:
    return OSError(err, f"{what}: {os.strerror(err)}", name)


def next_data(fd: int, offset: int, stop: int) -> tuple[int, int]:
    """Where the file's next data at or after offset starts and ends (SEEK_DATA,
    SEEK_HOLE), within stop: (stop, stop) if only a hole (or the end of the
    file) is left, (offset, stop) where the file system cannot tell."""
    try:
        data = os.lseek(fd, offset, os.SEEK_DATA)
        hole = os.lseek(fd, data, os.SEEK_HOLE) if data < stop else stop
    except OSError as exc:
        if exc.errno != errno.ENXIO:
            return offset, stop
        data = hole = stop
    return min(data, stop), min(max(hole, data + PAGE), stop)
