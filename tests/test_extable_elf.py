"""The reader: function ranges agree with readelf, machines and tables are recognised."""

from __future__ import annotations

import glob
import json
import subprocess
import sys
import sysconfig

import pytest

from conftest import readelf_functions, run_cli
from extable.elf import ElfImage


def system_libraries() -> list[str]:
    triplet = sysconfig.get_config_var("MULTIARCH") or "x86_64-linux-gnu"
    found = []
    for pattern in ("/lib/{}/libc.so.6", "/lib/{}/libm.so.6", "/lib/{}/libz.so.1",
                    "/usr/lib/{}/libssl.so.3"):
        found += glob.glob(pattern.format(triplet))
    return found


@pytest.mark.parametrize("lib", system_libraries())
def test_symbols_json_matches_readelf_on_system_library(lib: str) -> None:
    proc = run_cli("symbols", "--json", lib, check=True)
    ours = sorted((d["name"], d["start"], d["end"]) for d in json.loads(proc.stdout))
    with ElfImage(lib) as image:
        table = image.functions.table
    assert ours == sorted(readelf_functions(lib, table))
    assert len(ours) > 50


def test_symbols_of_a_file_with_symtab_match_readelf(built) -> None:
    ours = sorted((d["name"], d["start"], d["end"])
                  for d in json.loads(run_cli("symbols", "--json", built["x86"], check=True).stdout))
    assert ours == sorted(readelf_functions(built["x86"], ".symtab"))
    names = [n for n, _, _ in ours]
    assert {"fx_copy", "fx_load", "copy_word", "sum3", "untouched"} <= set(names)


def test_stripped_file_falls_back_to_dynsym(built, tmp_path) -> None:
    stripped = tmp_path / "stripped.so"
    subprocess.run(["strip", "-o", str(stripped), str(built["x86"])], check=True)
    with ElfImage(stripped) as image:
        assert image.functions.table == ".dynsym"
        got = sorted(zip(image.functions.names, image.functions.start))
    assert got == sorted((n, s) for n, s, _ in readelf_functions(stripped, ".dynsym"))
    assert "fx_copy" in dict(got)


def test_aarch64_machine_and_symbols(built) -> None:
    if "arm" not in built:
        pytest.skip("aarch64-linux-gnu-gcc is not installed on this machine")
    with ElfImage(built["arm"]) as image:
        assert image.machine_name == "aarch64"
        assert "fx_copy" in image.functions.names
        assert image.executable_segments


def test_describe_names_symbol_plus_offset(built) -> None:
    with ElfImage(built["x86"]) as image:
        start = image.symbol_addresses["fx_copy"]
        assert image.describe(start) == "fx_copy"
        assert image.describe(start + 3) == "fx_copy+0x3"


def test_text_output_lists_every_function(built) -> None:
    out = run_cli("symbols", built["x86"], check=True).stdout.splitlines()
    assert out[0].startswith("# ") and ".symtab" in out[0]
    rows = [line.split() for line in out[1:]]
    assert all(int(r[1], 16) - int(r[0], 16) == int(r[2]) for r in rows)
    assert "fx_copy" in [r[3] for r in rows]


def test_version_and_include_dir() -> None:
    assert run_cli("--version", check=True).stdout.startswith("extable ")
    inc = run_cli("--include-dir", check=True).stdout.strip()
    assert (__import__("pathlib").Path(inc) / "extable.h").is_file()


def test_cli_does_not_import_lief_unless_adding_a_section(built, tmp_path) -> None:
    code = ("import sys; from extable.cli import main; "
            f"main(['build', {str(built['x86'])!r}, '-o', {str(tmp_path / 'o.so')!r}]); "
            "print('lief' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip().splitlines()[-1] == "False"
