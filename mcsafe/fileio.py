"""MappedFile where a file object is expected: an io.RawIOBase, and open()."""

from __future__ import annotations

import errno
import io
import operator
import os
from typing import TYPE_CHECKING, Literal, Union, overload

if TYPE_CHECKING:
    from typing_extensions import Buffer

from .mapped import MappedFile


class MappedFileIO(io.RawIOBase):
    """A raw binary file over a MappedFile, with a position: what io.BufferedReader,
    io.TextIOWrapper, shutil.copyfileobj, tarfile, zipfile and pickle.load take.

    Reads stop short at a bad byte; the next read raises MemoryFaultError, as a
    disk with a bad sector would. Writes (mode 'r+') never extend the file: one
    that starts at its end raises OSError EFBIG (truncate() does extend it, as
    it does for open()). flush() has nothing to do (writes go straight to the
    page cache, as os.write's do); sync() makes them durable.

    ``file`` is a path, an open descriptor or a MappedFile. As with open(), a
    descriptor is closed by close() (closefd=True, the default for one) and
    read from its position at the time (its own offset is not moved after
    that: the stream keeps its position); a MappedFile is the caller's and is
    left open unless closefd=True is passed.
    """

    def __init__(self, file: MappedFile | str | os.PathLike[str] | int, mode: str = "r", *,
                 closefd: bool | None = None) -> None:
        super().__init__()
        self._owned = False              # for close() if MappedFile() below raises
        self._fd = -1                    # a descriptor of the caller's, closed with us
        self._pos = 0
        if isinstance(file, MappedFile):
            self.mapped, self._owned = file, bool(closefd)
            return
        self.mapped, self._owned = MappedFile(file, mode), True
        if isinstance(file, int):
            if closefd is not False:
                self._fd = file
            self._pos = max(0, os.lseek(file, 0, os.SEEK_CUR))

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

    def read(self, size: int | None = -1) -> bytes:
        """Up to size bytes from the position (all of them for -1 or None)."""
        self._checkClosed()
        if size is None or size < 0:
            return self.readall()
        data = self.mapped.read(size, self._pos)
        self._pos += len(data)
        return data

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

    def truncate(self, size: int | None = None) -> int:
        """Cut or extend the file to size (the position, by default), as
        FileIO.truncate does; the position does not move."""
        self._checkClosed()
        if self.mapped.mode != "r+":
            raise io.UnsupportedOperation("File not open for writing")
        size = self._pos if size is None else operator.index(size)
        os.ftruncate(self.mapped.fileno(), size)
        return size

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._checkClosed()
        offset = operator.index(offset)
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self.mapped.size + offset
        elif whence in (os.SEEK_DATA, os.SEEK_HOLE):
            # the file system knows where its holes are: ask it (ENXIO past the end)
            pos = os.lseek(self.mapped.fileno(), offset, whence)
        else:
            raise ValueError(f"invalid whence ({whence}, should be 0, 1, 2, 3 or 4)")
        if pos < 0:
            raise OSError(errno.EINVAL, f"negative seek position {pos}")
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
        if not self.closed:
            try:
                if self._owned:
                    self.mapped.close()
            finally:
                if self._fd >= 0:
                    fd, self._fd = self._fd, -1
                    os.close(fd)
        super().close()


Openable = Union[MappedFile, str, "os.PathLike[str]", int]
#: The binary modes open() takes; 'r+b' is 'rb+', as for the built-in open().
BinaryMode = Literal["rb", "br", "rb+", "r+b", "br+"]


@overload
def open(file: Openable, mode: Literal["r", "rt", "tr"], buffering: int = -1,
         encoding: str | None = None, errors: str | None = None, newline: str | None = None,
         closefd: bool | None = None) -> io.TextIOWrapper: ...
@overload
def open(file: Openable, mode: BinaryMode, buffering: Literal[0], encoding: None = None,
         errors: None = None, newline: None = None, closefd: bool | None = None
         ) -> MappedFileIO: ...
@overload
def open(file: Openable, mode: Literal["rb+", "r+b", "br+"], buffering: Literal[-1, 1] = -1,
         encoding: None = None, errors: None = None, newline: None = None,
         closefd: bool | None = None) -> io.BufferedRandom: ...
@overload
def open(file: Openable, mode: Literal["rb", "br"] = "rb", buffering: Literal[-1, 1] = -1,
         encoding: None = None, errors: None = None, newline: None = None,
         closefd: bool | None = None) -> io.BufferedReader: ...
@overload
def open(file: Openable, mode: BinaryMode = "rb", buffering: int = -1, encoding: None = None,
         errors: None = None, newline: None = None, closefd: bool | None = None
         ) -> io.BufferedReader | io.BufferedRandom | MappedFileIO: ...
@overload
def open(file: Openable, mode: str = "rb", buffering: int = -1, encoding: str | None = None,
         errors: str | None = None, newline: str | None = None, closefd: bool | None = None
         ) -> io.IOBase: ...
def open(file: Openable, mode: str = "rb", buffering: int = -1, encoding: str | None = None,
         errors: str | None = None, newline: str | None = None, closefd: bool | None = None
         ) -> io.IOBase:
    """Like the built-in open() for reading through a mapping: 'rb' (an
    io.BufferedReader), 'rb+' (an io.BufferedRandom), 'r'/'rt' (an io.TextIOWrapper);
    buffering=0 gives the MappedFileIO itself. closefd
    as for MappedFileIO: a descriptor is closed with the file unless
    closefd=False, a MappedFile is left open unless closefd=True."""
    text = "b" not in mode
    plain = mode.replace("b", "").replace("t", "")
    if plain not in ("r", "r+") or ("b" in mode and "t" in mode):
        raise ValueError(f"mode must be 'rb', 'rb+', 'r' or 'rt', not {mode!r}")
    raw = MappedFileIO(file, plain, closefd=closefd)
    if buffering == 0:
        if text:
            raise ValueError("can't have unbuffered text I/O")
        return raw
    size = buffering if buffering > 1 else io.DEFAULT_BUFFER_SIZE
    buffered: io.BufferedReader | io.BufferedRandom = \
        io.BufferedRandom(raw, size) if plain == "r+" else io.BufferedReader(raw, size)
    if not text:
        return buffered
    wrapper = io.TextIOWrapper(buffered, encoding, errors, newline)
    wrapper.mode = mode             # type: ignore[misc]  # as open() sets it
    return wrapper
