"""Opening a kernel object: plain, or compressed as distributions ship modules.

The compression is told by the file's first bytes, never by its name. A
compressed file is streamed into an unlinked temporary file, so neither the
compressed nor the decompressed bytes are ever held in memory whole. Readers
take what they need with ``pread`` rather than a mapping: a file truncated
under us then reads short (an error) instead of raising SIGBUS.
"""

from __future__ import annotations

import gzip
import lzma
import os
import tempfile
from typing import IO, Callable

from ..errors import ExtableError, MissingExtra, missing_extra
from .detect import compression_of

#: No module or vmlinux comes near this; a bigger stream is not what we think it is.
MAX_DECOMPRESSED = 4 << 30
#: Kernel objects (code, DWARF) compress 3-8 times; a stream that inflates more than
#: RATIO times its size past FLOOR is a bomb, and would fill the temporary directory
#: (often tmpfs, so memory) long before MAX_DECOMPRESSED.
RATIO, FLOOR = 32, 64 << 20
_CHUNK = 1 << 20


def _zstd_reader(f: IO[bytes]) -> IO[bytes]:
    try:
        import zstandard
    except ModuleNotFoundError as exc:
        raise missing_extra(exc, "zstandard", "reading a zstd-compressed kernel module",
                            "kernel") from None
    reader: IO[bytes] = zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True)
    return reader


def _xz_reader(f: IO[bytes]) -> IO[bytes]:
    return lzma.LZMAFile(f)        # type: ignore[return-value]


def _gzip_reader(f: IO[bytes]) -> IO[bytes]:
    return gzip.GzipFile(fileobj=f)   # type: ignore[return-value]


_READERS: dict[str, Callable[[IO[bytes]], IO[bytes]]] = {
    "xz": _xz_reader, "gzip": _gzip_reader, "zstd": _zstd_reader}


class Source:
    """A kernel object's bytes: ``pread`` for the reader, ``file`` for pyelftools."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self.compression: str | None = None
        self.file: IO[bytes]
        try:
            raw = open(self.path, "rb")
        except OSError as exc:
            raise ExtableError(f"cannot open: {exc.strerror}", self.path) from None
        try:
            self.compression = compression_of(raw.read(8))
            raw.seek(0)
            self.file = self._decompress(raw) if self.compression else raw
        except BaseException:
            raw.close()
            raise
        if self.file is not raw:
            raw.close()
        self.fd = self.file.fileno()
        self.size = os.fstat(self.fd).st_size
        if self.size == 0:
            self.file.close()
            raise ExtableError("empty file" if not self.compression else
                               f"{self.compression} data decompresses to nothing", self.path)

    def pread(self, size: int, offset: int) -> bytes:
        """Exactly ``size`` bytes at ``offset``, or an error naming what happened."""
        data = os.pread(self.fd, size, offset)
        if len(data) != size:
            raise ExtableError(f"the file ends at {offset + len(data):#x}, before "
                               f"{offset + size:#x}: was it truncated while being read?",
                               self.path)
        return data

    def _decompress(self, raw: IO[bytes]) -> IO[bytes]:
        assert self.compression is not None
        packed = os.fstat(raw.fileno()).st_size
        limit = min(MAX_DECOMPRESSED, max(FLOOR, RATIO * packed))
        out = tempfile.TemporaryFile(prefix="extable-kernel-")
        try:
            with _READERS[self.compression](raw) as stream:
                written, head = 0, b""
                while chunk := stream.read(_CHUNK):
                    if len(head) < 4:
                        head += chunk[:4 - len(head)]
                        if not b"\x7fELF".startswith(head):
                            # said now, not after inflating the whole stream
                            raise ExtableError(f"{self.compression}-compressed data is not "
                                               "an ELF file", self.path)
                    written += len(chunk)
                    if written > limit:
                        raise ExtableError(
                            f"{self.compression} data decompresses to more than "
                            f"{limit >> 20} MiB ({written // max(packed, 1)} times its "
                            f"{packed} bytes): a decompression bomb? (decompress it "
                            "yourself if it is real)", self.path)
                    try:
                        out.write(chunk)
                    except OSError as exc:     # a full /tmp is not corrupt input
                        raise ExtableError(f"cannot decompress into {tempfile.gettempdir()}: "
                                           f"{exc.strerror}", self.path) from None
            out.flush()
            out.seek(0)
            return out
        except (ExtableError, MissingExtra):
            out.close()
            raise
        except (lzma.LZMAError, OSError, EOFError, ValueError) as exc:
            out.close()
            detail = str(exc).strip() or type(exc).__name__
            raise ExtableError(f"corrupt {self.compression} data: {detail}", self.path) from None
        except Exception as exc:   # zstandard.ZstdError and friends
            out.close()
            raise ExtableError(f"corrupt {self.compression} data: {exc}", self.path) from None

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

