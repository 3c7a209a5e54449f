"""MappedFile where a file object is expected: an io.RawIOBase, and open()."""

from __future__ import annotations

import errno
import io
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing_extensions import Buffer

from .mapped import MappedFile


class MappedFileIO(io.RawIOBase):
    """A raw binary file over a MappedFile, with a position: what io.BufferedReader,
    io.TextIOWrapper, shutil.copyfileobj, tarfile, zipfile and pickle.load take.

    Reads stop short at a bad byte; the next read raises MemoryFaultError, as a
    disk with a bad sector would. Writes (mode 'r+') never extend the file: one
    that starts at its end raises OSError EFBIG.
    flush() has nothing to do (writes go straight to the page cache, as
    os.write's do); sync() makes them durable. ``file`` is a MappedFile (left
    open by close() unless closefd), a path or an open descriptor.
    """

    def __init__(self, file: MappedFile | str | os.PathLike[str] | int, mode: str = "r", *,
                 closefd: bool = True) -> None:
        super().__init__()
        self._owned = False              # for close() if MappedFile() below raises
        if isinstance(file, MappedFile):
            self.mapped, self._owned = file, closefd
        else:
            self.mapped, self._owned = MappedFile(file, mode), True
        self._pos = 0

    def __repr__(self) -> str:
        return f"<MappedFileIO name={self.name!r} mode={self.mode!r} position={self._pos}>"

    @property
    def name(self) -> str | int:
        return self.mapped.name

    @property
    def mode(self) -> str:
        return "rb" if self.mapped.mode == "r" else "rb+"

    def readable(self) -> bool:
        self._checkClosed()
        return True

    def writable(self) -> bool:
        self._checkClosed()
        return self.mapped.mode == "r+"

    def seekable(self) -> bool:
        self._checkClosed()
        return True

    def fileno(self) -> int:
        return self.mapped.fileno()

    def readinto(self, buf: Buffer, offset: int | None = None) -> int:
        """Read into buf at the position (which moves), or at `offset` (which
        leaves the position alone, as os.preadv would)."""
        self._checkClosed()
        if offset is not None:
            return self.mapped.readinto(buf, offset)
        n = self.mapped.readinto(buf, self._pos)
        self._pos += n
        return n

    def readall(self) -> bytes:
        """Read to the end of the file, as FileIO.readall does: a bad byte on the
        way raises (MemoryFaultError) rather than ending the data early."""
        self._checkClosed()
        chunks: list[bytes] = []
        while True:
            data = self.mapped.read(max(0, self.mapped.size - self._pos), self._pos)
            if not data:
                return b"".join(chunks)
            self._pos += len(data)
            chunks.append(data)

    def write(self, buf: Buffer) -> int:
        self._checkClosed()
        if self.mapped.mode != "r+":
            raise io.UnsupportedOperation("not writable (open with mode 'r+')")
        n = self.mapped.write(buf, self._pos)
        if n == 0 and memoryview(buf).nbytes:
            # 0 would make io.BufferedWriter try again forever
            raise OSError(errno.EFBIG, f"cannot write past the end of the file (size "
                                       f"{self.mapped.size}): a mapping never extends it",
                          self.mapped.path)
        self._pos += n
        return n

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._checkClosed()
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self.mapped.size + offset
        else:
            raise ValueError(f"invalid whence ({whence}, should be 0, 1 or 2)")
        if pos < 0:
            raise OSError(22, f"negative seek position {pos}")
        self._pos = pos
        return pos

    def tell(self) -> int:
        self._checkClosed()
        return self._pos

    def sync(self) -> None:
        """Make the writes durable: MappedFile.sync()."""
        self._checkClosed()
        self.mapped.sync()

    def close(self) -> None:
        if not self.closed and self._owned:
            self.mapped.close()
        super().close()


def open(file: MappedFile | str | os.PathLike[str] | int, mode: str = "rb",
         buffering: int = -1, encoding: str | None = None, errors: str | None = None,
         newline: str | None = None) -> io.IOBase:
    """Like the built-in open() for reading through a mapping: 'rb' (buffered),
    'rb+', 'r'/'rt' (text); buffering=0 gives the MappedFileIO itself."""
    text = "b" not in mode
    plain = mode.replace("b", "").replace("t", "")
    if plain not in ("r", "r+") or ("b" in mode and "t" in mode):
        raise ValueError(f"mode must be 'rb', 'rb+', 'r' or 'rt', not {mode!r}")
    raw = MappedFileIO(file, plain)
    if buffering == 0:
        if text:
            raise ValueError("can't have unbuffered text I/O")
        return raw
    size = buffering if buffering > 1 else io.DEFAULT_BUFFER_SIZE
    buffered: io.BufferedReader | io.BufferedRandom = \
        io.BufferedRandom(raw, size) if plain == "r+" else io.BufferedReader(raw, size)
    if not text:
        return buffered
    return io.TextIOWrapper(buffered, encoding, errors, newline)
