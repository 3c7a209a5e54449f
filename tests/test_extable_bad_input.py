"""Bad input: exit 2, one clear line naming the file, no output file, input unchanged."""

from __future__ import annotations

import hashlib
import os
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import FIXTURES, compile_so, run_cli
from extable.compiler import build
from extable.elf import ElfImage
from extable.errors import ExtableError
from extable.spec import load


def check_refused(proc: subprocess.CompletedProcess[str], path: Path, words: str,
                  code: int = 2) -> None:
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert str(path) in lines[0] and words in lines[0], lines[0]


def build_refused(src: Path, tmp_path: Path, words: str, *extra: str) -> None:
    before = hashlib.sha256(src.read_bytes()).hexdigest()
    out = tmp_path / "out.so"
    proc = run_cli("build", src, "-o", out, *extra)
    check_refused(proc, src if "spec" not in extra else proc.stderr.split(":")[1].strip(), words)
    assert not out.exists()
    assert hashlib.sha256(src.read_bytes()).hexdigest() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".extable-")]


def patched(src: Path, dst: Path, offset: int, data: bytes) -> Path:
    blob = bytearray(src.read_bytes())
    blob[offset:offset + len(data)] = data
    dst.write_bytes(bytes(blob))
    return dst


def test_not_an_elf(tmp_path) -> None:
    f = tmp_path / "notes.txt"
    f.write_text("hello")
    build_refused(f, tmp_path, "not an ELF file")


def test_missing_file(tmp_path) -> None:
    check_refused(run_cli("symbols", tmp_path / "nope.so"), tmp_path / "nope.so", "cannot open")


@pytest.mark.parametrize("cut", [4, 40, 63, 64, 200, 1000, 5000])
def test_truncated(fresh, tmp_path, cut) -> None:
    so = fresh("x86")
    f = tmp_path / "cut.so"
    f.write_bytes(so.read_bytes()[:cut])
    build_refused(f, tmp_path, "")


def test_32_bit_and_big_endian_and_machine(fresh, tmp_path) -> None:
    so = fresh("x86")
    build_refused(patched(so, tmp_path / "e32.so", 4, b"\x01"), tmp_path, "32-bit ELF")
    build_refused(patched(so, tmp_path / "be.so", 5, b"\x02"), tmp_path, "big-endian")
    build_refused(patched(so, tmp_path / "ppc.so", 18, struct.pack("<H", 21)), tmp_path,
                  "unsupported machine 21")
    build_refused(patched(so, tmp_path / "core.so", 16, struct.pack("<H", 4)), tmp_path,
                  "unsupported ELF type 4")
    build_refused(patched(so, tmp_path / "rel.so", 16, struct.pack("<H", 1)), tmp_path,
                  "relocatable object (ET_REL)")


def test_corrupted_section_headers(fresh, tmp_path) -> None:
    so = fresh("x86")
    blob = so.read_bytes()
    shoff = struct.unpack_from("<Q", blob, 0x28)[0]
    build_refused(patched(so, tmp_path / "shoff.so", 0x28, struct.pack("<Q", len(blob))),
                  tmp_path, "section header table lies outside the file")
    build_refused(patched(so, tmp_path / "shstrndx.so", 0x3E, struct.pack("<H", 999)),
                  tmp_path, "section name table index 999 out of range")
    # section 5's offset pushed past the end of the file
    build_refused(patched(so, tmp_path / "secoff.so", shoff + 5 * 64 + 24,
                          struct.pack("<Q", len(blob) + 4096)), tmp_path, "past the end")


def symtab_header(path: Path) -> tuple[int, int, int]:
    with ElfImage(path) as image:
        sec = next(s for s in image.sections if s.name == ".symtab")
        strtab = image.sections[sec.link]
        shoff = struct.unpack_from("<Q", image.read(0, 64), 0x28)[0]
        return shoff + sec.index * 64, sec.offset, strtab.size


def test_symbol_name_offset_out_of_range(fresh, tmp_path) -> None:
    so = fresh("x86")
    _, symoff, strsize = symtab_header(so)
    with ElfImage(so) as image:
        _, raw, _ = image.symbol_table_bytes()
        func = next(i for i, s in enumerate(struct.iter_unpack("<IBBHQQ", raw))
                    if s[1] & 0xF == 2 and s[5])
    bad = patched(so, tmp_path / "name.so", symoff + 24 * func, struct.pack("<I", strsize + 100))
    check_refused(run_cli("symbols", bad), bad, "symbol name offset")
    build_refused(bad, tmp_path, "symbol name offset", "--rule", "copy_word=errno")


def test_symbol_table_bad_entry_size(fresh, tmp_path) -> None:
    so = fresh("x86")
    hdr, _, _ = symtab_header(so)
    bad = patched(so, tmp_path / "ent.so", hdr + 56, struct.pack("<Q", 7))
    check_refused(run_cli("symbols", bad), bad, "bad symbol entry size")


def test_no_symbols(tmp_path) -> None:
    src = tmp_path / "bare.c"
    src.write_text("void _start(void) { for (;;) ; }\n")
    bad = tmp_path / "bare"       # a static ET_EXEC, stripped: neither .symtab nor .dynsym
    subprocess.run(["gcc", "-static", "-nostdlib", "-s", "-o", str(bad), str(src)], check=True)
    check_refused(run_cli("symbols", bad), bad, "no symbol table")
    build_refused(bad, tmp_path, "no symbol table", "--rule", "copy_word=errno")


def test_overlapping_rules(fresh, tmp_path) -> None:
    build_refused(fresh("x86"), tmp_path, "overlapping rules",
                  "--rule", "copy_word=errno", "--rule", "copy_w*=fixup")


def test_rule_matching_nothing_warns_and_strict_refuses(fresh, tmp_path) -> None:
    so = fresh("x86")
    out = tmp_path / "o.so"
    proc = run_cli("build", so, "-o", out, "--rule", "nothing_*=errno")
    assert proc.returncode == 0 and "warning" in proc.stderr and "matches no function" in proc.stderr
    out.unlink()
    build_refused(so, tmp_path, "matches no function", "--rule", "nothing_*=errno", "--strict")


def test_reservation_too_small(tmp_path) -> None:
    src = tmp_path / "small.c"
    src.write_text('#include "extable.h"\nEXTABLE_RESERVE(64);\n'
                   "int copy_a(int x) { return x; }\nint copy_a_fixup(void) { return 1; }\n"
                   "int copy_b(int x) { return x + 1; }\nint copy_b_fixup(void) { return 1; }\n")
    so = compile_so(src, tmp_path / "small.so")
    build_refused(so, tmp_path, "enlarge the reservation", "--rule", "copy_*=errno")


def test_unwritable_output_path(fresh, tmp_path) -> None:
    so = fresh("x86")
    proc = run_cli("build", so, "-o", tmp_path / "no" / "such" / "dir" / "o.so")
    check_refused(proc, tmp_path / "no" / "such" / "dir" / "o.so", "cannot write")


def test_output_equal_to_input_needs_in_place(fresh, tmp_path) -> None:
    so = fresh("x86")
    before = so.read_bytes()
    proc = run_cli("build", so, "-o", so)
    check_refused(proc, so, "--in-place")
    assert so.read_bytes() == before


def test_bad_rule_syntax_and_unknown_handler(fresh, tmp_path) -> None:
    build_refused(fresh("x86"), tmp_path, "expected GLOB=HANDLER", "--rule", "copy_word")
    build_refused(fresh("x86"), tmp_path, "unknown handler 'nope'", "--rule", "copy_word=nope")


def test_bad_spec(fresh, tmp_path) -> None:
    spec = tmp_path / "bad.toml"
    spec.write_text("[handlers.x]\nkind = 'teleport'\n")
    proc = run_cli("build", fresh("x86"), "-o", tmp_path / "o.so", "--spec", spec)
    check_refused(proc, spec, "unknown value")
    spec.write_text("this is = = not toml")
    proc = run_cli("build", fresh("x86"), "-o", tmp_path / "o.so", "--spec", spec)
    check_refused(proc, spec, "bad TOML")
    assert not (tmp_path / "o.so").exists()


def test_usage_errors_exit_2_in_one_line(fresh, tmp_path) -> None:
    proc = run_cli("build", fresh("x86"))
    assert proc.returncode == 2 and "no output" in proc.stderr
    proc = run_cli("frobnicate")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1


def test_dump_of_a_file_without_a_table(fresh) -> None:
    so = fresh("x86")
    check_refused(run_cli("dump", so), so, "holds no table yet")
    check_refused(run_cli("verify", fresh("plain")), fresh("plain"), "no section")


def test_verify_catches_a_corrupted_table(fresh, tmp_path) -> None:
    so = fresh("x86")
    out = tmp_path / "o.so"
    run_cli("build", so, "-o", out, "--rule", "copy_*=errno", check=True)
    with ElfImage(out) as image:
        sec = image.section("extable_table")
    blob = bytearray(out.read_bytes())
    first = sec.offset + 48
    # swap the first two entries: unsorted
    blob[first:first + 32] = blob[first + 16:first + 32] + blob[first:first + 16]
    out.write_bytes(bytes(blob))
    proc = run_cli("verify", out)
    check_refused(proc, out, "unsorted", code=1)
    # point an entry's landing pad outside the code
    blob[first:first + 32] = blob[first + 16:first + 32] + blob[first:first + 16]
    blob[first + 8:first + 12] = struct.pack("<I", 0xFFFFFF)
    out.write_bytes(bytes(blob))
    check_refused(run_cli("verify", out), out, "landing pad", code=1)


# -- fuzzing the reader with mutated copies of real files ----------------------

@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_mutated_files_raise_only_extable_error(built, tmp_path_factory, data) -> None:
    blob = bytearray(built[data.draw(st.sampled_from(["x86", "plain"]))].read_bytes())
    how = data.draw(st.sampled_from(["flip", "truncate", "header", "zero"]))
    if how == "truncate":
        blob = blob[:data.draw(st.integers(0, len(blob)))]
    elif how == "zero":
        at = data.draw(st.integers(0, len(blob) - 1))
        blob[at:at + data.draw(st.integers(1, 4096))] = b"\0" * len(blob[at:at + 4096])
    else:
        hi = 64 if how == "header" else len(blob)
        for _ in range(data.draw(st.integers(1, 16))):
            at = data.draw(st.integers(0, hi - 1))
            blob[at] = data.draw(st.integers(0, 255))
        if how == "header" and data.draw(st.booleans()):   # damage the section headers too
            shoff = struct.unpack_from("<Q", blob, 0x28)[0]
            for _ in range(8):
                at = data.draw(st.integers(0, 4095))
                if shoff + at < len(blob):
                    blob[shoff + at] = data.draw(st.integers(0, 255))
    path = tmp_path_factory.mktemp("fuzz") / "m.so"
    path.write_bytes(bytes(blob))
    try:
        with ElfImage(path) as image:
            image.functions
            image.describe(0x1000)
            build(image, load(None, image.machine), [])
    except ExtableError as exc:
        assert str(exc) and "\n" not in str(exc)
    os.unlink(path)
