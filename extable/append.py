"""Adding a non-loaded section to an ELF file the way ``objcopy --add-section`` lays it out.

The input is copied unchanged (in the kernel, with ``copy_file_range``), then
three things are appended: the section's bytes, a new ``.shstrtab`` (the old
names plus the new one; it is non-alloc, so moving it touches no segment) and
a new section header table (the old headers, ``.shstrtab``'s pointing at its
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
import shutil
import struct
from typing import IO, Any

from .elf import EHDR, SHDR, SHF_ALLOC, SHN_LORESERVE, SHN_XINDEX, SHT_NOBITS, SHT_PROGBITS
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
    """Write image with a new non-alloc PROGBITS section ``name`` holding blob to out."""
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
    strings = image.section_bytes(names)     # everything read before the copy starts

    if copy_file(image.file, out) != image.size:
        raise ExtableError("the file changed size while it was being copied", image.path)
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

def _elf(f: IO[bytes]) -> Any:
    from elftools.elf.elffile import ELFFile   # pyelftools: only the writer's check needs it

    return ELFFile(f)


def _headers(elf: Any) -> list[tuple[str, Any]]:
    """(name, header) of every section, as pyelftools parses the section header table.

    Through the headers rather than ``iter_sections()``: that builds each section's
    object, and the objects of .hash and .gnu.hash parse their whole tables (1.2 s of
    the 1.6 s libLLVM's check took).
    """
    names = elf.get_section(elf.get_shstrndx())
    out = []
    for i in range(elf.num_sections()):
        h = elf._get_section_header(i)      # pyelftools' own parse of header i
        out.append((names.get_string(h["sh_name"]), h))
    return out


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
            a, b = _elf(fa), _elf(fb)
            keep = ("e_ident", "e_type", "e_machine", "e_version", "e_entry", "e_phoff",
                    "e_flags", "e_ehsize", "e_phentsize", "e_phnum", "e_shentsize")
            for key in keep:
                if a.header[key] != b.header[key]:
                    raise ExtableError(f"ELF header field {key} changed")
            # Headers, not iter_segments(): a PT_DYNAMIC's object looks up its string
            # table through every section object (and so parses .gnu.hash whole).
            pa = [dict(a._get_segment_header(i)) for i in range(a.num_segments())]
            pb = [dict(b._get_segment_header(i)) for i in range(b.num_segments())]
            if pa != pb:
                raise ExtableError("program headers changed")
            for seg in pa:
                if seg["p_type"] == "PT_DYNAMIC":
                    fa.seek(seg["p_offset"])
                    fb.seek(seg["p_offset"])
                    if fa.read(seg["p_filesz"]) != fb.read(seg["p_filesz"]):
                        raise ExtableError("the dynamic section changed")
            ha, hb = _headers(a), _headers(b)
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
