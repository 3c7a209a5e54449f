"""The ELF reader: headers, segments and sections through pyelftools, symbols in bulk.

Only what the compiler needs is read: the machine, the loadable segments, the
sections by name, and the function symbols (name, start, size). Every offset the
file gives is checked against the file's size before it is used, so a damaged
file raises :class:`ExtableError` and never an exception from deep inside a
parser.
"""

from __future__ import annotations

import fnmatch
import mmap
import os
import struct
from dataclasses import dataclass, replace
from functools import cached_property
from typing import IO, Iterator

import numpy as np
from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from .errors import ExtableError

EM_X86_64 = 62
EM_AARCH64 = 183
MACHINES = {EM_X86_64: "x86_64", EM_AARCH64: "aarch64"}

ET_EXEC, ET_DYN = 2, 3
PT_LOAD = 1
PF_X = 1
SHT_SYMTAB, SHT_STRTAB, SHT_NOBITS, SHT_DYNSYM = 2, 3, 8, 11
SHF_ALLOC, SHF_EXECINSTR = 0x2, 0x4
STT_FUNC = 2
SHN_UNDEF = 0

#: Elf64_Sym, read straight from the section bytes (pyelftools builds one Python
#: object per symbol, which is 40 µs each: too slow for 100k-symbol files).
SYM_DTYPE = np.dtype(
    [("name", "<u4"), ("info", "u1"), ("other", "u1"), ("shndx", "<u2"),
     ("value", "<u8"), ("size", "<u8")]
)

# pyelftools raises these on damaged input; the reader turns them into ExtableError.
_PARSE_ERRORS = (ELFError, struct.error, ValueError, IndexError, KeyError,
                 UnicodeDecodeError, OverflowError, AttributeError, TypeError)


@dataclass(frozen=True)
class Segment:
    """One PT_LOAD program header."""

    vaddr: int
    memsz: int
    offset: int
    filesz: int
    flags: int

    @property
    def executable(self) -> bool:
        return bool(self.flags & PF_X)

    @property
    def end(self) -> int:
        return self.vaddr + self.memsz


@dataclass(frozen=True)
class Section:
    """One section header, with its name resolved."""

    index: int
    name: str
    type: int
    flags: int
    addr: int
    offset: int
    size: int
    link: int
    entsize: int

    @property
    def alloc(self) -> bool:
        return bool(self.flags & SHF_ALLOC)

    @property
    def has_file_bytes(self) -> bool:
        return self.type != SHT_NOBITS


@dataclass(frozen=True)
class FunctionSymbols:
    """STT_FUNC symbols of nonzero size, in file order, as parallel arrays."""

    table: str               # ".symtab" or ".dynsym"
    names: list[str]
    start: np.ndarray        # uint64
    size: np.ndarray         # uint64

    def __len__(self) -> int:
        return len(self.names)

    @property
    def end(self) -> np.ndarray:
        return self.start + self.size

    def matching(self, pattern: str) -> Iterator[int]:
        """Indices of the functions whose name matches a glob."""
        if not any(c in pattern for c in "*?["):
            return (i for i, name in enumerate(self.names) if name == pattern)
        match = fnmatch.fnmatchcase
        return (i for i, name in enumerate(self.names) if match(name, pattern))


class ElfImage:
    """An ELF64 little-endian ET_DYN or ET_EXEC file for x86-64 or aarch64.

    The file is mapped read-only; use as a context manager or call :meth:`close`.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        try:
            self._file: IO[bytes] = open(self.path, "rb")
        except OSError as exc:
            raise ExtableError(f"cannot open: {exc.strerror}", self.path) from None
        try:
            size = os.fstat(self._file.fileno()).st_size
            self.data: bytes | mmap.mmap = (
                mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ) if size else b"")
            self._parse()
        except ExtableError:
            self.close()
            raise
        except OSError as exc:
            self.close()
            raise ExtableError(f"cannot read: {exc.strerror}", self.path) from None
        except _PARSE_ERRORS as exc:
            self.close()
            raise ExtableError(f"malformed ELF: {_describe(exc)}", self.path) from None

    def __enter__(self) -> ElfImage:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        data = getattr(self, "data", None)
        if isinstance(data, mmap.mmap):
            try:
                data.close()
            except BufferError:   # a numpy view still refers to it; GC closes it later
                pass
        self._file.close()

    def _error(self, message: str) -> ExtableError:
        return ExtableError(message, self.path)

    # -- headers -----------------------------------------------------------

    def _parse(self) -> None:
        data, size = self.data, len(self.data)
        if size < 4 or data[:4] != b"\x7fELF":
            raise self._error("not an ELF file")
        if size < 64:
            raise self._error(f"truncated ELF header ({size} bytes)")
        if data[4] != 2:
            raise self._error("32-bit ELF is not supported (need ELF64)")
        if data[5] != 1:
            raise self._error("big-endian ELF is not supported (need little-endian)")
        (e_type, e_machine, _v, _entry, e_phoff, e_shoff, _fl, _eh, e_phentsize,
         e_phnum, e_shentsize, e_shnum, e_shstrndx) = struct.unpack_from(
            "<HHIQQQIHHHHHH", data, 16)
        if e_machine not in MACHINES:
            raise self._error(f"unsupported machine {e_machine} (need x86-64 or aarch64)")
        if e_type not in (ET_EXEC, ET_DYN):
            raise self._error(f"unsupported ELF type {e_type} (need ET_DYN or ET_EXEC)")
        if e_phnum and (e_phentsize != 56 or e_phoff + e_phnum * 56 > size):
            raise self._error("program header table lies outside the file")
        if e_shnum and (e_shentsize != 64 or e_shoff + e_shnum * 64 > size):
            raise self._error("section header table lies outside the file")
        if e_shnum and e_shstrndx >= e_shnum:
            raise self._error(f"section name table index {e_shstrndx} out of range")
        self.machine: int = e_machine
        self.type: int = e_type

        elf = ELFFile(self._file)
        self.segments: list[Segment] = [
            Segment(s["p_vaddr"], s["p_memsz"], s["p_offset"], s["p_filesz"], s["p_flags"])
            for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]
        for seg in self.segments:
            if seg.offset + seg.filesz > size or seg.filesz > seg.memsz:
                raise self._error(f"PT_LOAD at {seg.vaddr:#x} lies outside the file")

        self.sections: list[Section] = []
        if e_shnum:
            names = elf.get_section(e_shstrndx)
            if names["sh_type"] != "SHT_STRTAB" or names["sh_offset"] + names["sh_size"] > size:
                raise self._error("section name table is damaged")
        for index in range(e_shnum):
            hdr = elf._get_section_header(index)
            sec = Section(index, "", _sh_type(hdr["sh_type"]), hdr["sh_flags"], hdr["sh_addr"],
                          hdr["sh_offset"], hdr["sh_size"], hdr["sh_link"], hdr["sh_entsize"])
            if sec.has_file_bytes and sec.type and sec.offset + sec.size > size:
                raise self._error(f"section {index} extends past the end of the file")
            name = self._cstring(names["sh_offset"], names["sh_size"], hdr["sh_name"],
                                 "section name")
            self.sections.append(replace(sec, name=name))

    def _cstring(self, table_offset: int, table_size: int, offset: int, what: str) -> str:
        if offset >= table_size:
            raise self._error(f"{what} offset {offset} out of range")
        end = self.data.find(b"\0", table_offset + offset, table_offset + table_size)
        if end < 0:
            raise self._error(f"{what} at offset {offset} is not terminated")
        return bytes(self.data[table_offset + offset:end]).decode("utf-8", "surrogateescape")

    # -- queries -----------------------------------------------------------

    @property
    def machine_name(self) -> str:
        return MACHINES[self.machine]

    @property
    def executable_segments(self) -> list[Segment]:
        return [s for s in self.segments if s.executable]

    def section(self, name: str) -> Section | None:
        """The first section called ``name``, or None."""
        return next((s for s in self.sections if s.name == name), None)

    def section_bytes(self, section: Section) -> bytes:
        if not section.has_file_bytes:
            return b""
        return bytes(self.data[section.offset:section.offset + section.size])

    def _symbol_table(self) -> Section | None:
        by_type = {s.type: s for s in reversed(self.sections)}
        return by_type.get(SHT_SYMTAB) or by_type.get(SHT_DYNSYM)

    def _raw_symbols(self) -> tuple[Section, np.ndarray, Section]:
        symtab = self._symbol_table()
        if symtab is None:
            raise self._error("no symbol table (.symtab or .dynsym)")
        if symtab.entsize != SYM_DTYPE.itemsize or symtab.size % SYM_DTYPE.itemsize:
            raise self._error(f"{symtab.name}: bad symbol entry size {symtab.entsize}")
        if symtab.link >= len(self.sections) or self.sections[symtab.link].type != SHT_STRTAB:
            raise self._error(f"{symtab.name}: linked string table is missing")
        raw = np.frombuffer(self.data, SYM_DTYPE, count=symtab.size // SYM_DTYPE.itemsize,
                            offset=symtab.offset)
        return symtab, raw, self.sections[symtab.link]

    def _names(self, strtab: Section, offsets: np.ndarray, table: str) -> list[str]:
        strings = np.frombuffer(self.data, np.uint8, count=strtab.size, offset=strtab.offset)
        if len(offsets) and int(offsets.max()) >= strtab.size:
            raise self._error(f"{table}: symbol name offset {int(offsets.max())} out of range")
        nuls = np.flatnonzero(strings == 0)
        where = np.searchsorted(nuls, offsets)
        if len(offsets) and (len(nuls) == 0 or int(where.max()) >= len(nuls)):
            raise self._error(f"{table}: symbol name is not terminated")
        ends = nuls[where] if len(offsets) else where
        blob = bytes(strings)
        return [blob[a:b].decode("utf-8", "surrogateescape")
                for a, b in zip(offsets.tolist(), ends.tolist())]

    @cached_property
    def functions(self) -> FunctionSymbols:
        """Defined STT_FUNC symbols with nonzero size: the function ranges."""
        symtab, raw, strtab = self._raw_symbols()
        keep = ((raw["info"] & 0xF) == STT_FUNC) & (raw["size"] > 0) & (raw["shndx"] != SHN_UNDEF)
        chosen = raw[keep]
        names = self._names(strtab, chosen["name"], symtab.name)
        return FunctionSymbols(symtab.name, names, chosen["value"].astype(np.uint64),
                               chosen["size"].astype(np.uint64))

    @cached_property
    def symbol_addresses(self) -> dict[str, int]:
        """Every defined symbol's name → value (the first one wins), for labels."""
        symtab, raw, strtab = self._raw_symbols()
        defined = raw[(raw["shndx"] != SHN_UNDEF) & (raw["name"] != 0)]
        names = self._names(strtab, defined["name"], symtab.name)
        table: dict[str, int] = {}
        for name, value in zip(names, defined["value"].tolist()):
            table.setdefault(name, value)
        return table

    @cached_property
    def _sorted_functions(self) -> tuple[np.ndarray, np.ndarray, list[str]]:
        funcs = self.functions
        order = np.argsort(funcs.start, kind="stable")
        return funcs.start[order], funcs.end[order], [funcs.names[i] for i in order.tolist()]

    def describe(self, address: int) -> str:
        """``name+0xoff`` for an address inside a function, else the hex address."""
        try:
            starts, ends, names = self._sorted_functions
        except ExtableError:
            return f"{address:#x}"
        i = int(np.searchsorted(starts, np.uint64(address), side="right")) - 1
        # A later-starting function may end before an earlier, larger one; look back a little.
        for j in range(i, max(i - 8, -1), -1):
            if int(starts[j]) <= address < int(ends[j]):
                off = address - int(starts[j])
                return f"{names[j]}+{off:#x}" if off else names[j]
        return f"{address:#x}"


def _sh_type(value: object) -> int:
    """pyelftools names known section types; we want the number."""
    if isinstance(value, int):
        return value
    return {"SHT_NULL": 0, "SHT_PROGBITS": 1, "SHT_SYMTAB": SHT_SYMTAB,
            "SHT_STRTAB": SHT_STRTAB, "SHT_NOBITS": SHT_NOBITS,
            "SHT_DYNSYM": SHT_DYNSYM}.get(str(value), -1)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text and text[0] else type(exc).__name__
