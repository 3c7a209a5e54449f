"""The extension's own table: built by extable, verified, and refused when damaged."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

import mcsafe
from conftest import run_cli
from extable.elf import ElfImage

EXT = Path(mcsafe._mcsafe.__file__)
PKG = EXT.parent


SMALL_SITES = {"group_load", "group_store", "word_load", "word_store", "byte_load", "byte_store"}
EXPECTED = {
    "x86_64": (SMALL_SITES | {"rep_movsb", "wide_load", "wide_store", "mcsafe_copy_avx2_load",
                              "mcsafe_copy_avx2_store", "mcsafe_copy_avx2_nt_load",
                              "mcsafe_copy_avx2_nt_store"}, ("rcx", "rsi", "rdi", "r8")),
    "aarch64": (SMALL_SITES | {"bulk_load", "bulk_store"}, ("x2", "x1", "x0", "x3")),
}


def test_extension_table_verifies_and_names_the_copy_routines() -> None:
    assert run_cli("verify", EXT).returncode == 0
    d = json.loads(run_cli("dump", "--json", EXT, check=True).stdout)
    names, regs = EXPECTED[d["machine"]]
    assert {e["descriptor"]["name"] for e in d["entries"]} == names
    for e in d["entries"]:
        desc = e["descriptor"]
        assert desc["kind"] == "short_copy" and desc["mc_safe"]
        assert (desc["reg"], desc["src_reg"], desc["dst_reg"], desc["rec_reg"]) == regs
        assert e["start_symbol"].startswith("mcsafe_copy_")
        assert e["landing_symbol"].startswith("mcsafe_copy_")
    if d["machine"] == "x86_64":
        rep = next(e for e in d["entries"] if e["descriptor"]["name"] == "rep_movsb")
        assert rep["end"] - rep["start"] == 2          # exactly the rep movsb instruction
        assert rep["descriptor"]["side"] == "both"


def test_rebuilding_the_table_is_byte_identical(tmp_path) -> None:
    import build as project_build   # the repository's build.py

    copy = tmp_path / EXT.name
    shutil.copyfile(EXT, copy)
    project_build.embed_table(copy)
    assert hashlib.sha256(copy.read_bytes()).digest() == hashlib.sha256(EXT.read_bytes()).digest()


def table_offset() -> tuple[int, int]:
    with ElfImage(EXT) as image:
        sec = image.section("extable_table")
        return sec.offset, sec.size


def corrupt(blob: bytearray, how: str) -> None:
    base, _ = table_offset()
    first = base + 48
    if how == "magic":
        blob[base] ^= 0xFF
    elif how == "machine":
        struct.pack_into("<H", blob, base + 10, 183)
    elif how == "unsorted":
        blob[first:first + 32] = blob[first + 16:first + 32] + blob[first:first + 16]
    elif how == "overlapping":
        start1 = struct.unpack_from("<I", blob, first + 16)[0]
        struct.pack_into("<I", blob, first + 4, start1 + 1)
    elif how == "outside":
        struct.pack_into("<I", blob, first + 8, 0x7FFFFF00)
    elif how == "descriptor":
        struct.pack_into("<I", blob, first + 12, 0x8000 | (99 << 16))
    elif how == "truncated":
        struct.pack_into("<I", blob, base + 16, 1 << 20)


@pytest.mark.parametrize("how,words", [
    ("magic", "bad magic"), ("machine", "machine 183"), ("unsorted", "unsorted"),
    ("overlapping", "overlapping"), ("outside", "outside the module's code"),
    ("descriptor", "descriptor 99"), ("truncated", "truncated"),
])
def test_damaged_table_is_refused_and_nothing_is_claimed(tmp_path, how, words) -> None:
    pkg = tmp_path / "mcsafe"
    shutil.copytree(PKG, pkg, ignore=shutil.ignore_patterns("__pycache__", "*.c"))
    blob = bytearray(EXT.read_bytes())
    corrupt(blob, how)
    (pkg / EXT.name).write_bytes(bytes(blob))
    code = ("import mcsafe, json\n"
            "try:\n    mcsafe.copy(bytearray(4), b'abcd'); refused = None\n"
            "except RuntimeError as e:\n    refused = str(e)\n"
            "print(json.dumps([mcsafe.table_status(), mcsafe.published_table_count(), refused]))\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert p.returncode == 0, p.stderr
    status, published, refused = json.loads(p.stdout)
    assert words in status
    assert published == 0
    assert refused and words in refused
