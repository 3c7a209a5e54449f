"""Adding a non-loaded section to an ELF file the way ``objcopy --add-section`` lays it out.

The input is copied unchanged (in the kernel, with ``copy_file_range``, by
:mod:`extable.output`), then three things are appended: the section's bytes, a
new ``.shstrtab`` (the old names plus the new one; it is non-alloc, so moving
it touches no segment) and a new section header table (the old headers, ``.shstrtab``'s pointing at its
new place, and one header for the new section, last, so no section index
changes). Finally ``e_shoff``/``e_shnum`` in the ELF header are updated. No
program header, no SHF_ALLOC section, no byte of code or data moves.

This is written by hand rather than with LIEF because LIEF 1.0 ``add(section,
loaded=False)`` rewrites the layout: it moves the ``.bss`` section header and
trims ``.dynamic`` while the program headers stay, so the file runs but the
next ``strip``/``objcopy`` rebuilds the RW segment from the section headers and
the library crashes. The result is then read back with pyelftools, an
independent reader, and refused unless everything the loader and binutils use
is identical (:func:`check_unchanged`).
"""

from __future__ import annotations

import os
import struct
from typing import IO, Any

from .elf import (EHDR, PN_XNUM, SHDR, SHF_ALLOC, SHN_LORESERVE, SHN_XINDEX, SHT_NOBITS,
                  SHT_PROGBITS)
from .elf import ElfImage
from .errors import ExtableError

_SHOFF_AT, _SHNUM_AT = 0x28, 0x3C
ALIGN = 8


def copy_file(src: IO[bytes], dst: IO[bytes]) -> int:
    """Copy src to dst without passing the bytes through Python (reflinked where it can);
    the number of bytes copied."""
    size = os.fstat(src.fileno()).st_size
    done = 0
    try:
        while done < size:
            n = os.copy_file_range(src.fileno(), dst.fileno(), size - done, done, done)
            if n == 0:
                break
            done += n
    except OSError:
        done = 0                            # no copy_file_range here (e.g. across file systems)
    if done < size:
        import shutil

        src.seek(done)
        dst.seek(done)
        shutil.copyfileobj(src, dst, 1 << 20)
    return dst.seek(0, os.SEEK_END)


def _pad(f: IO[bytes], align: int) -> int:
    at = f.seek(0, os.SEEK_END)
    extra = -at % align
    f.write(b"\0" * extra)
    return at + extra


def append_section(image: ElfImage, out: IO[bytes], name: str, blob: bytes) -> None:
    """Turn out, a copy of image's file, into image with a new non-alloc PROGBITS
    section ``name`` holding blob."""
    if image.section(name) is not None:
        raise ExtableError(f"section {name!r} exists already", image.path)
    if not image.sections:
        raise ExtableError("the file has no section headers to add a section to", image.path)
    (_id, _t, _m, _v, _e, _ph, e_shoff, _fl, _eh, _pe, _pn, _se, e_shnum,
     e_shstrndx) = EHDR.unpack(image.read(0, EHDR.size))
    count = len(image.sections)
    if e_shstrndx == SHN_XINDEX:
        e_shstrndx = image.sections[0].link
    names = image.sections[e_shstrndx]
    table = image.read(e_shoff, count * SHDR.size)
    headers = [bytearray(table[i * SHDR.size:(i + 1) * SHDR.size]) for i in range(count)]
    strings = image.section_bytes(names)

    section_at = _pad(out, ALIGN)
    out.write(blob)

    name_at = len(strings)
    strings_at = out.seek(0, os.SEEK_END)
    out.write(strings + name.encode() + b"\0")
    struct.pack_into("<QQ", headers[e_shstrndx], 24, strings_at, len(strings) + len(name) + 1)

    new = SHDR.pack(name_at, SHT_PROGBITS, 0, 0, section_at, len(blob), 0, 0, ALIGN, 0)
    headers.append(bytearray(new))
    count += 1
    if count >= SHN_LORESERVE or e_shnum == 0:    # extended numbering: the count is in
        struct.pack_into("<Q", headers[0], 32, count)  # section header 0, as before
        e_shnum = 0
    else:
        e_shnum = count
    table_at = _pad(out, ALIGN)
    out.write(b"".join(headers))
    out.seek(_SHOFF_AT)
    out.write(struct.pack("<Q", table_at))
    out.seek(_SHNUM_AT)
    out.write(struct.pack("<H", e_shnum))
    out.flush()


# -- the independent check ----------------------------------------------------

class _Parsed:
    """An ELF file's headers as pyelftools parses them: through its ``ELFStructs`` and
    ``struct_parse``, what its ``ELFFile`` reads headers with. Not ``ELFFile`` itself:
    importing it imports the DWARF and EHABI readers too, which took longer than the
    check (libLLVM-15: 35 ms of the check's 60, loaded). Extended numbering is read as
    ``ELFFile`` reads it."""

    def __init__(self, f: IO[bytes]) -> None:
        from elftools.common.exceptions import ELFError
        from elftools.common.utils import struct_parse
        from elftools.elf.structs import ELFStructs

        f.seek(0)
        ident = f.read(6)
        if ident[:4] != b"\x7fELF" or len(ident) < 6 or ident[4] not in (1, 2) \
                or ident[5] not in (1, 2):
            raise ELFError("not an ELF file")
        self._file, self._parse = f, struct_parse
        self.structs = ELFStructs(little_endian=ident[5] == 1, elfclass=32 * ident[4])
        self.structs.create_basic_structs()
        self.header = struct_parse(self.structs.Elf_Ehdr, f, stream_pos=0)
        self.structs.create_advanced_structs(self.header["e_type"], self.header["e_machine"],
                                             self.header["e_ident"]["EI_OSABI"])

    def _section_header(self, i: int) -> Any:
        h = self.header
        return self._parse(self.structs.Elf_Shdr, self._file,
                           stream_pos=h["e_shoff"] + i * h["e_shentsize"])

    def segments(self) -> list[dict[str, Any]]:
        """Every program header."""
        h = self.header
        count = h["e_phnum"] if h["e_phnum"] < PN_XNUM else self._section_header(0)["sh_info"]
        return [dict(self._parse(self.structs.Elf_Phdr, self._file,
                                 stream_pos=h["e_phoff"] + i * h["e_phentsize"]))
                for i in range(count)]

    def sections(self) -> list[tuple[str, Any]]:
        """(name, header) of every section."""
        h = self.header
        if not h["e_shoff"]:
            return []
        count = h["e_shnum"] or self._section_header(0)["sh_size"]
        names_at = h["e_shstrndx"]
        if names_at == SHN_XINDEX:
            names_at = self._section_header(0)["sh_link"]
        headers = [self._section_header(i) for i in range(count)]
        table = headers[names_at]
        self._file.seek(table["sh_offset"])
        names = self._file.read(table["sh_size"])
        return [(names[x["sh_name"]:names.index(b"\0", x["sh_name"])].decode("utf-8", "replace"),
                 x) for x in headers]


def _alloc_view(name: str, h: Any) -> tuple[object, ...]:
    offset = None if h["sh_type"] in ("SHT_NOBITS", SHT_NOBITS) else h["sh_offset"]
    return (name, h["sh_type"], h["sh_flags"], h["sh_addr"], h["sh_size"], offset,
            h["sh_link"], h["sh_info"], h["sh_addralign"], h["sh_entsize"])


def check_unchanged(before: IO[bytes], after: str, name: str, blob: bytes) -> None:
    """Refuse (ExtableError) unless file ``after`` is the open file ``before`` plus section
    ``name`` = blob.

    Compared with pyelftools: the ELF header except the section header fields,
    every program header, every SHF_ALLOC section header (address, size, type,
    flags, link, info, alignment; the offset unless NOBITS), the bytes of the
    dynamic segment, and the new section's bytes.
    """
    from elftools.common.exceptions import ELFError

    try:
        # A duplicate of the input's descriptor: the file that was copied, whatever its
        # path names now.
        with open(os.dup(before.fileno()), "rb") as fa, open(after, "rb") as fb:
            a, b = _Parsed(fa), _Parsed(fb)
            keep = ("e_ident", "e_type", "e_machine", "e_version", "e_entry", "e_phoff",
                    "e_flags", "e_ehsize", "e_phentsize", "e_phnum", "e_shentsize")
            for key in keep:
                if a.header[key] != b.header[key]:
                    raise ExtableError(f"ELF header field {key} changed")
            pa, pb = a.segments(), b.segments()
            if pa != pb:
                raise ExtableError("program headers changed")
            for seg in pa:
                if seg["p_type"] == "PT_DYNAMIC":
                    fa.seek(seg["p_offset"])
                    fb.seek(seg["p_offset"])
                    if fa.read(seg["p_filesz"]) != fb.read(seg["p_filesz"]):
                        raise ExtableError("the dynamic section changed")
            ha, hb = a.sections(), b.sections()
            alloc_a = [(i, _alloc_view(n, h)) for i, (n, h) in enumerate(ha)
                       if h["sh_flags"] & SHF_ALLOC]
            alloc_b = [(i, _alloc_view(n, h)) for i, (n, h) in enumerate(hb)
                       if h["sh_flags"] & SHF_ALLOC]
            if alloc_a != alloc_b:
                changed = next((x[1][0] for x, y in zip(alloc_a, alloc_b) if x != y),
                               "a section")
                raise ExtableError(f"SHF_ALLOC section header {changed} changed")
            if len(hb) != len(ha) + 1:
                raise ExtableError("the section count is not one more than before")
            new = next((h for n, h in hb if n == name), None)
            if new is None or new["sh_flags"] & SHF_ALLOC or new["sh_size"] != len(blob):
                raise ExtableError(f"section {name!r} did not read back as the table")
            fb.seek(new["sh_offset"])
            if fb.read(len(blob)) != blob:
                raise ExtableError(f"section {name!r} did not read back as the table")
    except ExtableError:
        raise
    except (ELFError, OSError, ValueError, struct.error) as exc:
        raise ExtableError(f"pyelftools cannot read the result: {exc}") from None
