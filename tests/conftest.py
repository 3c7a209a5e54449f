"""Shared fixtures: shared objects compiled from tests/fixtures/*.c."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import extable

FIXTURES = Path(__file__).parent / "fixtures"
AARCH64_GCC = "aarch64-linux-gnu-gcc"


def compile_so(source: Path, out: Path, cc: str = "gcc", extra: list[str] = ()) -> Path:
    subprocess.run([cc, "-O2", "-shared", "-fPIC", "-I", extable.include_dir(), *extra,
                    str(source), "-o", str(out)], check=True)
    return out


def run_cli(*args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    """The extable CLI in a child process, as a user runs it."""
    proc = subprocess.run([sys.executable, "-m", "extable", *map(str, args)],
                          capture_output=True, text=True)
    if check and proc.returncode:
        raise AssertionError(f"extable {' '.join(map(str, args))} failed: {proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Fixture objects, compiled once per session."""
    d = tmp_path_factory.mktemp("fixtures")
    out = {
        "x86": compile_so(FIXTURES / "sites_x86_64.c", d / "sites_x86_64.so"),
        "plain": compile_so(FIXTURES / "plain.c", d / "plain.so"),
    }
    if shutil.which(AARCH64_GCC):
        out["arm"] = compile_so(FIXTURES / "sites_aarch64.c", d / "sites_aarch64.so",
                                cc=AARCH64_GCC)
    return out


@pytest.fixture
def fresh(built: dict[str, Path], tmp_path: Path):
    """A writable copy of a fixture, by name."""
    def copy(name: str) -> Path:
        if name not in built:
            pytest.skip(f"{AARCH64_GCC} is not installed on this machine (make test installs it)")
        dst = tmp_path / built[name].name
        shutil.copyfile(built[name], dst)
        return dst
    return copy


def readelf_functions(path: str | os.PathLike[str], table: str) -> list[tuple[str, int, int]]:
    """(name, start, end) of FUNC symbols with a size in one symbol table, per readelf -sW."""
    text = subprocess.run(["readelf", "-sW", str(path)], capture_output=True, text=True,
                          check=True).stdout
    rows, current = [], None
    for line in text.splitlines():
        if line.startswith("Symbol table"):
            current = line.split("'")[1]
            continue
        parts = line.split()
        if current != table or len(parts) < 8 or not parts[0][:-1].isdigit():
            continue
        _, value, size, typ, _bind, _vis, ndx, name = parts[:8]
        size_v = int(size, 0) if size.startswith("0x") else int(size)
        if typ == "FUNC" and size_v and ndx != "UND":
            if table == ".dynsym":
                name = name.split("@")[0]
            rows.append((name, int(value, 16), int(value, 16) + size_v))
    return rows
