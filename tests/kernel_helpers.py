"""Helpers for the kernel exception-table tests: building objects the kernel's way,
and reading tables the old way (readelf -r, objdump -s) to check ours against."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from conftest import COMPILERS, run_cli

KERNEL_FIXTURES = Path(__file__).parent / "fixtures" / "kernel"
CC = {"x86_64": COMPILERS["x86_64"], "arm64": COMPILERS["aarch64"]}


def need(arch: str) -> str:
    cc = CC[arch]
    if not shutil.which(cc):
        pytest.skip(f"{cc} is not installed (scripts/setup.sh installs it)")
    return cc


def assemble(tmp: Path, arch: str, name: str, asm: str, vermagic: str | None = "6.1.0-test",
             link: list[str] | None = None) -> Path:
    """An object from assembly written with the kernel's .pushsection idiom.

    With ``link`` the object is linked (those are the linker flags) into an image
    whose .rodata holds the kernel's banner; else it is left ET_REL with a
    .modinfo vermagic, like a module."""
    cc = need(arch)
    src = tmp / f"{name}.s"
    extra = ""
    if vermagic and link is None:
        extra = f'.section .modinfo,"a"\n.asciz "vermagic={vermagic} SMP mod_unload "\n'
    elif vermagic:
        extra = (f'.section .rodata,"a"\n.asciz "Linux version {vermagic} (test@example) '
                 '(gcc) #1 SMP"\n')
    src.write_text(asm + "\n" + extra)
    obj = tmp / f"{name}.o"
    subprocess.run([cc, "-c", str(src), "-o", str(obj)], check=True)
    if link is None:
        return obj
    out = tmp / name
    subprocess.run([cc, "-nostdlib", *link, str(obj), "-o", str(out)], check=True)
    return out


def extable_json(*args: str | Path) -> dict:
    p = run_cli(*args, "--json")
    assert p.stdout, p.stderr
    return json.loads(p.stdout)


def readelf_table(path: Path) -> list[tuple[str, int, str, int, int]]:
    """(insn section, offset, fixup section, offset, last word) per entry, from
    readelf -rW and objdump -s -j __ex_table of an ET_REL object."""
    words = objdump_words(path)
    text = subprocess.run(["readelf", "-rW", str(path)], capture_output=True, text=True,
                          check=True).stdout
    block = text.split("Relocation section '.rela__ex_table'")[1].split("Relocation section")[0]
    targets: dict[int, tuple[str, int]] = {}
    for m in re.finditer(r"^([0-9a-f]{16})\s+[0-9a-f]+\s+R_\w+\s+[0-9a-f]+\s+(\S+)\s+([+-])\s+"
                         r"([0-9a-f]+)$", block, re.M):
        off, sym, sign, addend = int(m[1], 16), m[2], m[3], int(m[4], 16)
        targets[off] = (sym, addend if sign == "+" else -addend)
    n = len(words) // 3
    return [(*targets[12 * i], *targets[12 * i + 4], words[3 * i + 2]) for i in range(n)]


def objdump_words(path: Path) -> list[int]:
    text = subprocess.run(["objdump", "-s", "-j", "__ex_table", str(path)], capture_output=True,
                          text=True, check=True).stdout
    data = bytearray()
    for line in text.splitlines():
        m = re.match(r"^ ([0-9a-f]{4,}) ((?:[0-9a-f]{2,8} ?){1,4})", line)
        if m:
            data += bytes.fromhex(m[2].replace(" ", ""))
    return [int.from_bytes(data[i:i + 4], "little") for i in range(0, len(data), 4)]


def decompress(src: Path, dst: Path) -> Path:
    tool = {".xz": ["xz", "-dc"], ".zst": ["zstd", "-dcq"]}[src.suffix]
    with open(dst, "wb") as f:
        subprocess.run([*tool, str(src)], stdout=f, check=True)
    return dst


TEST_USER_COPY = KERNEL_FIXTURES / "test_user_copy-6.1.0-50-amd64.ko.zst"
#: Fields of an Elf64_Shdr, in order, as struct.unpack gives them.
SHDR = struct.Struct("<IIQQQQIIQQ")
SH_TYPE, SH_OFFSET, SH_SIZE, SH_LINK, SH_INFO = 1, 4, 5, 6, 7


class Elf:
    """A little ELF64 editor for corrupting a module the way a fuzzer would."""

    def __init__(self, data: bytes) -> None:
        self.data = bytearray(data)
        self.shoff, = struct.unpack_from("<Q", self.data, 40)
        shnum, shstrndx = struct.unpack_from("<HH", self.data, 60)
        self.headers = [list(SHDR.unpack_from(self.data, self.shoff + 64 * i))
                        for i in range(shnum)]
        names = self.headers[shstrndx][SH_OFFSET]
        self.names = [bytes(self.data[names + h[0]:]).split(b"\0")[0].decode()
                      for h in self.headers]

    def index(self, name: str) -> int:
        return self.names.index(name)

    def set(self, name: str, field: int, value: int) -> None:
        i = self.index(name)
        self.headers[i][field] = value
        SHDR.pack_into(self.data, self.shoff + 64 * i, *self.headers[i])

    def rela(self, name: str, j: int, offset: int | None = None, info: int | None = None,
             addend: int | None = None) -> None:
        """Rewrite relocation ``j`` of RELA section ``name``."""
        at = self.headers[self.index(name)][SH_OFFSET] + 24 * j
        old = struct.unpack_from("<QQq", self.data, at)
        struct.pack_into("<QQq", self.data, at, *(o if v is None else v for o, v in
                                                   zip(old, (offset, info, addend))))

    def write(self, path: Path) -> Path:
        path.write_bytes(bytes(self.data))
        return path


def small_module(tmp: Path) -> Elf:
    """test_user_copy.ko (one entry, .init.text+0x6a9 -> +0x6ae, UACCESS), decompressed."""
    return Elf(decompress(TEST_USER_COPY, tmp / "test_user_copy.ko").read_bytes())
