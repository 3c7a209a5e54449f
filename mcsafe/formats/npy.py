"""numpy's .npy and .npz files through mcsafe: ``mcsafe.arrays.load``, numpy.load's
drop-in.

An array's bytes are copied out of a mapping of the file by the table-driven copy (a
path is read once through a mapping of exactly the file, mcsafe.mapped.once, which
hands over to a MappedFile at a fault; an open MappedFile is read through itself), so
a bad page or a file cut under the reader raises MemoryFaultError naming the array,
the element and the file offset instead of killing the process with SIGBUS. Headers
are read by numpy.lib.format's own readers, so what numpy refuses is refused here.
In a .npz, members stored without compression are read the same way; compressed
members are decompressed by zipfile from bytes read through mcsafe, so a bad page
there raises naming the member and the file offset, never the element: loading one
says so with an UnprotectedMemberWarning.
"""

from __future__ import annotations

import errno
import io
import os
import pickle
import re
import struct
import warnings
import zipfile
import zlib
from collections.abc import Mapping
from typing import Any, Iterator

from extable.errors import missing_extra

try:
    import numpy as np
    from numpy.lib import format as npformat
except ModuleNotFoundError as _exc:
    raise missing_extra(_exc, "numpy", "mcsafe.formats", "numpy") from None

from .._mcsafe import _prefault
from ..mapped._sys import PREFAULT_BYTES
from .._types import MemoryFaultError
from ..fileio import MappedFileIO
from ..mapped import MappedFile
from ..mapped.once import ReadOnce, open_once
from ._read import Stopped, fill

MAX_HEADER_SIZE = 10000             # numpy.load's default max_header_size
ZIP_PREFIXES = (b"PK\x03\x04", b"PK\x05\x06")   # a zip archive; an empty one
LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")     # a zip member's local file header
ENCODINGS = ("ASCII", "latin1", "bytes")
SMALL_FILE = 64 << 10               # read whole, in one call
HEAD = 4096                         # read first from a file read once: any usual header


class UnprotectedMemberWarning(UserWarning):
    """A .npz member is compressed: a bad page in it can be named by file offset only,
    not by element (its bytes pass through zlib before they are an array)."""


def load(file: str | os.PathLike[str] | MappedFile, mmap_mode: None = None,
         allow_pickle: bool = False, fix_imports: bool = True, encoding: str = "ASCII", *,
         max_header_size: int = MAX_HEADER_SIZE) -> Any:
    """Load an array from a .npy file, the arrays of a .npz archive (an NpzFile, as
    numpy's, to close), or a pickle (allow_pickle=True only), as numpy.load does.

    ``file`` is a path or an open MappedFile (which stays the caller's). Arrays are
    new arrays, never views of the file: mmap_mode must be None, since a memory
    map is what dies of SIGBUS at a bad page. A bad byte of an array, or the end of
    the file inside one, raises MemoryFaultError naming the array, the element
    (``element``, and its index) and the file offset."""
    if encoding not in ENCODINGS:
        raise ValueError("encoding must be 'ASCII', 'latin1', or 'bytes'")
    if mmap_mode is not None:
        raise ValueError(f"mmap_mode={mmap_mode!r}: mcsafe.arrays.load returns new arrays; "
                         "a memory map of the file dies of SIGBUS at a bad page")
    if not isinstance(file, (str, os.PathLike, MappedFile)):
        raise TypeError(f"file must be a path or a MappedFile, not {type(file).__name__} "
                        "(a file object would be read through read(2), not the mapping)")
    owned = not isinstance(file, MappedFile)
    mf = file if isinstance(file, MappedFile) else open_once(file)
    path = mf.path
    keep = False
    try:
        size = mf.size
        reader = _Reader(mf, path, 0, size, _head(mf, size))
        magic = reader.read(len(npformat.MAGIC_PREFIX))
        reader.pos = 0
        if not magic:
            raise EOFError(f"{path}: no data left in file")
        pickled = {"encoding": encoding, "fix_imports": fix_imports}
        if magic == npformat.MAGIC_PREFIX:
            return _read_npy(reader, f"{path}", allow_pickle, pickled, max_header_size)
        is_zip = magic.startswith(ZIP_PREFIXES)
        if not is_zip and not allow_pickle:
            raise ValueError(f"{path}: this file contains pickled (object) data; if you "
                             "trust it, load it with allow_pickle=True")
        if isinstance(mf, ReadOnce):
            # an archive or a pickle is read through a MappedFile of the same file
            once, mf = mf, mf.mapped()
            once.close()
        if is_zip:
            npz = NpzFile(mf, own=owned, allow_pickle=allow_pickle, pickle_kwargs=pickled,
                          max_header_size=max_header_size)
            keep = owned            # the NpzFile closes it
            return npz
        with io.BufferedReader(MappedFileIO(mf, closefd=False)) as f:
            try:
                return pickle.load(f, **pickled)    # type: ignore[arg-type]
            except MemoryFaultError:
                raise
            except Exception as exc:
                raise pickle.UnpicklingError(f"{path}: failed to interpret the file as a "
                                             f"pickle ({exc})") from exc
    finally:
        if owned and not keep:
            mf.close()


def _head(mf: MappedFile | ReadOnce, size: int) -> bytes:
    """A small file's bytes, read in one call (each read that reaches a file's last
    page asks its size), or a file read once's first HEAD bytes; b"" for a larger
    file, or if the read fails (the reads that follow then say where)."""
    if isinstance(mf, ReadOnce):
        size = min(size, HEAD)
    elif size > SMALL_FILE:
        return b""
    data = bytearray(size)
    try:
        fill(mf, memoryview(data), 0)
    except Stopped:
        return b""
    return bytes(data)


class _Reader:
    """Bytes [start, end) of a MappedFile as a file object, for numpy.lib.format's
    header readers; the end of the file is an end of file, a bad byte an error.
    ``head`` holds the file's first bytes, already read."""

    def __init__(self, mf: MappedFile | ReadOnce, path: str, start: int, end: int,
                 head: bytes = b"") -> None:
        self.mf, self.path, self.pos, self.end, self.head = mf, path, start, end, head

    def read(self, n: int = -1) -> bytes:
        n = self.end - self.pos if n < 0 else max(0, min(n, self.end - self.pos))
        if self.pos + n <= len(self.head):
            self.pos += n
            return self.head[self.pos - n:self.pos]
        data = bytearray(n)
        try:
            fill(self.mf, memoryview(data), self.pos)
        except Stopped as stop:
            if stop.fault.cause != "truncated":
                raise stop.error(f"the header of {self.path}: {stop.where()} at file offset "
                                 f"{stop.fault.offset}", self.mf.path, 0) from None
            # a copy, not del: the traceback may still hold views of data
            data = data[:stop.got]
        self.pos += len(data)
        return bytes(data)


def _read_npy(reader: _Reader, what: str, allow_pickle: bool, pickled: dict[str, Any],
              max_header_size: int) -> Any:
    """The array whose .npy bytes start at reader.pos, as numpy.lib.format.read_array
    reads it, with its bytes copied straight into the new array."""
    if allow_pickle:
        max_header_size = 2**64         # a trusted file, as numpy.load says
    try:
        version = npformat.read_magic(reader)
        shape, fortran, dtype = _header(reader, version, max_header_size)
    except ValueError as exc:
        raise ValueError(f"{what}: not a .npy file: {_first_line(exc)}") from None
    mf = reader.mf
    if dtype.hasobject:
        if not allow_pickle:
            raise ValueError(f"{what}: object arrays cannot be loaded when "
                             "allow_pickle=False")
        pickles = mf.mapped() if isinstance(mf, ReadOnce) else mf
        try:
            with io.BufferedReader(MappedFileIO(pickles, closefd=False)) as f:
                f.seek(reader.pos)
                return pickle.load(f, **pickled)
        finally:
            if pickles is not mf:
                pickles.close()
    if any(d < 0 for d in shape):
        raise ValueError(f"{what}: not a .npy file: negative dimensions in shape {shape}")
    count = 1
    for d in shape:
        count *= d
    nbytes = count * dtype.itemsize
    if reader.pos + nbytes > reader.end:
        # Cannot hold the array now: say so before asking numpy for memory a
        # hostile shape would exhaust (numpy.load: "Failed to read all data").
        have = max(0, reader.end - reader.pos) // max(dtype.itemsize, 1)
        raise MemoryFaultError(_end(mf, min(reader.end, mf.size)),
                               f"{what}: the array needs {nbytes} bytes from file offset "
                               f"{reader.pos}, the data ends after {have} of its {count} "
                               "elements", mf.path, errno.EIO)
    out = np.empty(shape[::-1] if fortran else shape, dtype)
    raw = out.reshape(-1).view(np.uint8)
    if nbytes and reader.pos + nbytes <= len(reader.head):
        raw[:] = np.frombuffer(reader.head, np.uint8, nbytes, reader.pos)
    elif nbytes:
        if nbytes >= PREFAULT_BYTES:
            _prefault(raw)      # type: ignore[arg-type]  # an ndarray
        try:
            got = mf.readinto(raw, reader.pos)     # type: ignore[arg-type]  # an ndarray
        except MemoryFaultError:
            got = 0
        if got != nbytes:
            _fail(mf, raw, reader.pos, got, what, dtype, tuple(shape), fortran)
    reader.pos += nbytes
    return out.T if fortran else out


# The header numpy.save writes (numpy.lib.format._wrap_header), a dict literal in
# one fixed form. A header in exactly this form (a descr of printable ASCII without
# quotes or backslashes, True or False, a tuple of decimal ints) is read here to
# what numpy's reader makes of it with ast.literal_eval, without compiling it:
# compiling is most of what numpy.load costs for a small array. Any other header,
# and any error, goes to numpy's reader, which decides.
_INT = "(?:0|[1-9][0-9]*)"
_SAVED = re.compile(r"\{'descr': '([ !#-&(-\[\]-~]*)', 'fortran_order': (True|False), "
                    rf"'shape': \((|{_INT},|{_INT}(?:, {_INT})+,?)\), \}} *\n?\Z")
_LENGTHS = {(1, 0): ("<H", "latin1"), (2, 0): ("<I", "latin1"), (3, 0): ("<I", "utf8")}


def _header(reader: _Reader, version: tuple[int, int], max_header_size: int
            ) -> tuple[tuple[int, ...], bool, np.dtype[Any]]:
    start = reader.pos
    saved = _saved_header(reader, version, max_header_size)
    if saved is not None:
        return saved
    reader.pos = start
    if version == (1, 0):
        return npformat.read_array_header_1_0(reader, max_header_size=max_header_size)
    if version == (2, 0):
        return npformat.read_array_header_2_0(reader, max_header_size=max_header_size)
    # Version 3.0 (UTF-8 field names) has no public reader: numpy's own, private one.
    impl = getattr(np.lib, "_format_impl", npformat)
    return impl._read_array_header(reader, version,     # type: ignore[no-any-return]
                                   max_header_size=max_header_size)


def _saved_header(reader: _Reader, version: tuple[int, int], max_header_size: int
                  ) -> tuple[tuple[int, ...], bool, np.dtype[Any]] | None:
    """(shape, fortran_order, dtype) of a header in numpy.save's form, read from
    reader; None for any other (the reader's position is then undefined)."""
    if version not in _LENGTHS:
        return None
    fmt, encoding = _LENGTHS[version]
    size = struct.calcsize(fmt)
    raw = reader.read(size)
    if len(raw) != size:
        return None
    length, = struct.unpack(fmt, raw)
    body = reader.read(length)
    if len(body) != length:
        return None
    try:
        header = body.decode(encoding)
    except UnicodeDecodeError:
        return None
    m = _SAVED.match(header) if len(header) <= max_header_size else None
    if m is None:
        return None
    descr, fortran, shape = m.groups()
    try:
        dtype = np.dtype(descr)         # numpy's descr_to_dtype of a str
        dims = tuple(int(d) for d in shape.split(",") if d)    # past int's digit limit: raises
    except Exception:           # numpy's reader says what is wrong with it
        return None
    return dims, fortran == "True", dtype


def _fail(mf: MappedFile | ReadOnce, raw: Any, offset: int, got: int, what: str, dtype: np.dtype[Any],
          shape: tuple[int, ...], fortran: bool) -> None:
    try:
        fill(mf, memoryview(raw)[got:], offset + got)
    except Stopped as stop:
        at = stop.fault.offset
        element = (at - offset) // max(dtype.itemsize, 1)
        index = ""
        if len(shape) > 1:
            where = np.unravel_index(element, shape, order="F" if fortran else "C")
            index = f" (index {tuple(int(i) for i in where)})"
        count = raw.nbytes // max(dtype.itemsize, 1)
        raise stop.error(f"{what}: array of {dtype} {shape}: {stop.where()} in element "
                         f"{element}{index} of {count} (byte {(at - offset) % dtype.itemsize}) "
                         f"at file offset {at}", mf.path, element) from None


def _end(mf: MappedFile | ReadOnce, at: int) -> Any:
    from .._types import FaultInfo

    return FaultInfo(mf.address + at, at, "src", 0, 0, "truncated")


def _first_line(exc: BaseException) -> str:
    text = str(exc).splitlines()
    return text[0][:300] if text else type(exc).__name__


class NpzFile(Mapping[str, Any]):
    """The arrays of a .npz archive, loaded on access, as numpy's NpzFile: ``files``,
    ``f.name`` attribute access, ``in``, iteration, a context manager, close().
    Members stored without compression are read straight from the file, and a bad
    byte names the member and the element; compressed ones pass through zipfile and
    zlib, and warn (UnprotectedMemberWarning) that a bad byte names only the member
    and the file offset. A member that is not a .npy comes back as its bytes."""

    def __init__(self, mf: MappedFile, *, own: bool, allow_pickle: bool,
                 pickle_kwargs: dict[str, Any], max_header_size: int) -> None:
        self.zip: zipfile.ZipFile | None = None
        self._mf: MappedFile | None = None      # set once open: close() is then due
        self._own = own
        self.path = mf.path
        self.allow_pickle = allow_pickle
        self.pickle_kwargs = pickle_kwargs
        self.max_header_size = max_header_size
        self._fileobj = io.BufferedReader(MappedFileIO(mf, closefd=False))
        try:
            self.zip = zipfile.ZipFile(self._fileobj)
        except zipfile.BadZipFile as exc:
            self._fileobj.close()
            raise zipfile.BadZipFile(f"{self.path}: not a .npz archive: {exc}") from None
        self._mf = mf
        names = self.zip.namelist()
        self.files = [n.removesuffix(".npy") for n in names]
        self._files = dict(zip(self.files, names))
        self._files.update(zip(names, names))
        self.f = _Bag(self)

    def __enter__(self) -> NpzFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()
            self.zip = None
            self._fileobj.close()
        mf, self._mf = self._mf, None
        if mf is not None and self._own:
            mf.close()

    def __del__(self) -> None:
        if getattr(self, "_mf", None) is not None:
            self.close()

    def __repr__(self) -> str:
        return f"NpzFile {self.path!r} with keys: {', '.join(self.files[:5])}" + \
            ("..." if len(self.files) > 5 else "")

    def __iter__(self) -> Iterator[str]:
        return iter(self.files)

    def __len__(self) -> int:
        return len(self.files)

    def __contains__(self, key: object) -> bool:
        return key in self._files

    @property
    def compressed(self) -> list[str]:
        """The members (as in ``files``) stored compressed."""
        z = self._zip()
        return [n.removesuffix(".npy") for n in z.namelist()
                if z.getinfo(n).compress_type != zipfile.ZIP_STORED]

    def __getitem__(self, key: str) -> Any:
        try:
            name = self._files[key]
        except (KeyError, TypeError):
            raise KeyError(f"{key} is not a file in the archive") from None
        z = self._zip()
        info = z.getinfo(name)
        what = f"member {name!r} of {self.path}"
        with z.open(info) as member:          # checks the member's local header
            magic = member.read(len(npformat.MAGIC_PREFIX))
            if magic != npformat.MAGIC_PREFIX:
                member.seek(0)
                return member.read()
            if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
                return self._unprotected(member, what)
        return self._stored(info, what)

    def _zip(self) -> zipfile.ZipFile:
        if self.zip is None:
            raise ValueError(f"{self.path}: the archive is closed")
        return self.zip

    def _stored(self, info: zipfile.ZipInfo, what: str) -> Any:
        """A member stored as is: its array read straight into place, and its CRC-32
        checked as zipfile would."""
        assert self._mf is not None
        mf = self._mf
        head = _Reader(mf, self.path, info.header_offset, mf.size).read(LOCAL_HEADER.size)
        fields = LOCAL_HEADER.unpack(head)
        start = info.header_offset + LOCAL_HEADER.size + fields[-2] + fields[-1]
        reader = _Reader(mf, self.path, start, start + info.file_size)
        try:
            array = _read_npy(reader, what, self.allow_pickle, self.pickle_kwargs,
                              self.max_header_size)
        except MemoryFaultError as exc:
            if exc.cause != "truncated" or mf.size < start + info.file_size:
                raise
            # the member ends inside its array: what zipfile says of it
            raise ValueError(f"{what}: EOF: the member ends inside the array "
                             f"({exc.what})") from None
        if reader.pos == reader.end and not array.dtype.hasobject:
            crc = zlib.crc32(_Reader(mf, self.path, start, reader.pos - array.nbytes).read())
            raw = array.T if np.isfortran(array) and array.ndim > 1 else array
            crc = zlib.crc32(raw.reshape(-1).view(np.uint8), crc)
            if crc != info.CRC:
                raise zipfile.BadZipFile(f"Bad CRC-32 for file {info.filename!r} "
                                         f"({what})")
        return array

    def _unprotected(self, member: Any, what: str) -> Any:
        warnings.warn(f"{what} is compressed: a bad byte in it is named by file offset "
                      "only, not by element", UnprotectedMemberWarning, stacklevel=3)
        member.seek(0)
        try:
            return npformat.read_array(member, allow_pickle=self.allow_pickle,
                                       pickle_kwargs=self.pickle_kwargs,
                                       max_header_size=self.max_header_size)
        except MemoryFaultError as exc:
            err = MemoryFaultError(exc.fault, f"{what} (compressed: the element cannot be "
                                              f"named): {exc.what}", exc.filename,
                                   exc.errno or errno.EIO)
            raise err from None


class _Bag:
    """``npz.f.name`` for ``npz["name"]``, as numpy's BagObj."""

    def __init__(self, owner: NpzFile) -> None:
        self._owner = owner

    def __getattr__(self, key: str) -> Any:
        try:
            return self._owner[key]
        except KeyError:
            raise AttributeError(key) from None

    def __dir__(self) -> list[str]:
        return list(self._owner.files)
