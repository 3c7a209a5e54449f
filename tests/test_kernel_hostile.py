"""A hostile reviewer's inputs: fuzzed modules, odd lookup arguments, decompression
bombs, failures under --json. Each case was seen going wrong before its fix."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import run_cli
from kernel_helpers import small_module


def test_relocation_offset_near_2_64_names_no_entry(tmp_path: Path) -> None:
    """r_offset 2**64 - 12 is not entry -1 (the last one): it lies past the table."""
    elf = small_module(tmp_path)
    elf.rela(".rela__ex_table", 0, offset=2**64 - 12)
    ko = elf.write(tmp_path / "far.ko")
    p = run_cli("verify", ko, "--json")
    assert p.returncode == 1, p.stderr
    assert "Traceback" not in p.stderr
    findings = json.loads(p.stdout)["findings"]
    assert findings == [
        {"index": -1, "check": "relocation",
         "message": "relocation at __ex_table+0xfffffffffffffff4 is not at an insn or fixup "
                    "field"},
        {"index": 0, "check": "relocation", "message": "no relocation for its insn field"}]
    dump = run_cli("dump", ko)
    assert dump.returncode == 0
    assert dump.stdout.splitlines()[1].split()[:2] == ["0", "?"]
