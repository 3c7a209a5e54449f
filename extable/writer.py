"""The writer: a table's bytes into an ELF file, atomically.

Two ways, as docs/FORMAT.md describes:

* into an existing section of the file (the reservation that ``extable.h``
  makes at compile time, or a section an earlier ``--add-section`` run added):
  the bytes are overwritten in a copy of the file and nothing else moves, as
  the kernel's ``scripts/sorttable.c`` does for ``__ex_table``;
* into a new non-loaded section appended after everything else, for files
  built without a reservation (:mod:`extable.append`, the layout of
  ``objcopy --add-section``): no segment and no loaded section moves, and the
  result is checked with an independent reader before it is kept.

Either way the output is a copy of the input in a temporary file in the target
folder (:mod:`extable.output`), fsynced and renamed into place; on any error
nothing is left behind. The copy is streamed (the kernel copies the file), so a
600 MB vmlinux costs neither its size in memory nor more than a few seconds.
"""

from __future__ import annotations

import contextlib
import os
from typing import Callable

from .append import append_section, check_unchanged
from .elf import ElfImage
from .errors import ExtableError
from .output import Output, check_target
from .table import DEFAULT_SECTION, FLAG_LOADED, Table, encode, encoded_size, is_table

__all__ = ["DEFAULT_SECTION", "Output", "check_target", "write_added_section",
           "write_into_section"]


def table_bytes_for(image: ElfImage, table: Table, section_name: str) -> tuple[int, bytes]:
    """(file offset, bytes padded to the section) for writing into an existing section."""
    sec = image.section(section_name)
    if sec is None:
        raise ExtableError(f"no section {section_name!r} to write into: reserve one with "
                           "EXTABLE_RESERVE() from extable.h, or use --add-section", image.path)
    if not sec.has_file_bytes:
        raise ExtableError(f"section {section_name!r} is NOBITS: the reservation must be "
                           "const and occupy file bytes", image.path)
    current = image.section_bytes(sec)
    if not is_table(current) and current.count(0) != len(current):
        raise ExtableError(f"section {section_name!r} holds other data (neither an empty "
                           "reservation nor a table): refusing to overwrite it", image.path)
    table.flags = FLAG_LOADED if sec.alloc else 0
    table.self_vaddr = sec.addr if sec.alloc else 0
    blob = encode(table)
    if len(blob) > sec.size:
        raise ExtableError(f"table needs {len(blob)} bytes but section {section_name!r} holds "
                           f"{sec.size}: enlarge the reservation", image.path)
    return sec.offset, blob + b"\0" * (sec.size - len(blob))


def _opened(output: Output | None, image: ElfImage, target: str, in_place: bool
            ) -> contextlib.AbstractContextManager[Output]:
    """The output the caller opened (and will close), or a new one closed here."""
    return contextlib.nullcontext(output) if output is not None else Output(image, target,
                                                                              in_place)


def write_into_section(image: ElfImage, table: Table, target: str,
                       section_name: str = DEFAULT_SECTION, in_place: bool = False,
                       before_commit: Callable[[], None] | None = None,
                       output: Output | None = None) -> None:
    """Overwrite the named section's bytes in a copy of the file written to target
    (``output``, if the caller opened it already, so that the copy is under way)."""
    offset, blob = table_bytes_for(image, table, section_name)
    with _opened(output, image, target, in_place) as out:
        f = out.copy()
        try:
            f.seek(offset)
            f.write(blob)
        except OSError as exc:
            raise ExtableError(f"cannot write: {exc.strerror}", target) from None
        out.commit(before_commit)


def write_added_section(image: ElfImage, table: Table, target: str,
                        section_name: str = DEFAULT_SECTION, in_place: bool = False,
                        before_commit: Callable[[], None] | None = None,
                        output: Output | None = None) -> None:
    """Append a non-loaded section holding the table; refuse unless nothing else changed."""
    existing = image.section(section_name)
    if existing is not None and existing.size >= encoded_size(table):
        write_into_section(image, table, target, section_name, in_place,   # a re-run
                           before_commit, output)
        return
    if existing is not None:
        raise ExtableError(f"section {section_name!r} exists but is too small for the table",
                           image.path)
    table.flags, table.self_vaddr = 0, 0
    blob = encode(table)
    with _opened(output, image, target, in_place) as out:
        f = out.copy()
        try:
            append_section(image, f, section_name, blob)
            f.flush()                      # the check reads the file as it will be kept
        except OSError as exc:
            raise ExtableError(f"cannot write: {exc.strerror}", target) from None
        try:
            check_unchanged(image.file, out.path, section_name, blob)
        except ExtableError as exc:
            raise ExtableError(f"--add-section failed, nothing written: {exc.message}",
                               image.path) from None
        out.commit(before_commit)
