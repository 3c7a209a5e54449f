"""Is this file a Linux kernel object? Cheap enough to ask before every dump.

Only the standard library and a few ``pread`` calls (the ELF header, the
section headers and their name table), so the ``extable`` command pays nothing
for the question on its own files.
"""

from __future__ import annotations

import os
import stat
import struct

ET_REL = 1
KERNEL_SECTION = "__ex_table"
OWN_SECTION = "extable_table"
_MAX_SHNUM = 1 << 20
XZ_MAGIC = b"\xfd7zXZ\x00"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
GZIP_MAGIC = b"\x1f\x8b"


def compression_of(head: bytes) -> str | None:
    """"xz", "zstd", "gzip" or None, from a file's first bytes."""
    for name, magic in (("xz", XZ_MAGIC), ("zstd", ZSTD_MAGIC), ("gzip", GZIP_MAGIC)):
        if head.startswith(magic):
            return name
    return None


def section_names(fd: int, size: int) -> tuple[int, set[str] | None] | None:
    """(e_type, section names) of an ELF64 little-endian file, or None.

    The names are None when the section headers or their name table are broken.
    """
    head = os.pread(fd, 64, 0)
    if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
        return None
    e_type = struct.unpack_from("<H", head, 16)[0]
    e_shoff, = struct.unpack_from("<Q", head, 40)
    e_shentsize, e_shnum, e_shstrndx = struct.unpack_from("<HHH", head, 58)
    if e_shentsize != 64 or not 0 < e_shnum < _MAX_SHNUM or e_shstrndx >= e_shnum:
        return e_type, None
    if e_shoff + 64 * e_shnum > size:
        return e_type, None
    table = os.pread(fd, 64 * e_shnum, e_shoff)
    _n, _t, _f, _a, str_off, str_size = struct.unpack_from("<IIQQQQ", table, 64 * e_shstrndx)
    if str_off + str_size > size or str_size > (64 << 20):
        return e_type, None
    strings = os.pread(fd, str_size, str_off)
    names = set()
    for i in range(e_shnum):
        name_off, = struct.unpack_from("<I", table, 64 * i)
        end = strings.find(b"\0", name_off)
        if name_off >= len(strings) or end < 0:
            return e_type, None
        names.add(strings[name_off:end].decode("latin-1"))
    return e_type, names


def is_kernel_object(path: str | os.PathLike[str]) -> bool:
    """A compressed file, an ET_REL module, or an image with ``__ex_table`` and no table of ours.

    Files that cannot be read say False: the caller's own reader reports them.
    """
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        if compression_of(os.pread(fd, 8, 0)):
            return True
        found = section_names(fd, os.fstat(fd).st_size)
    except OSError:
        return False
    finally:
        os.close(fd)
    if found is None:
        return False
    e_type, names = found
    if e_type == ET_REL:
        # our own reader refuses ET_REL anyway; the kernel reader says what is broken
        return names is None or KERNEL_SECTION in names or ".modinfo" in names
    return names is not None and KERNEL_SECTION in names and OWN_SECTION not in names
