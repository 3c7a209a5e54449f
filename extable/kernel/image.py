"""The ELF side of a kernel object: sections, symbols, the kernel version.

pyelftools reads the headers; the records (symbols, relocations, the table
itself) are unpacked with ``struct`` from the bytes of just those sections,
read with ``pread``, so a 600 MB vmlinux costs its section headers plus the
few sections used, and a file truncated under us is an error, not a SIGBUS.

Kept apart from :mod:`extable.elf` on purpose: that reader refuses ET_REL and
checks what the user-space compiler needs; this one needs ``sh_info`` (which
section a relocation section applies to), relocatable objects and compressed
input, and must not change when the other one does.
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass
from functools import cached_property
from operator import itemgetter

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from ..errors import ExtableError
from .source import Source

EM_X86_64, EM_AARCH64 = 62, 183
ARCHES = {EM_X86_64: "x86_64", EM_AARCH64: "arm64"}
ET_REL, ET_EXEC, ET_DYN = 1, 2, 3
SHT_SYMTAB, SHT_NOBITS, SHT_RELA, SHT_REL = 2, 8, 4, 9
SHF_ALLOC, SHF_EXECINSTR, SHF_TLS = 0x2, 0x4, 0x400
SHN_UNDEF, SHN_LORESERVE = 0, 0xFF00
STT_NOTYPE, STT_FUNC, STT_SECTION = 0, 2, 3

#: Elf64_Sym: name, info, other, shndx, value, size.
SYM = struct.Struct("<IBBHQQ")
Sym = tuple[int, int, int, int, int, int]
#: A code location as one sortable number: section index << KEY_SHIFT | offset.
KEY_SHIFT = 64

_PARSE_ERRORS = (ELFError, struct.error, ValueError, IndexError, KeyError, UnicodeDecodeError,
                 OverflowError, AttributeError, TypeError)
_VERSION = re.compile(rb"(\d+)\.(\d+)[^\s\0]*")


@dataclass(frozen=True)
class Section:
    index: int
    name: str
    type: int
    flags: int
    addr: int
    offset: int
    size: int
    link: int
    info: int
    entsize: int

    @property
    def executable(self) -> bool:
        return bool(self.flags & SHF_EXECINSTR)


@dataclass(frozen=True)
class Symbols:
    """Code symbols with a size, sorted by (section, offset), names decoded on demand."""

    key: list[int]         # section index << KEY_SHIFT | offset in section, ascending
    size: list[int]
    name_off: list[int]    # into strtab
    strtab: Section


def parse_version(text: str | bytes) -> tuple[int, int] | None:
    raw = text.encode() if isinstance(text, str) else text
    m = _VERSION.match(raw)
    return (int(m.group(1)), int(m.group(2))) if m else None


class KernelImage:
    """A kernel module (ET_REL) or image (ET_EXEC, ET_DYN) for x86-64 or arm64."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.source = Source(path)
        self.path = self.source.path
        self._bytes: dict[int, bytes] = {}
        try:
            self._parse()
        except ExtableError:
            self.close()
            raise
        except _PARSE_ERRORS as exc:
            self.close()
            text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ExtableError(f"malformed ELF: {text}", self.path) from None

    def close(self) -> None:
        self.source.close()

    def __enter__(self) -> KernelImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def error(self, message: str) -> ExtableError:
        return ExtableError(message, self.path)

    def _parse(self) -> None:
        size = self.source.size
        data = self.source.pread(min(64, size), 0)
        what = f"{self.source.compression}-compressed data" if self.source.compression else "file"
        if size < 64 or data[:4] != b"\x7fELF":
            raise self.error(f"{what} is not an ELF file")
        if data[4] != 2 or data[5] != 1:
            raise self.error("not a 64-bit little-endian ELF file")
        e_type, e_machine = struct.unpack_from("<HH", data, 16)
        if e_machine not in ARCHES:
            raise self.error(f"unsupported machine {e_machine} (need x86-64 or aarch64)")
        if e_type not in (ET_REL, ET_EXEC, ET_DYN):
            raise self.error(f"unsupported ELF type {e_type}")
        e_shoff, = struct.unpack_from("<Q", data, 40)
        e_shentsize, e_shnum = struct.unpack_from("<HH", data, 58)
        if e_shnum == 0 or e_shentsize != 64 or e_shoff + 64 * e_shnum > size:
            raise self.error("section header table is missing or lies outside the file")
        self.type: int = e_type
        self.arch: str = ARCHES[e_machine]
        elf = ELFFile(self.source.file)
        self.sections: list[Section] = []
        names_size = elf.get_section(elf.get_shstrndx()).header["sh_size"]
        for index, sec in enumerate(elf.iter_sections()):
            h = sec.header
            if h["sh_name"] >= names_size:    # pyelftools would call it ""
                raise self.error(f"section {index}: name offset {h['sh_name']:#x} lies "
                                 "outside the section name table")
            s = Section(index, sec.name, _num(h["sh_type"]), h["sh_flags"], h["sh_addr"],
                        h["sh_offset"], h["sh_size"], h["sh_link"], h["sh_info"],
                        h["sh_entsize"])
            if s.type not in (0, SHT_NOBITS) and s.offset + s.size > size:
                raise self.error(f"section {s.name or index} extends past the end of the file")
            self.sections.append(s)
        self._by_name = {}
        for s in reversed(self.sections):
            self._by_name[s.name] = s

    # -- queries -------------------------------------------------------------

    @property
    def linked(self) -> bool:
        return self.type != ET_REL

    def section(self, name: str) -> Section | None:
        return self._by_name.get(name)

    def record_count(self, section: Section, record: struct.Struct) -> int:
        """How many ``record``s the section holds; an error unless a whole number of them
        lies in the file."""
        if section.type == SHT_NOBITS:
            raise self.error(f"{section.name} has no bytes in the file")
        if section.size % record.size:
            raise self.error(f"{section.name}: size {section.size} is not a multiple of "
                             f"{record.size}")
        if section.offset + section.size > self.source.size:
            raise self.error(f"{section.name} extends past the end of the file")
        return section.size // record.size

    def records(self, section: Section, record: struct.Struct) -> list[tuple[int, ...]]:
        """The section's bytes unpacked as consecutive ``record``s."""
        self.record_count(section, record)
        return list(record.iter_unpack(self.section_bytes(section)))

    def section_bytes(self, section: Section) -> bytes:
        """The section's bytes, read once."""
        if section.index not in self._bytes:
            self._bytes[section.index] = (b"" if section.type == SHT_NOBITS else
                                          self.source.pread(section.size, section.offset))
        return self._bytes[section.index]

    def cstring(self, section: Section, offset: int) -> str:
        if offset >= section.size:
            raise self.error(f"{section.name}: string offset {offset} out of range")
        blob = self.section_bytes(section)
        end = blob.find(b"\0", offset)
        if end < 0:
            raise self.error(f"{section.name}: string at {offset} is not terminated")
        return blob[offset:end].decode("utf-8", "surrogateescape")

    @cached_property
    def symtab(self) -> tuple[list[Sym], Section] | None:
        """The raw .symtab and its string table, or None when stripped."""
        tab = next((s for s in self.sections if s.type == SHT_SYMTAB), None)
        if tab is None:
            return None
        if tab.link >= len(self.sections):
            raise self.error(f"{tab.name}: string table index {tab.link} out of range")
        return self.records(tab, SYM), self.sections[tab.link]   # type: ignore[return-value]

    @cached_property
    def code_symbols(self) -> Symbols | None:
        """FUNC and NOTYPE symbols with a size in a real section (what names code)."""
        if self.symtab is None:
            return None
        raw, strtab = self.symtab
        limit = min(SHN_LORESERVE, len(self.sections))
        base = [s.addr if self.linked else 0 for s in self.sections]
        chosen = [((shndx << KEY_SHIFT) | (value - base[shndx]), size, name)
                  for name, info, _other, shndx, value, size in raw
                  if size and SHN_UNDEF < shndx < limit and (info & 0xF) in (STT_FUNC, STT_NOTYPE)
                  and value >= base[shndx]]
        chosen.sort(key=itemgetter(0))
        return Symbols([c[0] for c in chosen], [c[1] for c in chosen], [c[2] for c in chosen],
                       strtab)

    def symbol_name(self, syms: Symbols, i: int) -> str:
        return self.cstring(syms.strtab, int(syms.name_off[i]))

    def find_symbols(self, name: str) -> list[tuple[int, int]]:
        """(section index, offset) of every defined symbol called ``name``."""
        if self.symtab is None:
            return []
        raw, strtab = self.symtab
        needle = name.encode("utf-8", "surrogateescape") + b"\0"
        blob = self.section_bytes(strtab)
        offsets = []
        at = blob.find(needle)
        while at >= 0:
            offsets.append(at)
            at = blob.find(needle, at + 1)
        wanted = set(offsets)
        out = set()
        for name_off, _info, _other, shndx, value, _size in raw:
            if name_off in wanted and SHN_UNDEF != shndx < len(self.sections):
                out.add((shndx, value - (self.sections[shndx].addr if self.linked else 0)))
        return sorted(out)

    # -- the kernel version -------------------------------------------------------

    @cached_property
    def version_string(self) -> str | None:
        """``vermagic`` of a module, the ``Linux version`` banner's release of an image."""
        if not self.linked:
            modinfo = self.section(".modinfo")
            if modinfo is None or modinfo.type == SHT_NOBITS:
                return None
            blob = self.section_bytes(modinfo)
            at = blob.find(b"vermagic=")
            if at < 0:
                return None
            end = blob.find(b"\0", at)
            words = blob[at + 9:end if end >= 0 else None].decode("utf-8", "replace").split()
            return words[0] if words else None
        rodata = self.section(".rodata")
        lo, hi = ((rodata.offset, rodata.offset + rodata.size)
                  if rodata is not None and rodata.type != SHT_NOBITS else (0, self.source.size))
        return self._banner(lo, hi)

    def _banner(self, lo: int, hi: int) -> str | None:
        """The release in the first ``Linux version N.M...`` between two file offsets."""
        chunk, overlap = 8 << 20, 256
        for start in range(lo, hi, chunk):
            blob = self.source.pread(min(chunk + overlap, hi - start), start)
            at = blob.find(b"Linux version ")
            while at >= 0:
                m = _VERSION.match(blob, at + 14)
                if m and m.end() < len(blob):
                    return m.group(0).decode("utf-8", "replace")
                at = blob.find(b"Linux version ", at + 1)
        return None


def _num(value: object) -> int:
    if isinstance(value, int):
        return value
    return {"SHT_NULL": 0, "SHT_PROGBITS": 1, "SHT_SYMTAB": SHT_SYMTAB, "SHT_STRTAB": 3,
            "SHT_RELA": SHT_RELA, "SHT_NOBITS": SHT_NOBITS, "SHT_REL": SHT_REL}.get(str(value), -1)
