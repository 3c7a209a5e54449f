"""The extension's own table: built by extable, verified, and refused when damaged."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import expected
import mcsafe
from conftest import TABLE_DAMAGE, damage_table, run_cli

EXT = Path(mcsafe._mcsafe.__file__)
PKG = EXT.parent


def test_extension_table_verifies_and_names_the_copy_routines() -> None:
    assert run_cli("verify", EXT).returncode == 0
    d = json.loads(run_cli("dump", "--json", EXT, check=True).stdout)
    assert expected.sites(d) == expected.expected_sites(d["machine"])
    copies, regs, scans = expected.SITES[d["machine"]]
    for e in d["entries"]:
        desc = e["descriptor"]
        assert desc["kind"] == "short_copy" and desc["mc_safe"]
        if desc["name"] in scans:       # loads only: no destination for the handler to claim
            assert (desc["reg"], desc["src_reg"], desc["dst_reg"], desc["rec_reg"]) == \
                (regs[0], regs[1], None, regs[3])
            assert desc["side"] == "src"
            assert e["start_symbol"].startswith("mcsafe_scan_")
            assert e["landing_symbol"].startswith("mcsafe_scan_")
            continue
        assert (desc["reg"], desc["src_reg"], desc["dst_reg"], desc["rec_reg"]) == regs
        assert e["start_symbol"].startswith("mcsafe_copy_")
        assert e["landing_symbol"].startswith("mcsafe_copy_")
    if d["machine"] == "x86_64":
        rep = next(e for e in d["entries"] if e["descriptor"]["name"] == "rep_movsb")
        assert rep["end"] - rep["start"] == 2          # exactly the rep movsb instruction
        assert rep["descriptor"]["side"] == "both"


def test_the_scans_loads_are_looked_up_and_nothing_before_them() -> None:
    """`extable lookup` on the built extension: the first and last byte of each of
    the scan's sites find that site, the byte before it (a branch, or the
    vector loops' prefetches of the page ahead, which never fault) finds none."""
    d = json.loads(run_cli("dump", "--json", EXT, check=True).stdout)
    scans = expected.SITES[d["machine"]][2]
    entries = [e for e in d["entries"] if e["descriptor"]["name"] in scans]
    assert sorted(e["descriptor"]["name"] for e in entries) == sorted(scans)
    for e in entries:
        for address in (e["start"], e["end"] - 1):
            found = json.loads(run_cli("lookup", "--json", EXT, hex(address), check=True).stdout)
            assert found["index"] == e["index"]
        before = run_cli("lookup", EXT, hex(e["start"] - 1))
        assert before.returncode == 1 and "no entry covers" in before.stderr


def test_rebuilding_the_table_is_byte_identical(tmp_path) -> None:
    import build as project_build   # the repository's build.py

    copy = tmp_path / EXT.name
    shutil.copyfile(EXT, copy)
    project_build.embed_table(copy)
    assert hashlib.sha256(copy.read_bytes()).digest() == hashlib.sha256(EXT.read_bytes()).digest()


@pytest.mark.parametrize("how,words", TABLE_DAMAGE.items())
def test_damaged_table_is_refused_and_nothing_is_claimed(tmp_path, how, words) -> None:
    pkg = tmp_path / "mcsafe"
    shutil.copytree(PKG, pkg, ignore=shutil.ignore_patterns("__pycache__", "*.c"))
    damage_table(EXT, how, pkg / EXT.name)
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
