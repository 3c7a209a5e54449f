"""extable._fast against the Python code it accelerates, its reference: byte for byte.

The C accelerator formats ``extable symbols``' rows and cuts symbol names out
of string tables; the Python listing and reader, run with the accelerator
switched off, are the oracle. Both run over every ELF file under /usr/lib and /usr/bin, the kernel
modules of the fixtures (ET_REL), the compiled fixtures and a debug vmlinux
when one is cached, and over symbol tables hypothesis makes up (names with
quotes, control characters, every kind of bad UTF-8, versions, sections,
addresses near 2^64). Where the accelerator declines a table, it must be for
one of the reasons it documents, and the command's output is then the Python
listing's.
"""

from __future__ import annotations

import glob
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import extable.elf
from conftest import FIXTURES
from extable.elf import (EHDR, ET_DYN, ET_REL, SHDR, SHT_DYNSYM, SHT_GNU_VERDEF,
                         SHT_GNU_VERSYM, SHT_PROGBITS, SHT_STRTAB, SHT_SYMTAB, SYM, ElfImage)
from extable.errors import ExtableError
from extable.symbols import _listing_in_c, listing, listing_in_python
from kernel_helpers import decompress

_fast = pytest.importorskip("extable._fast", reason="extable._fast is not built here "
                            "(python build.py builds it)")


def python_bytes(image: ElfImage, as_json: bool) -> bytes:
    """The Python listing of the image's file, read again with the accelerator off."""
    with without_accelerator(), ElfImage(image.path) as reference:
        return "".join(listing_in_python(reference, as_json=as_json)).encode(
            "utf-8", "surrogateescape")


class without_accelerator:
    """The ELF reader without extable._fast, as where it is not built."""

    def __enter__(self) -> None:
        self.saved, extable.elf._fast = extable.elf._fast, None

    def __exit__(self, *exc: object) -> None:
        extable.elf._fast = self.saved


def c_bytes(image: ElfImage, as_json: bool) -> bytes | None:
    rows = _listing_in_c(image, as_json)
    return None if rows is None else b"".join(rows)


def reads(image: ElfImage) -> tuple[object, object]:
    """What build reads from the symbol table: the functions, every symbol's address."""
    return image.functions, image.symbol_addresses


def reads_in_python(path: str | Path) -> tuple[object, object]:
    with without_accelerator(), ElfImage(path) as reference:
        return reads(reference)


def elf_files() -> list[str]:
    """Every regular ELF file under /usr/lib/<triplet> and /usr/bin."""
    out = []
    for path in sorted(glob.glob("/usr/lib/x86_64-linux-gnu/**/*.so*", recursive=True)
                       + glob.glob("/usr/bin/*")):
        if os.path.isfile(path) and not os.path.islink(path):
            with open(path, "rb") as f:
                if f.read(4) == b"\x7fELF":
                    out.append(path)
    return out


def test_every_system_elf_file_lists_and_reads_the_same_in_c_and_in_python() -> None:
    files = elf_files()
    assert len(files) > 100, "too few ELF files under /usr to compare on"
    compared = 0
    for path in files:
        try:
            image = ElfImage(path)
        except ExtableError:
            continue                          # not ELF64 x86-64/aarch64: neither lists it
        with image:
            for as_json in (False, True):
                try:
                    want = python_bytes(image, as_json)
                except ExtableError:
                    break                      # no symbol table: both refuse (tested below)
                got = c_bytes(image, as_json)
                assert got is not None, f"{path}: the accelerator declined a system file"
                assert got == want, f"{path} (json={as_json}): C and Python differ"
                compared += 1
            else:
                # What build reads: function names and every defined symbol's address.
                assert reads(image) == reads_in_python(path), path
    assert compared > 200


def kernel_files(tmp: Path) -> list[Path]:
    out = [decompress(p, tmp / p.name.rsplit(".", 1)[0])
           for p in sorted((FIXTURES / "kernel").glob("*.ko.*"))]
    cache = Path.home() / ".cache" / "mcsafe" / "kernel-dbg"
    out += sorted(cache.glob("vmlinux-*.dbg"))
    return out


def test_kernel_modules_and_a_debug_vmlinux_list_the_same_bytes(tmp_path) -> None:
    files = kernel_files(tmp_path)
    relocatable = 0
    for path in files:
        with ElfImage(path) as image:
            relocatable += image.type == ET_REL
            for as_json in (False, True):
                got = c_bytes(image, as_json)
                assert got is not None, f"{path}: declined"
                assert got == python_bytes(image, as_json), f"{path} (json={as_json})"
    assert relocatable == 4              # the fixtures' four modules: section+offset rows


def test_the_command_writes_the_accelerators_bytes_and_the_references(built) -> None:
    """Whole process: ``extable symbols`` prints what the Python listing produces."""
    for name in ("x86", "arm", "plain"):
        path = built[name]
        for extra in ([], ["--json"]):
            out = subprocess.run([sys.executable, "-m", "extable", "symbols", *extra,
                                  str(path)], capture_output=True, check=True).stdout
            with ElfImage(path) as image:
                assert out == python_bytes(image, bool(extra))
                assert c_bytes(image, bool(extra)) == out


def test_sorted_and_demangled_listings_are_pythons(built) -> None:
    with ElfImage(built["x86"]) as image:
        for sort in ("address", "name", "size"):
            want = "".join(listing_in_python(image, sort=sort)).encode()
            assert b"".join(listing(image, sort=sort)) == want


# -- generated symbol tables ------------------------------------------------------------

#: Pieces of names: plain, JSON-special, control, valid UTF-8 of each length, and bytes
#: Python's strict decoder refuses (a lone continuation, a truncated sequence, an encoded
#: surrogate, overlong forms, past U+10FFFF).
PIECES = [b"a", b"Z_9", b"@", b"@@", b'"', b"\\", b"\n", b"\t", b"\x01", b"\x1f", b"\x7f",
          b"\xc3\xa9", b"\xe2\x82\xac", b"\xf0\x9f\x98\x80", b"\xef\xbf\xbf",
          b"\x89", b"\xc3", b"\xe2\x82", b"\xed\xa0\x80", b"\xc0\xaf", b"\xe0\x80\xaf",
          b"\xf4\x90\x80\x80", b"\xf8", b"\xff"]

names = st.one_of(st.lists(st.sampled_from(PIECES), max_size=6).map(b"".join),
                  st.binary(max_size=12).map(lambda b: b.replace(b"\0", b"")))
u64 = st.one_of(st.integers(0, 1 << 16), st.integers(0, (1 << 64) - 1),
                st.integers((1 << 64) - 4096, (1 << 64) - 1))
symbols = st.lists(st.tuples(
    names,
    st.sampled_from([0x12, 0x22, 0x1A, 0x02, 0x11, 0x10, 0x04, 0x2A]),   # FUNC, IFUNC, others
    st.sampled_from([0, 1, 2, 7, 0xFFF1, 0xFFFF]),                       # shndx
    u64, u64,                                                            # value, size
    st.integers(0, 0xFFFF)), max_size=40)                                # .gnu.version entry


def make_elf(syms: list[tuple[bytes, int, int, int, int, int]], table: int, e_type: int,
             versions: list[bytes] | None) -> bytes:
    """An ELF64 x86-64 file: a .text, the symbol table (SHT_SYMTAB or SHT_DYNSYM) and its
    strings, and with ``versions`` a .gnu.version and a .gnu.version_d naming them (version
    indices 2, 3, ...)."""
    strtab = bytearray(b"\0")

    def string(s: bytes) -> int:
        strtab.extend(s + b"\0")
        return len(strtab) - len(s) - 1

    symtab = bytearray(SYM.size)                                     # symbol 0: null
    for name, info, shndx, value, size, _v in syms:
        symtab += SYM.pack(string(name), info, 0, shndx, value, size)
    sections = [(b".text", SHT_PROGBITS, 6, b"\xc3" * 16, 0, 0, 0),
                (b".symtab" if table == SHT_SYMTAB else b".dynsym", table, 2, bytes(symtab),
                 3, 1, SYM.size),
                (b".strtab" if table == SHT_SYMTAB else b".dynstr", SHT_STRTAB, 2, None, 0,
                 0, 0)]
    if versions is not None:
        versym = b"\0\0" + b"".join(struct.pack("<H", v) for *_x, v in syms)
        verdef = b""
        for i, v in enumerate(versions):
            last = i == len(versions) - 1
            verdef += struct.pack("<HHHHIII", 1, 0, i + 2, 1, 0, 20, 0 if last else 28)
            verdef += struct.pack("<II", string(v), 0)
        sections += [(b".gnu.version", SHT_GNU_VERSYM, 2, versym, 2, 0, 2),
                     (b".gnu.version_d", SHT_GNU_VERDEF, 2, verdef, 3, len(versions), 0)]
    sections.append((b".shstrtab", SHT_STRTAB, 0, None, 0, 0, 0))
    shstrtab = b"\0" + b"".join(s[0] + b"\0" for s in sections)
    body = bytearray(EHDR.size)
    headers = [bytes(SHDR.size)]
    name_at = 1
    for name, kind, flags, data, link, info, entsize in sections:
        if data is None:
            data = bytes(strtab) if name != b".shstrtab" else shstrtab
        body += b"\0" * (-len(body) % 8)
        headers.append(SHDR.pack(name_at, kind, flags, 0, len(body), len(data), link, info,
                                 8, entsize))
        body += data
        name_at += len(name) + 1
    body += b"\0" * (-len(body) % 8)
    shoff = len(body)
    body += b"".join(headers)
    EHDR.pack_into(body, 0, b"\x7fELF\x02\x01\x01" + bytes(9), e_type, 62, 1, 0, 0, shoff,
                   0, EHDR.size, 56, 0, SHDR.size, len(headers), len(headers) - 1)
    return bytes(body)


def declines(syms: list[tuple[bytes, int, int, int, int, int]], table: int,
             versions: list[bytes] | None, as_json: bool) -> bool:
    """Whether extable/_fast.c says it declines such a table: a function whose end is past
    2^64, or for JSON one whose name or version is not UTF-8."""
    def utf8(b: bytes) -> bool:
        try:
            b.decode("utf-8")
            return True
        except UnicodeDecodeError:
            return False

    for name, info, shndx, value, size, v in syms:
        if info & 0xF not in (2, 10) or not shndx or not size:
            continue                                     # not a function with a range
        if value + size >= 1 << 64:
            return True
        ndx = v & 0x7FFF
        version = (versions[ndx - 2] if table == SHT_DYNSYM and versions is not None
                   and 2 <= ndx < len(versions) + 2 else b"")
        if as_json and not (utf8(name) and utf8(version)):
            return True
    return False


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(syms=symbols, table=st.sampled_from([SHT_SYMTAB, SHT_DYNSYM]),
       e_type=st.sampled_from([ET_DYN, ET_REL]),
       versions=st.one_of(st.none(), st.lists(names.filter(bool), min_size=1, max_size=4)))
def test_generated_tables_list_the_same_bytes(tmp_path_factory, syms, table, e_type,
                                              versions) -> None:
    path = tmp_path_factory.mktemp("gen") / "gen.so"
    path.write_bytes(make_elf(syms, table, e_type, versions))
    with ElfImage(path) as image:
        assert reads(image) == reads_in_python(path)
        for as_json in (False, True):
            want = python_bytes(image, as_json)
            got = c_bytes(image, as_json)
            assert (got is None) == declines(syms, table, versions, as_json)
            if got is not None:
                assert got == want
            assert b"".join(listing(image, as_json=as_json)) == want


@settings(max_examples=300, deadline=None)
@given(table=st.lists(names, max_size=20).map(lambda ns: b"\0" + b"".join(n + b"\0" for n in ns)),
       tail=st.binary(max_size=4), picks=st.lists(st.integers(0, 200), max_size=30))
def test_strings_are_cut_and_decoded_as_python_does(table, tail, picks) -> None:
    strtab = table + tail                   # a tail without NUL: an unterminated last string
    offsets = [p % (len(strtab) + 2) for p in picks]        # some past the end
    got = _fast.strings(strtab, offsets)
    strings = extable.elf._Strings(strtab)
    want = [strings.get(o) for o in offsets]
    if None in want:
        assert got is None
    else:
        assert got == want


def test_a_bad_name_offset_is_declined_and_reported_by_python(tmp_path) -> None:
    path = tmp_path / "bad.so"
    data = bytearray(make_elf([(b"f", 0x12, 1, 0x1000, 16, 0)], SHT_SYMTAB, ET_DYN, None))
    path.write_bytes(bytes(data))
    with ElfImage(path) as image:
        sec = image.section(".symtab")
        assert sec is not None and c_bytes(image, False) is not None
    struct.pack_into("<I", data, sec.offset + SYM.size, 0xFFFF)       # st_name past the end
    path.write_bytes(bytes(data))
    with ElfImage(path) as image:
        assert c_bytes(image, False) is None
        _table, raw, strtab = image.symbol_table_bytes()
        assert _fast.functions(raw, strtab) is None
        with pytest.raises(ExtableError, match="symbol name offset 65535 out of range"):
            listing(image)
        with pytest.raises(ExtableError, match="symbol name offset 65535 out of range"):
            image.functions
