"""Reading back a table that was written into an ELF file."""

from __future__ import annotations

from .checks import check_table
from .elf import ElfImage
from .errors import CheckFailed, ExtableError
from .table import DEFAULT_SECTION, FLAG_LOADED, Table, decode, is_table


def read_table(image: ElfImage, section_name: str = DEFAULT_SECTION) -> Table:
    """The table embedded in the file's section, decoded (not yet checked against the file)."""
    sec = image.section(section_name)
    if sec is None:
        raise ExtableError(f"no section {section_name!r}: no table was built into this file, "
                           "or it was stripped since (eu-strip and objcopy --remove-section "
                           "drop it; binutils strip keeps it)", image.path)
    blob = image.section_bytes(sec)
    if not is_table(blob):
        raise ExtableError(f"section {section_name!r} holds no table yet (run extable build)",
                           image.path)
    table = decode(blob, image.path)
    if table.flags & FLAG_LOADED and table.self_vaddr != sec.addr:
        raise CheckFailed(f"table says it lives at {table.self_vaddr:#x}, but section "
                          f"{section_name!r} is at {sec.addr:#x}", image.path)
    return table


def verify(image: ElfImage, section_name: str = DEFAULT_SECTION) -> Table:
    """Read the embedded table and apply every compile-time check to it."""
    table = read_table(image, section_name)
    check_table(table, image)
    return table
