"""A file read once, start to end, and closed: what arrays.load and load_file need,
without the machinery MappedFile keeps for a file that lives on.

Opening maps exactly the file's bytes (one call: open, fstat, fstatfs, mmap);
each read is one table-driven copy from that mapping, proved by the file's size,
mtime and ctime asked after it (one fstat) being what they were at the open: no
cut, no write, so every byte copied was the file's. Closing unmaps and closes. No room to grow, no probe page, no descriptor state to restore.

Whatever that cannot prove (a fault, a file changed under the copy) hands the rest
of the file to a MappedFile of the same open file, from the page before the one
where the copy stopped, so what a caller sees after that (counts, exceptions,
their fields and messages) is MappedFile's own. So is the verdict on a file this
does not map: not a regular file, an empty one, one of procfs or sysfs
(open_once returns a MappedFile for those)."""

from __future__ import annotations

import os
TYPE_CHECKING = False      # (typing: type checkers only)

if TYPE_CHECKING:
    from typing_extensions import Buffer

from .._mcsafe import _open_once, _read_once
from .._types import CopyResult, MemoryFaultError
from .careful import before_page_before
from .file import MappedFile
from ._sys import unmap
from .opening import _PSEUDO_FS

_REFUSE = frozenset(_PSEUDO_FS)


class ReadOnce:
    """An open file mapped whole for one pass: ``path``, ``size``, ``address``,
    ``readinto`` (as MappedFile.readinto) and ``close``. Made by open_once."""

    __slots__ = ("path", "address", "_fd", "_size", "_mtime", "_ctime", "_mf")

    def __init__(self, path: str, fd: int, size: int, address: int, mtime_ns: int,
                 ctime_ns: int) -> None:
        self.path, self.address = path, address
        self._fd, self._size, self._mtime, self._ctime = fd, size, mtime_ns, ctime_ns
        self._mf: MappedFile | None = None      # the rest of the file, once handed over

    def __enter__(self) -> ReadOnce:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def size(self) -> int:
        """The size the file had when opened (MappedFile's size now, once handed over)."""
        return self._size if self._mf is None else self._mf.size

    def readinto(self, buf: Buffer, offset: int = 0) -> int:
        """Fill buf from the file at offset, as MappedFile.readinto: the count, short
        at a bad byte or the end of the file; MemoryFaultError if the first byte is
        bad."""
        done = 0
        if self._mf is None:
            got = _read_once(buf, self.address, self._size, self._fd, offset, self._mtime,
                             self._ctime)
            if type(got) is int and got >= 0:
                return got
            if type(got) is CopyResult:
                # the page before may hold zeros read past a cut: MappedFile reads it again
                done = before_page_before(offset, got.copied)
            self._mf = self.mapped()
        if not done:
            return self._mf.readinto(buf, offset)
        with memoryview(buf) as whole, whole.cast("B") as flat, flat[done:] as rest:
            try:
                return done + self._mf.readinto(rest, offset + done)
            except MemoryFaultError:
                return done

    def mapped(self) -> MappedFile:
        """A MappedFile of the same open file (the caller's to close), named by the
        path this was opened by, as MappedFile(path) would name it; of the path
        again where /proc is not mounted (MappedFile opens a descriptor through it)."""
        if not os.path.isdir("/proc/self/fd"):
            return MappedFile(self.path)
        mf = MappedFile(self._fd)
        # MappedFile(fd) names the file by /proc's link: name it as the caller did
        mf.name = mf.path = mf._window.path = self.path
        return mf

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            try:
                unmap(self.address, self._size)
            finally:
                os.close(fd)
        mf, self._mf = self._mf, None
        if mf is not None:
            mf.close()


def open_once(file: str | os.PathLike[str]) -> ReadOnce | MappedFile:
    """A ReadOnce of the file, or a MappedFile where ReadOnce does not map it (which
    raises what MappedFile raises for it)."""
    path = os.fspath(file)
    opened = _open_once(os.fsencode(path), _REFUSE)
    if isinstance(opened, int):
        raise OSError(opened, os.strerror(opened), path)
    if opened is None:
        return MappedFile(path)
    return ReadOnce(path, *opened)
