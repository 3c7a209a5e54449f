"""Building tables from the three site sources, writing them both ways, reading them back."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import FIXTURES, run_cli
from extable.compiler import compile_sites
from extable.elf import ElfImage, Segment
from extable.errors import CheckFailed, ExtableError
from extable.model import Handler, Kind, extended_word
from extable.sites import SiteSet
from extable.table import decode, encode


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def dump(path: Path, *extra: str) -> dict:
    return json.loads(run_cli("dump", "--json", path, *extra, check=True).stdout)


def test_all_three_sources_in_one_table(fresh, tmp_path) -> None:
    so = fresh("x86")
    out = tmp_path / "out.so"
    proc = run_cli("build", so, "-o", out, "--rule", "copy_word=errno",
                   "--spec", FIXTURES / "spec.toml", "--json", check=True)
    assert json.loads(proc.stdout)["entries"] == 5
    d = dump(out)
    by_symbol = {e["start_symbol"]: e for e in d["entries"]}
    with ElfImage(so) as image:
        sym = image.symbol_addresses
        funcs = dict(zip(image.functions.names, zip(image.functions.start,
                                                    image.functions.end)))
    # rule: the whole function, landing at its _fixup symbol
    e = by_symbol["copy_word"]
    assert (e["start"], e["end"], e["landing"]) == (*funcs["copy_word"], sym["copy_word_fixup"])
    assert e["descriptor"]["kind"] == "errno" and e["descriptor"]["imm"] == -14
    # rule from the spec, with the spec's own handler
    assert by_symbol["copy_byte"]["descriptor"]["name"] == "word_errno"
    assert by_symbol["copy_byte"]["descriptor"]["imm"] == -5
    # record: one instruction (rep movsb is 2 bytes) with an extended descriptor
    e = by_symbol["fx_copy+0x3"]
    assert e["end"] - e["start"] == 2
    assert e["descriptor"] == {"name": "fx_rep", "kind": "short_copy", "reg": "rcx",
                               "src_reg": "rsi", "dst_reg": "rdi", "rec_reg": None,
                               "side": "both", "mc_safe": True, "imm": 0}
    # record: a range with a classic data word
    e = by_symbol["fx_load"]
    assert e["descriptor"] is None and e["data"] == 0xFFF20003
    assert e["handler"] == "classic errno reg=rax flags=0x0 imm=-14"
    # explicit range from the spec
    e = by_symbol["sum3"]
    assert (e["start"], e["end"], e["landing"]) == (sym["sum3"], sym["sum3"] + 4,
                                                    sym["sum3_fixup"])
    starts = [e["start"] for e in d["entries"]]
    assert starts == sorted(starts)
    assert run_cli("verify", out).returncode == 0


def test_input_untouched_and_build_is_deterministic(fresh, tmp_path) -> None:
    so = fresh("x86")
    before = sha(so)
    a, b = tmp_path / "a.so", tmp_path / "b.so"
    run_cli("build", so, "-o", a, "--rule", "copy_*=errno@{name}_fixup", check=True)
    run_cli("build", so, "-o", b, "--rule", "copy_*=errno@{name}_fixup", check=True)
    assert sha(so) == before
    assert sha(a) == sha(b)
    # rebuilding the output in place changes nothing: the table does not feed itself
    run_cli("build", a, "--in-place", "--rule", "copy_*=errno@{name}_fixup", check=True)
    assert sha(a) == sha(b)


def test_only_the_reserved_section_changes(fresh, tmp_path) -> None:
    so = fresh("x86")
    out = tmp_path / "out.so"
    run_cli("build", so, "-o", out, check=True)
    with ElfImage(so) as image:
        sec = image.section("extable_table")
        old = image.read(0, image.size)
    new = out.read_bytes()
    assert len(new) == len(old)
    assert new[:sec.offset] == old[:sec.offset]
    assert new[sec.offset + sec.size:] == old[sec.offset + sec.size:]
    assert new[sec.offset:sec.offset + 8] == b"EXTABLE\0"


def test_lookup_finds_the_covering_entry_and_exit_1_when_none(fresh, tmp_path) -> None:
    so = fresh("x86")
    out = tmp_path / "out.so"
    run_cli("build", so, "-o", out, check=True)
    hit = json.loads(run_cli("lookup", "--json", out, "fx_copy+4", check=True).stdout)
    assert hit["start_symbol"] == "fx_copy+0x3"
    assert hit["descriptor"]["name"] == "fx_rep"
    miss = run_cli("lookup", out, "untouched")
    assert miss.returncode == 1 and "no entry covers" in miss.stderr
    assert run_cli("lookup", out, "fx_copy+5").returncode == 1   # end is exclusive


def test_rule_landing_inside_the_function_ends_the_range_when_the_rule_says_so(tmp_path) -> None:
    src = tmp_path / "pad.c"
    src.write_text(
        '__asm__(".text\\n.globl f\\n.type f,@function\\nf:\\n nop\\n nop\\n'
        '.globl f_fixup\\nf_fixup:\\n ret\\n.size f,.-f\\n");\n'
        '#include "extable.h"\nEXTABLE_RESERVE(256);\n')
    from conftest import compile_so
    so = compile_so(src, tmp_path / "pad.so")
    out = tmp_path / "o.so"
    refused = run_cli("build", so, "-o", out, "--rule", "f=fixup")
    assert refused.returncode == 2 and "end=landing" in refused.stderr and not out.exists()
    run_cli("build", so, "-o", out, "--rule", "f=fixup,end=landing", check=True)
    (e,) = dump(out)["entries"]
    assert e["end"] == e["landing"] == e["start"] + 2


def test_add_section_round_trip_and_rerun(fresh, tmp_path) -> None:
    so = fresh("plain")
    out = tmp_path / "out.so"
    run_cli("build", so, "-o", out, "--rule", "copy_word=errno", "--add-section", check=True)
    d = dump(out)
    assert d["self_vaddr"] == 0 and len(d["entries"]) == 1
    assert run_cli("verify", out).returncode == 0
    with ElfImage(so) as a, ElfImage(out) as b:
        assert a.executable_segments == b.executable_segments
        sec = b.section("extable_table")
        assert not sec.alloc
    again = tmp_path / "again.so"
    run_cli("build", out, "-o", again, "--rule", "copy_word=errno", "--add-section", check=True)
    assert sha(again) == sha(out)


def test_without_reservation_build_says_to_add_section(fresh, tmp_path) -> None:
    proc = run_cli("build", fresh("plain"), "-o", tmp_path / "o.so", "--rule", "copy_word=errno")
    assert proc.returncode == 2
    assert "--add-section" in proc.stderr and "plain.so" in proc.stderr
    assert not (tmp_path / "o.so").exists()


def test_aarch64_build_and_dump_register_names(fresh, tmp_path) -> None:
    so = fresh("arm")
    out = tmp_path / "out.so"
    run_cli("build", so, "-o", out, "--rule", "copy_word=short_copy", check=True)
    d = dump(out)
    assert d["machine"] == "aarch64"
    descs = {x["name"]: x for x in d["descriptors"]}
    assert (descs["fx_ld"]["reg"], descs["fx_ld"]["src_reg"], descs["fx_ld"]["dst_reg"]) == \
        ("x2", "x1", "x0")
    assert descs["short_copy"]["reg"] == "x2"
    assert run_cli("verify", out).returncode == 0
    text = run_cli("dump", out, check=True).stdout
    assert "reg=x2 src=x1 dst=x0" in text


# -- the compiler on synthetic sites ----------------------------------------

SEG = [Segment(0x1000, 0x100000, 0x1000, 0x100000, 5)]


def sites(rows, handlers=(), origins=None) -> SiteSet:
    return SiteSet.from_lists(list(rows), list(handlers),
                              origins or [f"s{i}" for i in range(len(rows))])


def test_adjacent_equal_ranges_merge_and_different_ones_do_not() -> None:
    h = [Handler(Kind.FIXUP, name="f")]
    x = extended_word(0)
    t = compile_sites(sites([(0x2008, 0x2010, 0x3000, x), (0x2000, 0x2008, 0x3000, x),
                             (0x2010, 0x2018, 0x3004, x), (0x2018, 0x2020, 0x3004, 7)], h),
                      62, SEG)
    assert t.entries.tolist() == [(0x2000, 0x2010, 0x3000, x), (0x2010, 0x2018, 0x3004, x),
                                  (0x2018, 0x2020, 0x3004, 7)]


def test_overlap_names_both_sites() -> None:
    with pytest.raises(ExtableError, match="overlapping ranges: alpha .* and beta"):
        compile_sites(sites([(0x2000, 0x2010, 0x3000, 1), (0x2008, 0x2018, 0x3000, 1)],
                            origins=["alpha", "beta"]), 62, SEG)


@pytest.mark.parametrize("row,what", [((0x10, 0x20, 0x3000, 1), "start"),
                                      ((0x2000, 0x200000, 0x3000, 1), "end"),
                                      ((0x2000, 0x2004, 0x500000, 1), "landing pad")])
def test_addresses_outside_executable_segments_are_refused(row, what) -> None:
    with pytest.raises(CheckFailed, match=what):
        compile_sites(sites([row]), 62, SEG)


def test_an_unsafe_classic_word_names_the_first_entry_that_has_it() -> None:
    """Classic words are checked once per distinct word; the error names the first entry
    of the first unsafe word in table order, whichever word it is."""
    from extable.model import classic_data

    ok = classic_data(Kind.ERRNO, reg=0, imm=-14)                 # rax: fine
    rsp_errno = classic_data(Kind.ERRNO, reg=4, imm=-14)          # the stack pointer
    rsp_count = classic_data(Kind.SHORT_COPY, reg=4)
    def rows(*words: int) -> list[tuple[int, int, int, int]]:
        return [(0x2000 + 16 * i, 0x2008 + 16 * i, 0x3000, w) for i, w in enumerate(words)]

    with pytest.raises(CheckFailed, match=r"^entry 2 \(classic short_copy .*: short_copy "
                                          "count register rsp is the stack pointer"):
        compile_sites(sites(rows(ok, ok, rsp_count, rsp_errno, rsp_count, ok)), 62, SEG)
    with pytest.raises(CheckFailed, match=r"^entry 1 \(classic errno .*: errno register rsp "
                                          "is the stack pointer"):
        compile_sites(sites(rows(ok, rsp_errno, rsp_count, ok)), 62, SEG)


def test_a_million_entries_compile_and_round_trip() -> None:
    n = 1_000_000
    start = np.arange(n, dtype=np.uint64) * 16 + 0x2000
    rng = np.random.default_rng(1)
    perm = rng.permutation(n)
    s = SiteSet(start[perm], start[perm] + 8, start[perm] + 12,
                np.full(n, extended_word(0), np.uint32), [Handler(Kind.FIXUP, name="f")])
    seg = [Segment(0, 1 << 30, 0, 1 << 30, 5)]
    t = compile_sites(s, 62, seg)
    assert len(t) == n and (np.diff(t.entries["start"].astype(np.int64)) == 16).all()
    back = decode(encode(t))
    assert np.array_equal(back.entries, t.entries) and back.handlers == t.handlers
    assert back.lookup(0x2000 + 16 * 777 + 3) == 777
    assert back.lookup(0x2000 + 16 * 777 + 9) is None


def test_et_exec_non_pie_executable(tmp_path) -> None:
    """ET_EXEC: link-time addresses are absolute (load base 0)."""
    src = tmp_path / "exe.c"
    src.write_text((FIXTURES / "sites_x86_64.c").read_text() + "\nint main(void) { return 0; }\n")
    exe = tmp_path / "exe"
    from conftest import COMPILERS
    import shutil
    import subprocess

    import extable

    if not shutil.which(COMPILERS["x86_64"]):
        pytest.skip(f"{COMPILERS['x86_64']} is not installed on this machine")
    subprocess.run([COMPILERS["x86_64"], "-O2", "-no-pie", "-I", extable.include_dir(),
                    str(src), "-o", str(exe)], check=True)
    with ElfImage(exe) as image:
        assert image.type == 2                                 # ET_EXEC
    run_cli("build", exe, "--in-place", "--rule", "copy_word=errno", check=True)
    assert run_cli("verify", exe).returncode == 0
    d = dump(exe)
    assert d["self_vaddr"] >= 0x400000
    assert {e["start_symbol"] for e in d["entries"]} == {"fx_copy+0x3", "fx_load", "copy_word"}
    assert all(e["start"] >= 0x400000 for e in d["entries"])
    if __import__("platform").machine() == "x86_64":
        assert subprocess.run([str(exe)]).returncode == 0      # still runs after the edit


def test_errno_handler_whose_record_register_is_its_target_is_refused(fresh, tmp_path) -> None:
    # The runtime sets reg to imm, then writes the fault record through rec: the
    # same register would send the record to address imm (issue 17, item 12).
    spec = tmp_path / "spec.toml"
    spec.write_text('[handlers.bad]\nkind = "errno"\nreg = "rax"\nrecord = "rax"\nimm = -5\n\n'
                    '[[rules]]\nmatch = "copy_byte"\nhandler = "bad"\n')
    so = fresh("x86")
    p = run_cli("build", so, "-o", tmp_path / "out.so", "--spec", spec)
    assert p.returncode != 0
    assert p.stderr.strip().endswith(
        "descriptor 0 (bad): rec register rax is also the errno register (the handler sets "
        "it to imm, then writes the fault record through it)"), p.stderr
    assert not (tmp_path / "out.so").exists()
