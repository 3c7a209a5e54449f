"""The command line: what it imports, JSON output and errors, symbols as people see them, rules."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FIXTURES, compile_so, run_cli
from extable.elf import ElfImage

LIBC = Path("/lib/x86_64-linux-gnu/libc.so.6")
LIBSTDCXX = Path("/usr/lib/x86_64-linux-gnu/libstdc++.so.6")


def loaded_modules(*argv: str) -> set[str]:
    """Which heavy modules a command imports, run in a child as the console script does."""
    code = ("import sys; from extable.cli import main; rc = main(sys.argv[1:]); "
            "print(sorted(m for m in ('numpy', 'elftools', 'lief') if m in sys.modules), "
            "file=sys.stderr); sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return set(json.loads(proc.stderr.strip().splitlines()[-1].replace("'", '"')))


# -- 5: startup -----------------------------------------------------------------

def test_symbols_imports_neither_numpy_nor_pyelftools_nor_lief(built) -> None:
    assert loaded_modules("symbols", str(built["x86"])) == set()
    assert loaded_modules("symbols", "--json", "--sort", "name", str(built["x86"])) == set()
    assert loaded_modules("include-dir") == set()


def test_plain_symbols_runs_on_the_accelerator_without_argparse_typing_or_re(built) -> None:
    """``symbols FILE [--json]``, what build steps run, imports only what it runs: argparse
    (with re, gettext, locale, shutil), typing and json are most of a short command's
    time. Run without site, so that nothing the environment imports hides one."""
    root = str(Path(__file__).resolve().parents[1])
    heavy = ("argparse", "typing", "re", "json", "numpy", "elftools", "extable.names")
    code = (f"import sys; sys.path.insert(0, {root!r}); from extable.cli import main; "
            "rc = main(sys.argv[1:]); "
            f"print([m for m in {heavy!r} if m in sys.modules], "
            "'extable._fast' in sys.modules, file=sys.stderr); sys.exit(rc)")
    for argv in (["symbols", str(built["x86"])], ["symbols", "--json", str(built["x86"])],
                 ["symbols", str(built["x86"]), "--json"]):
        proc = subprocess.run([sys.executable, "-S", "-c", code, *argv], capture_output=True,
                              text=True)
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr.strip().splitlines()[-1] == "[] True", (argv, proc.stderr)


QUICK = [["symbols", "f.so"], ["symbols", "--json", "f.so"], ["symbols", "f.so", "--json"]]
ARGPARSE = [["symbols", "--sort", "name", "f.so"], ["symbols", "-C", "f.so"],
            ["symbols", "--js", "f.so"], ["symbols", "--json", "--json"], ["symbols", "-"],
            ["symbols", "--", "f.so"], ["symbols", "f.so", "g.so"], ["symbols"],
            ["dump", "f.so"], ["--json", "symbols", "f.so"], ["symbols", "-h"]]


@pytest.mark.parametrize("argv", QUICK + ARGPARSE)
def test_the_plain_symbols_forms_read_as_argparse_reads_them(argv: list[str]) -> None:
    from extable.arguments import parser
    from extable.cli import _plain_symbols

    quick = _plain_symbols(list(argv))
    assert (quick is not None) == (argv in QUICK)
    if quick is not None:
        assert vars(quick) == vars(parser().parse_args(argv))


def test_build_into_a_reservation_needs_neither_pyelftools_nor_lief(built, tmp_path) -> None:
    assert loaded_modules("build", str(built["x86"]), "-o", str(tmp_path / "o.so"),
                          "--rule", "copy_word=errno") == {"numpy"}


def test_build_add_section_imports_neither_numpy_ma_nor_pyelftools_dwarf(built, tmp_path
                                                                        ) -> None:
    """What a build imports is most of its time: numpy.ma (which numpy 2's unique imports
    unless asked for indices) and pyelftools' ELFFile with its DWARF and EHABI readers
    (the read-back check needs its header parsing only) would cost 30-60 ms more."""
    heavy = ("numpy.ma", "elftools.elf.elffile", "elftools.dwarf")
    code = ("import sys; from extable.cli import main; rc = main(sys.argv[1:]); "
            f"print([m for m in {heavy!r} if m in sys.modules], 'elftools.elf.structs' "
            "in sys.modules, file=sys.stderr); sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, "build", str(built["plain"]), "-o",
                           str(tmp_path / "o.so"), "--add-section", "--rule",
                           "copy_word=errno"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "[] True"


@pytest.mark.parametrize("preset", [None, "2"])
def test_build_keeps_openblas_to_one_thread_unless_told(built, tmp_path, preset) -> None:
    """numpy's OpenBLAS starts a spinning thread per core when numpy is imported; the
    command uses no linear algebra, so it asks for one, unless the environment says."""
    code = ("import os, sys; from extable.cli import main; rc = main(sys.argv[1:]); "
            "print(os.environ.get('OPENBLAS_NUM_THREADS'), len(os.listdir('/proc/self/task')),"
            " file=sys.stderr); sys.exit(rc)")
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    if preset:
        env["OPENBLAS_NUM_THREADS"] = preset
    proc = subprocess.run([sys.executable, "-c", code, "build", str(built["x86"]), "-o",
                           str(tmp_path / "o.so"), "--rule", "copy_word=errno"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    setting, threads = proc.stderr.split()[-2:]
    assert setting == (preset or "1")
    if preset is None:
        assert threads == "1"            # the copy's thread has ended, and no BLAS pool


def test_dump_and_verify_import_no_writer_spec_or_rule_sources(built, tmp_path) -> None:
    """They read a table: the writer (tempfile), the spec (tomllib) and the site sources
    are build's, and cost every dump/verify several milliseconds of startup."""
    out = tmp_path / "o.so"
    run_cli("build", built["plain"], "-o", out, "--add-section", "--rule", "copy_word=errno",
            check=True)
    unwanted = ("tempfile", "tomllib", "extable.writer", "extable.append", "extable.spec",
                "extable.sites", "elftools", "lief")
    code = ("import sys; from extable.cli import main; rc = main(sys.argv[1:]); "
            f"print([m for m in {unwanted!r} if m in sys.modules], file=sys.stderr); "
            "sys.exit(rc)")
    for command in ("dump", "verify"):
        proc = subprocess.run([sys.executable, "-c", code, command, str(out)],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr.strip().splitlines()[-1] == "[]", (command, proc.stderr)


# -- 6: JSON ----------------------------------------------------------------------

def weird_names_so(tmp_path: Path) -> Path:
    """Functions whose names JSON must escape: a quote, a backslash, a space, UTF-8."""
    src = tmp_path / "weird.s"
    names = ['we\\"ird', "back\\\\slash", "with space", "caf\u00e9"]
    src.write_text(".text\n" + "".join(
        f'.globl "{n}"\n.type "{n}",@function\n"{n}":\n ret\n.size "{n}",1\n' for n in names)
        + '.section .note.GNU-stack,"",@progbits\n', encoding="utf-8")
    out = tmp_path / "weird.so"
    subprocess.run(["gcc", "-shared", str(src), "-o", str(out)], check=True)
    return out


def test_json_is_compact_and_agrees_with_the_text_listing(built) -> None:
    lib = built["x86"]
    raw = run_cli("symbols", "--json", lib, check=True).stdout
    assert "\n " not in raw and ": " not in raw          # no indentation, compact separators
    rows = json.loads(raw)
    text = run_cli("symbols", lib, check=True).stdout.splitlines()[1:]
    assert [(int(a, 16), int(b, 16), int(n), name) for a, b, n, name in
            (line.split(maxsplit=3) for line in text)] == \
        [(r["start"], r["end"], r["size"], r["name"]) for r in rows]


def test_json_escapes_names_that_need_it(tmp_path) -> None:
    so = weird_names_so(tmp_path)
    rows = json.loads(run_cli("symbols", "--json", so, check=True).stdout)
    names = {r["name"] for r in rows}
    assert {'we"ird', "back\\slash", "with space", "caf\u00e9"} <= names
    text = subprocess.run([sys.executable, "-m", "extable", "symbols", str(so)],
                          capture_output=True, check=True).stdout
    assert "caf\u00e9".encode() in text and b'we"ird' in text


# -- 7: errors ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def with_table(built, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("table") / "out.so"
    run_cli("build", built["x86"], "-o", out, check=True)
    return out


@pytest.mark.parametrize("address,words", [("-5", "negative"),
                                           ("0x10000000000000000", "wider than 64 bits"),
                                           ("fx_copy-0x100000", "negative"),
                                           ("nosuch+4", "unknown symbol"),
                                           ("12zz", "cannot read address")])
def test_lookup_bad_addresses_exit_2_in_one_line(with_table, address, words) -> None:
    for extra in ([], ["--json"]):
        proc = run_cli("lookup", *extra, with_table, "--", address)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) == 1
        assert words in proc.stderr and str(with_table) in proc.stderr
        if extra:
            err = json.loads(proc.stdout)
            assert err["exit"] == 2 and words in err["error"] and err["file"] == str(with_table)
        else:
            assert proc.stdout == ""


def test_every_json_failure_is_a_json_object_on_stdout(with_table, tmp_path) -> None:
    miss = run_cli("lookup", "--json", with_table, "untouched")
    assert miss.returncode == 1
    assert json.loads(miss.stdout) == {"error": miss.stderr.split(": ", 2)[2].strip(),
                                       "file": str(with_table), "exit": 1}
    missing = run_cli("dump", "--json", tmp_path / "nothere.so")
    assert missing.returncode == 2 and json.loads(missing.stdout)["exit"] == 2
    usage = run_cli("lookup", "--json", with_table)                 # no address
    assert usage.returncode == 2 and json.loads(usage.stdout)["exit"] == 2
    # and a success is one JSON value, nothing else
    hit = run_cli("lookup", "--json", with_table, "fx_copy+3", check=True)
    assert json.loads(hit.stdout)["start_symbol"] == "fx_copy+0x3"


# -- 8: symbols people see -------------------------------------------------------------

def versioned_so(tmp_path: Path) -> Path:
    """f at two versions (f@V1 the compat one, f@@V2 the default), like glibc's."""
    src = tmp_path / "ver.c"
    src.write_text('int f_old(void) { return 1; }\nint f_new(void) { return 2; }\n'
                   'int g(void) { return 3; }\nint g_fixup(void) { return -1; }\n'
                   '__asm__(".symver f_old,f@V1");\n__asm__(".symver f_new,f@@V2");\n')
    script = tmp_path / "ver.map"
    script.write_text("V1 { global: f; local: f_old; };\nV2 { global: f; g; g_fixup; "
                      "local: f_new; } V1;\n")
    return compile_so(src, tmp_path / "ver.so", extra=[f"-Wl,--version-script={script}"])


def test_versioned_names_and_the_default_version_wins_by_name(tmp_path) -> None:
    so = versioned_so(tmp_path)
    stripped = tmp_path / "stripped.so"
    subprocess.run(["strip", "-o", str(stripped), str(so)], check=True)
    for path in (so, stripped):                   # .symtab names, then .dynsym + .gnu.version
        rows = {r["name"]: r for r in json.loads(run_cli("symbols", "--json", path,
                                                         check=True).stdout)}
        assert {"f@V1", "f@@V2"} <= set(rows), sorted(rows)
        assert rows["f@@V2"]["default"] and rows["f@@V2"]["version"] == "V2"
        assert not rows["f@V1"]["default"] and rows["f@V1"]["version"] == "V1"
        with ElfImage(path) as image:
            assert image.symbol_addresses["f"] == rows["f@@V2"]["start"]
            assert image.symbol_addresses["f@V1"] == rows["f@V1"]["start"]
        out = tmp_path / f"{path.stem}-out.so"
        run_cli("build", path, "-o", out, "--add-section", "--rule", "g=fixup@f", check=True)
        (e,) = json.loads(run_cli("dump", "--json", out, check=True).stdout)["entries"]
        assert e["landing"] == rows["f@@V2"]["start"]


@pytest.mark.skipif(not LIBC.exists(), reason=f"{LIBC} is not on this machine")
def test_libc_ifunc_memcpy_and_both_timer_delete_versions() -> None:
    rows = json.loads(run_cli("symbols", "--json", LIBC, check=True).stdout)
    by_name = {r["name"]: r for r in rows}
    memcpy = by_name["memcpy@@GLIBC_2.14"]
    assert memcpy["type"] == "ifunc" and memcpy["default"]
    assert memcpy["size"] == memcpy["end"] - memcpy["start"] > 0
    timers = sorted(n for n in by_name if n.startswith("timer_delete@"))
    assert len(timers) >= 2 and sum(by_name[n]["default"] for n in timers) == 1
    default = next(n for n in timers if by_name[n]["default"])
    with ElfImage(LIBC) as image:
        assert image.symbol_addresses["timer_delete"] == by_name[default]["start"]
    text = run_cli("symbols", LIBC, check=True).stdout
    assert any(line.endswith("memcpy@@GLIBC_2.14 (ifunc)") for line in text.splitlines())


@pytest.mark.parametrize("key", ["address", "name", "size"])
def test_sort(built, key) -> None:
    rows = json.loads(run_cli("symbols", "--json", "--sort", key, built["x86"],
                              check=True).stdout)
    plain = json.loads(run_cli("symbols", "--json", built["x86"], check=True).stdout)
    assert sorted(map(json.dumps, rows)) == sorted(map(json.dumps, plain))
    keys = {"address": lambda r: (r["start"], r["name"]), "name": lambda r: (r["name"], r["start"]),
            "size": lambda r: (r["size"], r["start"], r["name"])}[key]
    assert rows == sorted(rows, key=keys) and len(rows) > 5


@pytest.mark.skipif(not LIBSTDCXX.exists() or not shutil.which("c++filt"),
                    reason=f"{LIBSTDCXX} or c++filt is not on this machine")
def test_demangle_matches_nm_and_keeps_versions() -> None:
    rows = json.loads(run_cli("symbols", "--json", "--demangle", LIBSTDCXX, check=True).stdout)
    raw = json.loads(run_cli("symbols", "--json", LIBSTDCXX, check=True).stdout)
    assert len(rows) == len(raw)
    names = {r["name"] for r in rows}
    assert "std::terminate()@@GLIBCXX_3.4" in names
    nm = subprocess.run(["nm", "-DC", "--defined-only", str(LIBSTDCXX)], capture_output=True,
                        text=True, check=True).stdout
    nm_names = {line.split(" ", 2)[2] for line in nm.splitlines() if " T " in line}
    ours = {r["name"] for r in rows if r["type"] == "func"}
    assert len(ours & nm_names) > 0.9 * len(nm_names)


def test_relocatable_object_lists_functions_as_section_plus_offset(tmp_path) -> None:
    obj = tmp_path / "sites.o"
    subprocess.run(["gcc", "-O2", "-c", "-ffunction-sections", str(FIXTURES / "plain.c"),
                    "-o", str(obj)], check=True)
    rows = json.loads(run_cli("symbols", "--json", obj, check=True).stdout)
    got = {r["name"]: (r["section"], r["start"], r["size"]) for r in rows}
    readelf = subprocess.run(["readelf", "-sW", str(obj)], capture_output=True, text=True,
                             check=True).stdout
    with ElfImage(obj) as image:
        want = {}
        for line in readelf.splitlines():
            p = line.split()
            if len(p) >= 8 and p[3] == "FUNC" and p[6].isdigit():
                want[p[7]] = (image.sections[int(p[6])].name, int(p[1], 16), int(p[2]))
    assert got == want and got["copy_word"][0] == ".text.copy_word"
    text = run_cli("symbols", obj, check=True).stdout
    assert ".text.copy_word+0x0" in text and "relocatable" in text.splitlines()[0]
    proc = run_cli("build", obj, "-o", tmp_path / "o.o", "--add-section")
    assert proc.returncode == 2 and "relocatable object (ET_REL)" in proc.stderr


# -- 9: rules ------------------------------------------------------------------------------

def test_empty_landing_pad_is_refused(built, tmp_path) -> None:
    proc = run_cli("build", built["plain"], "-o", tmp_path / "o.so", "--add-section",
                   "--rule", "copy_word=fixup@")
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1
    assert "empty landing pad" in proc.stderr and not (tmp_path / "o.so").exists()


def test_landing_pad_as_symbol_plus_offset_or_hex(built, tmp_path) -> None:
    with ElfImage(built["plain"]) as image:
        pad = image.symbol_addresses["copy_word_fixup"]
    for landing, want in (("copy_word_fixup+0x4", pad + 4), (f"{pad:#x}", pad),
                          ("{name}_fixup+2", pad + 2)):
        out = tmp_path / "o.so"
        run_cli("build", built["plain"], "-o", out, "--add-section", "--rule",
                f"copy_word=fixup@{landing}", check=True)
        (e,) = json.loads(run_cli("dump", "--json", out, check=True).stdout)["entries"]
        assert e["landing"] == want, landing
        out.unlink()


def test_a_rule_whose_only_function_is_its_own_landing_pad_is_refused(built, tmp_path) -> None:
    # One address, one outcome (issue 20): the pad is the covered function's own start,
    # so a fault would resume there and repeat forever, whether or not --strict.
    for strict in ([], ["--strict"]):
        proc = run_cli("build", built["plain"], "-o", tmp_path / "o.so", "--add-section",
                       *strict, "--rule", "copy_word_f*=fixup@copy_word_fixup")
        assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
        assert "is copy_word_fixup's own start" in proc.stderr
        assert not (tmp_path / "o.so").exists()
    # a glob that also matches the landing pads of the functions it covers skips them
    out = tmp_path / "g.so"
    run_cli("build", built["plain"], "-o", out, "--add-section", "--rule", "copy_*=fixup",
            check=True)
    (e,) = json.loads(run_cli("dump", "--json", out, check=True).stdout)["entries"]
    assert (e["start_symbol"], e["landing_symbol"]) == ("copy_word", "copy_word_fixup")
    nothing = run_cli("build", built["plain"], "-o", tmp_path / "n.so", "--add-section",
                      "--rule", "nosuch*=fixup@copy_word_fixup")
    assert "matches no function" in nothing.stderr


@pytest.mark.parametrize("landing,words", [("nosuch_pad", "unknown symbol 'nosuch_pad'"),
                                           ("copy_word-0x100000", "is negative"),
                                           ("0x10000000000000000", "wider than 64 bits")])
def test_a_landing_pad_that_does_not_resolve_says_why(built, tmp_path, landing, words) -> None:
    proc = run_cli("build", built["plain"], "-o", tmp_path / "o.so", "--add-section",
                   "--rule", f"copy_word=fixup@{landing}")
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1
    assert words in proc.stderr and "landing pad for copy_word" in proc.stderr, proc.stderr
