"""LIEF as an independent reader of every file `extable build` writes in the tests.

extable reads ELF with its own struct code and checks --add-section output with
pyelftools; LIEF is a third parser, written in C++ by other people. For each
file build wrote, it must see what a loader sees unchanged against the input
(program headers, the sections that are loaded, the dynamic entries) and the
table's section present.
"""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
from pathlib import Path

import lief

lief.logging.disable()


def _view(path: str | os.PathLike[str]) -> dict[str, object]:
    binary = lief.ELF.parse(str(path))
    assert binary is not None, f"LIEF cannot parse {path}"
    alloc = lief.ELF.Section.FLAGS.ALLOC
    return {
        "header": (int(binary.header.file_type), int(binary.header.machine_type),
                   binary.header.entrypoint),
        "segments": [(str(s.type), int(s.flags), s.file_offset, s.virtual_address,
                      s.physical_size, s.virtual_size, s.alignment) for s in binary.segments],
        "loaded": [(s.name, str(s.type), int(s.flags), s.virtual_address, s.size, s.offset)
                   for s in binary.sections if s.has(alloc)],
        "dynamic": [(str(d.tag), d.value) for d in binary.dynamic_entries],
        "sections": {s.name for s in binary.sections},
    }


def _extended_numbering(path: str | os.PathLike[str]) -> bool:
    """e_shnum 0 with section headers: the count lives in section header 0 (more than
    65,279 sections). LIEF 1.0 reads no sections from such a file."""
    with open(path, "rb") as f:
        head = f.read(64)
    return struct.unpack_from("<Q", head, 0x28)[0] != 0 and \
        struct.unpack_from("<H", head, 0x3C)[0] == 0


def check_written(before: str | os.PathLike[str], after: str | os.PathLike[str],
                  section: str) -> None:
    """AssertionError unless LIEF sees `after` load as `before` did, with `section`."""
    a, b = _view(before), _view(after)
    keys = ["header", "segments", "dynamic"]
    sections = not _extended_numbering(after)
    if sections:
        keys.append("loaded")
    for key in keys:
        assert a[key] == b[key], f"LIEF: {after}: {key} differ from {before}"
    if sections:
        assert section in b["sections"], f"LIEF: {after} has no section {section!r}"  # type: ignore


class BuildWatch:
    """Around one `extable build` command line: keeps the input as it was (for
    --in-place), then checks what was written."""

    def __init__(self, argv: list[str]) -> None:
        self.active = bool(argv) and argv[0] == "build"
        self.input = self.output = self.copy = None
        if not self.active:
            return
        rest = argv[1:]
        opts = {"-o", "--output", "--rule", "--spec", "--section"}
        positional = [x for i, x in enumerate(rest)
                      if not x.startswith("-") and (i == 0 or rest[i - 1] not in opts)]
        self.section = rest[rest.index("--section") + 1] if "--section" in rest \
            else "extable_table"
        if not positional:
            self.active = False
            return
        self.input = positional[0]
        for flag in ("-o", "--output"):
            if flag in rest:
                self.output = rest[rest.index(flag) + 1]
        if "--in-place" in rest:
            self.output = self.input
            if os.path.isfile(self.input):
                fd, self.copy = tempfile.mkstemp(prefix="lief-before-")
                os.close(fd)
                shutil.copyfile(self.input, self.copy)

    def check(self, returncode: int) -> None:
        try:
            if self.active and returncode == 0 and self.output:
                check_written(self.copy or self.input, self.output, self.section)
        finally:
            if self.copy:
                Path(self.copy).unlink(missing_ok=True)
