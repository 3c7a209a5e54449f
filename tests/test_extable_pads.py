"""Landing pads that cannot loop or shrink a range silently (issue 20, item 3).

A rule names a landing pad by symbol, symbol+offset or number. Whatever the
spelling, one address has one outcome: a pad inside the range it covers (the
function's own start, or any address in it, which a later fault would jump
back to and fault again, forever) is refused by ``build`` and reported by
``verify``; a pad that would cut the range short is refused unless the rule
says ``end=landing``; and the runtime never publishes such a table.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import FIXTURES, compile_so, run_cli
from extable.elf import ElfImage
from extable.model import builtin_handlers, extended_word
from extable.table import ENTRY_DTYPE, Table, encode
from extable.writer import table_bytes_for

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def csum(tmp_path_factory) -> Path:
    return compile_so(FIXTURES / "csum.c", tmp_path_factory.mktemp("csum") / "csum.so")


def function(so: Path, name: str) -> tuple[int, int]:
    with ElfImage(so) as image:
        f = image.functions
        i = f.names.index(name)
        return f.start[i], f.start[i] + f.size[i]


def one_line_refusal(proc: subprocess.CompletedProcess[str], *words: str, code: int = 2) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def spellings(so: Path, offset: int) -> list[str]:
    start, _ = function(so, "csum")
    return [f"csum+{offset:#x}", f"{start + offset:#x}", str(start + offset)] + \
        (["csum"] if offset == 0 else [])


def test_a_pad_at_the_functions_own_start_is_refused_however_it_is_spelt(csum, tmp_path) -> None:
    # On main: '@csum+0x0' and '@0x...' were accepted (a fault looped forever) and
    # '@csum' was skipped with a warning: one address, two outcomes.
    outcomes = set()
    for pad in spellings(csum, 0):
        out = tmp_path / "o.so"
        proc = run_cli("build", csum, "-o", out, "--rule", f"csum=errno@{pad}")
        line = one_line_refusal(proc, "landing pad", "csum", "own start", "forever")
        assert not out.exists()
        outcomes.add(re.sub(r"rule '[^']*'", "RULE", line))
    assert len(outcomes) == 1, outcomes


def test_a_pad_inside_the_function_is_refused_unless_the_rule_cuts_the_range(csum,
                                                                           tmp_path) -> None:
    # On main: '@csum+0x4' covered only the first 4 bytes, silently (the loop after
    # them was not covered, and a fault there killed the process).
    start, end = function(csum, "csum")
    for pad in spellings(csum, 4):
        proc = run_cli("build", csum, "-o", tmp_path / "o.so", "--rule", f"csum=errno@{pad}")
        one_line_refusal(proc, "landing pad", f"{start + 4:#x}", "inside csum",
                         f"{start:#x}..{end:#x}", "end=landing")
        assert not (tmp_path / "o.so").exists()
    out = tmp_path / "cut.so"
    run_cli("build", csum, "-o", out, "--rule", "csum=errno@csum+4,end=landing", check=True)
    (e,) = json.loads(run_cli("dump", "--json", out, check=True).stdout)["entries"]
    assert (e["start"], e["end"], e["landing"]) == (start, start + 4, start + 4)
    assert run_cli("verify", out).returncode == 0


def test_cutting_at_the_start_leaves_nothing_and_is_refused(csum, tmp_path) -> None:
    proc = run_cli("build", csum, "-o", tmp_path / "o.so", "--rule",
                   "csum=errno@csum,end=landing")
    one_line_refusal(proc, "own start", "forever")


def test_a_pad_at_the_end_or_in_another_function_is_fine(csum, tmp_path) -> None:
    start, end = function(csum, "csum")
    fix, _ = function(csum, "csum_fixup")
    for pad, want in ((f"{end:#x}", end), ("csum_fixup", fix), ("", fix)):
        out = tmp_path / "o.so"
        rule = f"csum=errno@{pad}" if pad else "csum=errno"
        run_cli("build", csum, "-o", out, "--rule", rule, check=True)
        (e,) = json.loads(run_cli("dump", "--json", out, check=True).stdout)["entries"]
        assert (e["start"], e["end"], e["landing"]) == (start, end, want), rule
        out.unlink()


def test_the_spec_file_says_end_landing_too(csum, tmp_path) -> None:
    spec = tmp_path / "spec.toml"
    spec.write_text('[[rules]]\nmatch = "csum"\nhandler = "errno"\nlanding = "csum+4"\n')
    one_line_refusal(run_cli("build", csum, "-o", tmp_path / "o.so", "--spec", spec),
                     "inside csum", "end=landing")
    spec.write_text('[[rules]]\nmatch = "csum"\nhandler = "errno"\nlanding = "csum+4"\n'
                    'end = "landing"\n')
    run_cli("build", csum, "-o", tmp_path / "o.so", "--spec", spec, check=True)
    spec.write_text('[[rules]]\nmatch = "csum"\nhandler = "errno"\nend = "sideways"\n')
    one_line_refusal(run_cli("build", csum, "-o", tmp_path / "p.so", "--spec", spec),
                     "end", "sideways", "function", "landing")


@pytest.mark.parametrize("rule,words", [("csum=errno@csum_fixup,end=nowhere", "end=nowhere"),
                                        ("csum=errno@csum_fixup,cut", "'cut'")])
def test_bad_rule_options_are_refused(csum, tmp_path, rule, words) -> None:
    one_line_refusal(run_cli("build", csum, "-o", tmp_path / "o.so", "--rule", rule), words)


def looping_table(csum: Path, out: Path, pad_offset: int) -> Path:
    """csum's file with a table (written directly, past build's checks) whose one entry
    covers csum and lands at csum + pad_offset: what an old build or a hand-made table
    could hold."""
    start, end = function(csum, "csum")
    handlers = builtin_handlers(62)
    entries = np.zeros(1, ENTRY_DTYPE)
    entries[0] = (start, end, start + pad_offset, extended_word(0))
    table = Table(62, entries, [handlers["errno"]])
    with ElfImage(csum) as image:
        offset, blob = table_bytes_for(image, table, "extable_table")
    data = bytearray(csum.read_bytes())
    data[offset:offset + len(blob)] = blob
    out.write_bytes(bytes(data))
    return out


@pytest.mark.parametrize("pad_offset", [0, 0x18])
def test_verify_reports_a_looping_pad_naming_the_entry(csum, tmp_path, pad_offset) -> None:
    # On main: "ok, 1 entries".
    bad = looping_table(csum, tmp_path / "loop.so", pad_offset)
    line = one_line_refusal(run_cli("verify", bad), "entry 0", "csum", "landing pad",
                            "inside the range it covers", "forever", code=1)
    assert str(bad) in line
    proc = run_cli("verify", "--json", bad)
    assert proc.returncode == 1 and json.loads(proc.stdout)["exit"] == 1


def test_the_runtime_never_publishes_a_looping_pad(csum, tmp_path) -> None:
    # On main the table was published, and a fault in csum looped forever.
    bad = looping_table(csum, tmp_path / "loop.so", 0)
    code = (f"import ctypes, mcsafe\nctypes.CDLL({str(bad)!r})\n"
            f"try:\n    mcsafe.register({str(bad)!r})\n    print('registered')\n"
            "except mcsafe.TableError as e:\n    print('TableError:', e)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=ROOT, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("TableError:") and "landing pad" in p.stdout \
        and "forever" in p.stdout, p.stdout
