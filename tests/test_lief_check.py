"""The LIEF check every `extable build` in the tests goes through (tests/lief_check.py)
can fail: it sees what a loader would see change."""

from __future__ import annotations

import shutil
import struct

import pytest

from conftest import FIXTURES, compile_so, run_cli
from extable.elf import ElfImage
from lief_check import check_written


def test_it_passes_a_build_and_catches_a_moved_segment_a_lost_section_and_dynamic(
        tmp_path) -> None:
    so = compile_so(FIXTURES / "csum.c", tmp_path / "csum.so")
    out = tmp_path / "out.so"
    run_cli("build", so, "-o", out, "--rule", "csum=unwind", check=True)   # checked inside
    check_written(so, out, "extable_table")
    with ElfImage(out) as image:
        phoff = struct.unpack_from("<Q", image.read(0, 64), 0x20)[0]
        load = next(i for i, p in enumerate(image.program_headers) if p[0] == 1)
        dynamic = image.section(".dynamic")
    for how in ("segment", "section", "dynamic"):
        bad = tmp_path / f"{how}.so"
        shutil.copyfile(out, bad)
        blob = bytearray(bad.read_bytes())
        if how == "segment":                  # p_vaddr of the first PT_LOAD
            at = phoff + 56 * load + 16
            struct.pack_into("<Q", blob, at, struct.unpack_from("<Q", blob, at)[0] + 0x1000)
        elif how == "dynamic":                # the first dynamic entry's value
            at = dynamic.offset + 8
            struct.pack_into("<Q", blob, at, struct.unpack_from("<Q", blob, at)[0] + 1)
        bad.write_bytes(bytes(blob))
        with pytest.raises(AssertionError, match="LIEF"):
            check_written(so, bad, "extable_table" if how != "section" else "no_such")
