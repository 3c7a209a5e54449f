"""Opening a kernel object: plain, or compressed as distributions ship modules.

The compression is told by the file's first bytes, never by its name. A
compressed file is streamed into an unlinked temporary file and that is
mapped, so neither the compressed nor the decompressed bytes are ever held in
memory whole.
"""

from __future__ import annotations

import gzip
import lzma
import mmap
import os
import tempfile
from typing import IO, Callable

from ..errors import ExtableError
from .detect import compression_of

#: No module or vmlinux comes near this; a bigger stream is not what we think it is.
MAX_DECOMPRESSED = 4 << 30
_CHUNK = 1 << 20


def _zstd_reader(f: IO[bytes]) -> IO[bytes]:
    try:
        import zstandard
    except ImportError:
        raise ExtableError("reading zstd needs the zstandard package "
                           "(pip install zstandard)") from None
    reader: IO[bytes] = zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True)
    return reader


def _xz_reader(f: IO[bytes]) -> IO[bytes]:
    return lzma.LZMAFile(f)        # type: ignore[return-value]


def _gzip_reader(f: IO[bytes]) -> IO[bytes]:
    return gzip.GzipFile(fileobj=f)   # type: ignore[return-value]


_READERS: dict[str, Callable[[IO[bytes]], IO[bytes]]] = {
    "xz": _xz_reader, "gzip": _gzip_reader, "zstd": _zstd_reader}


class Source:
    """A kernel object's bytes, mapped read-only; ``file`` is for pyelftools."""

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
        try:
            size = os.fstat(self.file.fileno()).st_size
            if size == 0:
                raise ExtableError("empty file" if not self.compression else
                                   f"{self.compression} data decompresses to nothing", self.path)
            self.data = mmap.mmap(self.file.fileno(), 0, access=mmap.ACCESS_READ)
        except BaseException:
            self.file.close()
            raise

    def _decompress(self, raw: IO[bytes]) -> IO[bytes]:
        assert self.compression is not None
        out = tempfile.TemporaryFile(prefix="extable-kernel-")
        try:
            with _READERS[self.compression](raw) as stream:
                written = 0
                while chunk := stream.read(_CHUNK):
                    written += len(chunk)
                    if written > MAX_DECOMPRESSED:
                        raise ExtableError(f"{self.compression} data decompresses to more "
                                           f"than {MAX_DECOMPRESSED >> 30} GiB", self.path)
                    out.write(chunk)
            out.flush()
            out.seek(0)
            return out
        except ExtableError:
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
        try:
            self.data.close()
        except (BufferError, AttributeError):   # a numpy view still refers to it
            pass
        self.file.close()

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

