"""The ELF reader: headers, segments, sections and function symbols.

Only what the compiler needs is read: the machine, the program headers, the
sections by name, and the function symbols (name, version, start, size). Every
offset the file gives is checked against the file's size before it is used, so
a damaged file raises :class:`ExtableError` and never an exception from deep
inside a parser.

The headers and symbols are read here with :mod:`struct` rather than through
pyelftools because every ``extable`` command starts here: importing pyelftools
and numpy costs 150 ms before a byte is read, and pyelftools builds a Python
object per symbol (40 µs each). pyelftools stays the independent reader that
checks what the writer produced (:mod:`extable.append`) and what the tests
compare against.
"""

from __future__ import annotations

import bisect
import itertools
import os
import stat
import struct
import sys
from collections import namedtuple
from functools import cached_property

from .errors import ExtableError

try:
    from . import _fast
except ImportError:        # not built (a source tree, another machine's build): Python reads
    _fast = None           # type: ignore[assignment]

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import IO, Iterator

EM_X86_64 = 62
EM_AARCH64 = 183
MACHINES = {EM_X86_64: "x86_64", EM_AARCH64: "aarch64"}

ET_REL, ET_EXEC, ET_DYN = 1, 2, 3
PT_LOAD, PT_DYNAMIC = 1, 2
PF_X = 1
SHT_PROGBITS, SHT_SYMTAB, SHT_STRTAB, SHT_NOBITS, SHT_DYNSYM = 1, 2, 3, 8, 11
SHT_GNU_VERDEF, SHT_GNU_VERSYM = 0x6FFFFFFD, 0x6FFFFFFF
SHF_ALLOC, SHF_EXECINSTR = 0x2, 0x4
STT_FUNC, STT_GNU_IFUNC = 2, 10
SHN_UNDEF, SHN_LORESERVE, SHN_XINDEX = 0, 0xFF00, 0xFFFF
PN_XNUM = 0xFFFF
VERSYM_HIDDEN = 0x8000
VER_NDX_GLOBAL = 1

EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
PHDR = struct.Struct("<IIQQQQQQ")
SHDR = struct.Struct("<IIQQQQIIQQ")
SYM = struct.Struct("<IBBHQQ")
assert (EHDR.size, PHDR.size, SHDR.size, SYM.size) == (64, 56, 64, 24)

# Which st_info bytes are a function (STT_FUNC or STT_GNU_IFUNC), for bytes.translate.
_FUNC_INFO = bytes(1 if (i & 0xF) in (STT_FUNC, STT_GNU_IFUNC) else 0 for i in range(256))
_IFUNC_INFO = bytes(1 if (i & 0xF) == STT_GNU_IFUNC else 0 for i in range(256))
_NONZERO = bytes([0] + [1] * 255)
# Bytes a name would need escaped in JSON, mapped out of ASCII (NUL ends a name: kept).
_UNPLAIN = bytes(0x80 if 0 < i < 32 or i in (0x22, 0x5C, 0x7F) else i for i in range(256))


# The records are collections.namedtuple classes (with their fields' types declared for
# the type checker), neither typing.NamedTuple nor dataclasses: importing typing (and re
# with it) would be a third of a short command's start, dataclasses (and inspect) more.
class Segment(namedtuple("Segment", "vaddr memsz offset filesz flags")):
    """One PT_LOAD program header."""

    __slots__ = ()
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


class Section(namedtuple("Section", "index name type flags addr offset size link entsize "
                                     "info addralign", defaults=(0, 0))):
    """One section header, with its name resolved."""

    __slots__ = ()
    index: int               # type: ignore[assignment]  # shadows tuple.index, on purpose
    name: str
    type: int
    flags: int
    addr: int
    offset: int
    size: int
    link: int
    entsize: int
    info: int
    addralign: int

    @property
    def alloc(self) -> bool:
        return bool(self.flags & SHF_ALLOC)

    @property
    def has_file_bytes(self) -> bool:
        return self.type != SHT_NOBITS


class FunctionSymbols(namedtuple("FunctionSymbols", "table names start size ifunc shndx "
                                                     "versions hidden")):
    """Defined STT_FUNC and STT_GNU_IFUNC symbols of nonzero size, in file order.

    Parallel lists; ``names`` are bare (``memcpy``), ``versions`` the version a
    symbol is defined at (None when unversioned) and ``hidden`` whether that is
    a non-default version (``memcpy@GLIBC_2.2.5`` rather than ``@@``). In an
    ET_REL object ``start`` is an offset into section ``shndx``.
    """

    __slots__ = ()
    table: str               # ".symtab" or ".dynsym"
    names: list[str]
    start: list[int]
    size: list[int]
    ifunc: list[bool]        # STT_GNU_IFUNC rather than STT_FUNC
    shndx: list[int]
    versions: list[str | None]
    hidden: list[bool]

    def __len__(self) -> int:
        return len(self.names)

    @property
    def end(self) -> list[int]:
        return [s + n for s, n in zip(self.start, self.size)]

    def display_name(self, i: int) -> str:
        """The name as readelf and nm show it: ``name@@VERSION``, ``name@VERSION`` or ``name``."""
        version = self.versions[i]
        if version is None:
            return self.names[i]
        return f"{self.names[i]}{'@' if self.hidden[i] else '@@'}{version}"

    def matching(self, pattern: str) -> Iterator[int]:
        """Indices of the functions whose name matches a glob."""
        if not any(c in pattern for c in "*?["):
            return (i for i, name in enumerate(self.names) if name == pattern)
        if pattern == "*":
            return iter(range(len(self.names)))
        import fnmatch
        import re

        match = re.compile(fnmatch.translate(pattern)).match    # fnmatchcase, compiled once
        return (i for i, name in enumerate(self.names) if match(name))


class ElfImage:
    """An ELF64 little-endian file for x86-64 or aarch64 (ET_DYN, ET_EXEC or ET_REL).

    The file stays open and is read with ``pread``, not mapped: another process
    that truncates it while we read makes a read come up short, which is an
    :class:`ExtableError`, where a mapping would kill us with SIGBUS. Use as a
    context manager or call :meth:`close`.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        try:
            # O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused below.
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise ExtableError(_open_failure(self.path, exc), self.path) from None
        try:
            st = os.fstat(fd)
        except OSError as exc:
            os.close(fd)
            raise ExtableError(f"cannot read: {exc.strerror}", self.path) from None
        if not stat.S_ISREG(st.st_mode):
            # Before open(fd): it would raise IsADirectoryError naming the descriptor.
            os.close(fd)
            raise self._error(f"not a regular file: {_file_kind(st.st_mode)}")
        #: The open file; the writer copies from it, so what is written is what was read
        #: even if the path is replaced meanwhile.
        self.file: IO[bytes] = open(fd, "rb", buffering=0)
        try:
            self.size: int = st.st_size
            self._parse()
        except ExtableError:
            self.close()
            raise
        except OSError as exc:
            self.close()
            raise ExtableError(f"cannot read: {exc.strerror}", self.path) from None
        except (struct.error, ValueError, IndexError, OverflowError) as exc:
            self.close()
            raise ExtableError(f"malformed ELF: {_describe(exc)}", self.path) from None

    def __enter__(self) -> ElfImage:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.file.close()

    def read(self, offset: int, size: int) -> bytes:
        """``size`` bytes at ``offset``; an error if the file no longer holds them."""
        if offset < 0 or size < 0 or offset + size > self.size:
            raise self._error(f"{size} bytes at {offset:#x} lie outside the file")
        try:
            chunks = [os.pread(self.file.fileno(), size, offset)]
            got = len(chunks[0])
            while got < size:                 # Linux reads at most 2 GiB per call
                chunk = os.pread(self.file.fileno(), size - got, offset + got)
                if not chunk:
                    raise self._error(f"the file shrank while it was being read (to "
                                      f"{os.fstat(self.file.fileno()).st_size} of "
                                      f"{self.size} bytes)")
                chunks.append(chunk)
                got += len(chunk)
        except OSError as exc:
            raise ExtableError(f"cannot read: {exc.strerror}", self.path) from None
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _error(self, message: str) -> ExtableError:
        return ExtableError(message, self.path)

    # -- headers -----------------------------------------------------------

    def _parse(self) -> None:
        size = self.size
        data = self.read(0, min(size, EHDR.size))
        if size < 4 or data[:4] != b"\x7fELF":
            raise self._error("not an ELF file")
        if size < EHDR.size:
            raise self._error(f"truncated ELF header ({size} bytes)")
        if data[4] != 2:
            raise self._error("32-bit ELF is not supported (need ELF64)")
        if data[5] != 1:
            raise self._error("big-endian ELF is not supported (need little-endian)")
        (_ident, e_type, e_machine, _v, self.entry, e_phoff, e_shoff, _fl, _eh, e_phentsize,
         e_phnum, e_shentsize, e_shnum, e_shstrndx) = EHDR.unpack_from(data, 0)
        if e_machine not in MACHINES:
            raise self._error(f"unsupported machine {e_machine} (need x86-64 or aarch64)")
        if e_type not in (ET_EXEC, ET_DYN, ET_REL):
            raise self._error(f"unsupported ELF type {e_type} (need ET_DYN, ET_EXEC or ET_REL)")
        self.machine: int = e_machine
        self.type: int = e_type

        # Extended numbering: counts that do not fit 16 bits live in section header 0.
        sh0 = None
        if e_shoff and e_shentsize == SHDR.size and e_shoff + SHDR.size <= size:
            sh0 = SHDR.unpack(self.read(e_shoff, SHDR.size))
        if e_shnum == 0 and sh0 is not None:
            e_shnum = sh0[5]
        if e_shstrndx == SHN_XINDEX and sh0 is not None:
            e_shstrndx = sh0[6]
        if e_phnum == PN_XNUM and sh0 is not None:
            e_phnum = sh0[7]

        if e_phnum and (e_phentsize != PHDR.size or e_phoff + e_phnum * PHDR.size > size):
            raise self._error("program header table lies outside the file")
        if e_shnum and (e_shentsize != SHDR.size or e_shoff + e_shnum * SHDR.size > size):
            raise self._error("section header table lies outside the file")
        if e_shnum and e_shstrndx >= e_shnum:
            raise self._error(f"section name table index {e_shstrndx} out of range")

        self.program_headers: list[tuple[int, ...]] = list(PHDR.iter_unpack(
            self.read(e_phoff, e_phnum * PHDR.size))) if e_phnum else []
        self.segments: list[Segment] = [
            Segment(vaddr, memsz, offset, filesz, flags)
            for (p_type, flags, offset, vaddr, _pa, filesz, memsz, _al) in self.program_headers
            if p_type == PT_LOAD]
        self.sections: list[Section] = []
        if e_shnum:
            self._parse_sections(e_shoff, e_shnum, e_shstrndx)
        # A separate debug file keeps the program headers of the file it came from.
        for seg in self.segments:
            if seg.filesz > seg.memsz or (seg.offset + seg.filesz > size
                                          and not self.is_separate_debug):
                raise self._error(f"PT_LOAD at {seg.vaddr:#x} lies outside the file")

    def _parse_sections(self, e_shoff: int, e_shnum: int, e_shstrndx: int) -> None:
        size = self.size
        headers = list(SHDR.iter_unpack(self.read(e_shoff, e_shnum * SHDR.size)))
        _n, n_type, _f, _a, n_off, n_size = headers[e_shstrndx][:6]
        if n_type != SHT_STRTAB or n_off + n_size > size:
            raise self._error("section name table is damaged")
        names = _Strings(self.read(n_off, n_size))
        for index, (sh_name, sh_type, flags, addr, offset, sh_size, link, info, align,
                    entsize) in enumerate(headers):
            if sh_type not in (0, SHT_NOBITS) and offset + sh_size > size:
                raise self._error(f"section {index} extends past the end of the file")
            name = names.get(sh_name)
            if name is None:
                raise self._error(f"section name offset {sh_name} out of range or "
                                  "not terminated")
            self.sections.append(Section(index, name, sh_type, flags, addr, offset, sh_size,
                                         link, entsize, info, align))

    # -- queries -----------------------------------------------------------

    @property
    def machine_name(self) -> str:
        return MACHINES[self.machine]

    @property
    def executable_segments(self) -> list[Segment]:
        return [s for s in self.segments if s.executable]

    @property
    def is_separate_debug(self) -> bool:
        """A file from ``objcopy --only-keep-debug``: its code sections hold no bytes."""
        code = [s for s in self.sections if s.flags & SHF_EXECINSTR and s.flags & SHF_ALLOC]
        return bool(code) and all(not s.has_file_bytes for s in code)

    def section(self, name: str) -> Section | None:
        """The first section called ``name``, or None."""
        return next((s for s in self.sections if s.name == name), None)

    def code_bytes(self, start: int, end: int) -> bytes:
        """The file's bytes at link-time addresses [start, end), from the PT_LOAD holding them."""
        for seg in self.segments:
            if seg.vaddr <= start and end <= seg.vaddr + seg.filesz:
                return self.read(seg.offset + start - seg.vaddr, end - start)
        raise self._error(f"{start:#x}..{end:#x} is not in the file's loaded bytes")

    def section_bytes(self, section: Section) -> bytes:
        if not section.has_file_bytes:
            return b""
        return self.read(section.offset, section.size)

    def _symbol_table(self) -> Section | None:
        by_type = {s.type: s for s in reversed(self.sections)}
        return by_type.get(SHT_SYMTAB) or by_type.get(SHT_DYNSYM)

    def symbol_table_bytes(self) -> tuple[Section, bytes, bytes]:
        """The symbol table (``.symtab``, else ``.dynsym``), its bytes and its string
        table's bytes; an error if there is none or its headers are inconsistent."""
        symtab = self._symbol_table()
        if symtab is None and not self.sections:
            raise self._error("no section headers (e_shnum is 0, as after sstrip), so no "
                              "symbol table to read")
        if symtab is None:
            raise self._error("no symbol table (.symtab or .dynsym)")
        if symtab.entsize != SYM.size or symtab.size % SYM.size or not symtab.has_file_bytes:
            raise self._error(f"{symtab.name}: bad symbol entry size {symtab.entsize}")
        if symtab.link >= len(self.sections) or self.sections[symtab.link].type != SHT_STRTAB:
            raise self._error(f"{symtab.name}: linked string table is missing")
        return symtab, self.section_bytes(symtab), self.section_bytes(self.sections[symtab.link])

    def _symbol_names(self, symtab: Section, strtab: bytes, offsets: list[int]) -> list[str]:
        """The names at these offsets of the symbol table's strings (in C when the
        accelerator is built); an error names the first offset that does not resolve."""
        names = _fast.strings(strtab, offsets) if _fast is not None else None
        if names is None:
            strings = _Strings(strtab)
            names = strings.many(offsets)
            if names is None:
                names = [self._name(strings, o, symtab.name) for o in offsets]
        return names

    def _name(self, strings: _Strings, offset: int, table: str) -> str:
        name = strings.get(offset)
        if name is None:
            what = "out of range" if offset >= len(strings) else "not terminated"
            raise self._error(f"{table}: symbol name offset {offset} {what}")
        return name

    @property
    def symbol_versions(self) -> tuple[bytes, dict[int, str]] | None:
        """(``.gnu.version`` bytes, version index → name from ``.gnu.version_d``), if the
        file has both: .dynsym's versions, and the sign that .symtab's names carry theirs
        (``memcpy@@GLIBC_2.14``)."""
        return self._versions

    @cached_property
    def _versions(self) -> tuple[bytes, dict[int, str]] | None:
        versym = next((s for s in self.sections if s.type == SHT_GNU_VERSYM), None)
        verdef = next((s for s in self.sections if s.type == SHT_GNU_VERDEF), None)
        if versym is None or verdef is None or verdef.link >= len(self.sections):
            return None
        blob = self.section_bytes(verdef)
        # A few names: cut from the bytes, not from the whole table decoded (.dynstr).
        strings = self.section_bytes(self.sections[verdef.link])
        names: dict[int, str] = {}
        at = 0
        for _ in range(max(verdef.info, 1)):
            if at + 20 > len(blob):
                break
            _ver, _flags, ndx, count, _hash, aux, nxt = struct.unpack_from("<HHHHIII", blob, at)
            if count and at + aux + 8 <= len(blob):
                offset = struct.unpack_from("<I", blob, at + aux)[0]
                end = strings.find(b"\0", offset)
                if end >= 0:
                    names[ndx] = strings[offset:end].decode("utf-8", "surrogateescape")
            if not nxt:
                break
            at += nxt
        return self.section_bytes(versym), names

    def _split_versions(self, table: Section, keep: bytes, names: list[str]
                        ) -> tuple[list[str], list[str | None], list[bool]]:
        """(bare names, versions, hidden) of the symbols whose ``keep`` byte is set, named
        ``names``: a version is None when unversioned, hidden when not the default.

        A pass over all of them at once, no Python call per symbol (libLLVM has 37,000).
        """
        count = len(names)
        if self._versions is None:
            return names, [None] * count, [False] * count
        versym, by_ndx = self._versions
        if table.type == SHT_DYNSYM:
            # The version is the symbol's .gnu.version entry; a symbol past its end has none.
            entries = min(len(keep), len(versym) // 2)
            words = list(itertools.compress(struct.unpack(f"<{entries}H", versym[:2 * entries]),
                                            keep))
            words += [0] * (count - len(words))
            known: list[str | None] = [None] * VERSYM_HIDDEN
            for ndx, version in by_ndx.items():
                if VER_NDX_GLOBAL < ndx < VERSYM_HIDDEN:
                    known[ndx] = version
            versions = [known[w & ~VERSYM_HIDDEN] for w in words]
            hidden = [w >= VERSYM_HIDDEN and v is not None for w, v in zip(words, versions)]
            return names, versions, hidden
        # In .symtab the linker writes the version into the name: memcpy@@GLIBC_2.14.
        names, versions, hidden = list(names), [None] * count, [False] * count
        for k in [k for k, name in enumerate(names) if "@" in name]:
            bare, _, version = names[k].partition("@")
            if version.startswith("@"):
                names[k], versions[k] = bare, version[1:]
            else:
                names[k], versions[k], hidden[k] = bare, version, True
        return names, versions, hidden

    @cached_property
    def functions(self) -> FunctionSymbols:
        """Defined function symbols with nonzero size: the function ranges."""
        symtab, raw, strtab = self.symbol_table_bytes()
        columns = _fast.functions(raw, strtab) if _fast is not None else None
        if columns is not None:
            keep, names, shndx, value, size, ifunc = columns
        else:
            keep = _function_mask(raw)
            st_name, shndx, value, size = _symbol_columns(raw, keep)
            names = self._symbol_names(symtab, strtab, st_name)
            ifunc = list(map(bool, itertools.compress(raw[4::SYM.size].translate(_IFUNC_INFO),
                                                      keep)))
        names, versions, hidden = self._split_versions(symtab, keep, names)
        return FunctionSymbols(symtab.name, names, value, size, ifunc, shndx, versions, hidden)

    @cached_property
    def plain_symbol_names(self) -> bool:
        """Whether every symbol name is printable ASCII without ``"`` or ``\\`` (so JSON
        and C can quote them as they are): one pass over the string table, in C."""
        symtab = self._symbol_table()
        if symtab is None or symtab.link >= len(self.sections):
            return False
        return self.section_bytes(self.sections[symtab.link]).translate(_UNPLAIN).isascii()

    @cached_property
    def symbol_addresses(self) -> dict[str, int]:
        """Every defined symbol's name → value, for labels and landing pads.

        Versioned symbols are there as ``name@VERSION`` / ``name@@VERSION`` and
        by the bare name, which means the default version when there is one
        (as the linker resolves it), else the first symbol of that name.
        """
        symtab, raw, strtab = self.symbol_table_bytes()
        keep = _defined_mask(raw)
        st_name, _shndx, value, _size = _symbol_columns(raw, keep)
        names = self._symbol_names(symtab, strtab, st_name)
        if self._versions is None:
            # The first symbol of each name wins: reversed, so that a dict keeps it.
            return dict(zip(reversed(names), reversed(value)))
        table: dict[str, int] = {}
        rank: dict[str, int] = {}
        for name, version, hide, v in zip(*self._split_versions(symtab, keep, names), value):
            if version is not None:
                table.setdefault(f"{name}{'@' if hide else '@@'}{version}", v)
            r = 2 if hide else 0 if version is not None else 1
            if rank.get(name, 3) > r:
                table[name], rank[name] = v, r
        return table

    @cached_property
    def _sorted_functions(self) -> tuple[list[int], list[int], list[str]]:
        funcs = self.functions
        order = sorted(range(len(funcs)), key=funcs.start.__getitem__)
        return ([funcs.start[i] for i in order], [funcs.start[i] + funcs.size[i] for i in order],
                [funcs.names[i] for i in order])

    def describe(self, address: int) -> str:
        """``name+0xoff`` for an address inside a function, else the hex address; a name
        that is not UTF-8 is shown as readelf shows it (:mod:`extable.names`)."""
        try:
            starts, ends, names = self._sorted_functions
        except ExtableError:
            return f"{address:#x}"
        from .names import shown

        i = bisect.bisect_right(starts, address) - 1
        # A later-starting function may end before an earlier, larger one; look back a little.
        for j in range(i, max(i - 8, -1), -1):
            if starts[j] <= address < ends[j]:
                off = address - starts[j]
                name = shown(names[j])
                return f"{name}+{off:#x}" if off else name
        return f"{address:#x}"


def _function_mask(raw: bytes) -> bytes:
    """One byte per symbol, 1 for a defined function of nonzero size.

    Built from strided slices of the table with big-integer bit operations, so
    that no Python code runs per symbol (a vmlinux has 150k of them).
    """
    n = len(raw) // SYM.size

    def nonzero(*at: int) -> int:      # bytes at these offsets of each entry: any set?
        word = 0
        for a in at:
            word |= int.from_bytes(raw[a::SYM.size], "little")
        return int.from_bytes(word.to_bytes(n, "little").translate(_NONZERO), "little")

    func = int.from_bytes(raw[4::SYM.size].translate(_FUNC_INFO), "little")
    mask = func & nonzero(6, 7) & nonzero(*range(16, 24))        # st_shndx, st_size
    return mask.to_bytes(n, "little")


def _defined_mask(raw: bytes) -> bytes:
    """One byte per symbol, 1 for a defined symbol (st_shndx set) with a name."""
    n = len(raw) // SYM.size

    def nonzero(*at: int) -> int:
        word = 0
        for a in at:
            word |= int.from_bytes(raw[a::SYM.size], "little")
        return int.from_bytes(word.to_bytes(n, "little").translate(_NONZERO), "little")

    return (nonzero(0, 1, 2, 3) & nonzero(6, 7)).to_bytes(n, "little")


def _symbol_columns(raw: bytes, keep: bytes) -> tuple[list[int], list[int], list[int],
                                                      list[int]]:
    """st_name, st_shndx, st_value and st_size of the symbols whose keep byte is set."""
    compress = itertools.compress
    if sys.byteorder == "little":
        with memoryview(raw) as mv, mv.cast("I") as i32, mv.cast("H") as i16, \
                mv.cast("Q") as i64:
            return (list(compress(i32[0::6], keep)), list(compress(i16[3::12], keep)),
                    list(compress(i64[1::3], keep)), list(compress(i64[2::3], keep)))
    rows = list(compress(SYM.iter_unpack(raw), keep))
    return [r[0] for r in rows], [r[3] for r in rows], [r[4] for r in rows], [r[5] for r in rows]


class _Strings:
    """A string table: NUL-terminated names by byte offset."""

    def __init__(self, raw: bytes | memoryview) -> None:
        # Latin-1 maps each byte to one character, so str offsets are byte offsets and
        # str.find/slicing (much faster per call than bytes slicing + decode) apply.
        self.text = str(raw, "latin-1")

    def __len__(self) -> int:
        return len(self.text)

    def many(self, offsets: list[int]) -> list[str] | None:
        """The strings at many offsets at once; None if any is out of range or unterminated."""
        text = self.text
        if not text or text[-1] != "\0" or max(offsets, default=0) >= len(text):
            return None           # the caller looks them up one by one to name the bad one
        find = text.find
        names = [text[o:find("\0", o)] for o in offsets]
        if not text.isascii():
            names = [n if n.isascii() else n.encode("latin-1").decode("utf-8", "surrogateescape")
                     for n in names]
        return names

    def get(self, offset: int) -> str | None:
        """The string at ``offset``, None when out of range or not terminated."""
        end = self.text.find("\0", offset)
        if end < 0 or offset >= len(self.text):
            return None
        name = self.text[offset:end]
        if name.isascii():
            return name
        return name.encode("latin-1").decode("utf-8", "surrogateescape")


def _file_kind(mode: int) -> str:
    """What a file that is not a regular file is, in words."""
    for test, what in ((stat.S_ISDIR, "a directory"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return what
    return f"file type {stat.S_IFMT(mode):#o}"


def _open_failure(path: str, exc: OSError) -> str:
    """Why a path could not be opened, saying what it is when errno alone misleads
    (ENXIO for a socket, ENOENT for a symbolic link whose target is gone)."""
    try:
        st = os.lstat(path)
    except OSError:
        return f"cannot open: {exc.strerror}"
    if stat.S_ISLNK(st.st_mode) and not os.path.exists(path):
        return f"cannot open: a dangling symbolic link (to {os.readlink(path)!r})"
    if stat.S_ISSOCK(st.st_mode):
        return "not a regular file: a socket"
    return f"cannot open: {exc.strerror}"


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text and text[0] else type(exc).__name__
