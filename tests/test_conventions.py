"""The conventions users of argparse programs and of Python's file objects expect
(issue 22): --version on every command, usage errors as ``prog: error: ...`` with
exit 2, help for every positional argument, sizes sorted as nm sorts them, and
``read(-1)`` meaning everything."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mcsafe
from conftest import run_cli
from extable.arguments import parser as extable_parser
from mcsafe.cli import parser as mcsafe_parser

SCRIPTS = Path(sys.executable).parent
COMMANDS = {"extable": [str(SCRIPTS / "extable")],
            "python -m extable": [sys.executable, "-m", "extable"],
            "mcsafe": [str(SCRIPTS / "mcsafe")],
            "python -m mcsafe": [sys.executable, "-m", "mcsafe"]}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_version_on_every_command(command: str) -> None:
    p = subprocess.run([*COMMANDS[command], "--version"], capture_output=True, text=True)
    package = "extable" if "extable" in command else "mcsafe"
    assert (p.returncode, p.stdout, p.stderr) == (0, f"{package} {mcsafe.__version__}\n", "")


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_no_arguments_is_a_usage_error(command: str) -> None:
    """As argparse says it: ``prog: error: ...`` last (extable: that line alone), exit 2."""
    p = subprocess.run(COMMANDS[command], capture_output=True, text=True)
    prog = "python -m mcsafe" if command == "python -m mcsafe" else command.split()[-1]
    assert p.returncode == 2 and p.stdout == "" and "Traceback" not in p.stderr
    last = p.stderr.splitlines()[-1]
    assert re.fullmatch(rf"{re.escape(prog)}: error: .*(command|required).*", last), p.stderr


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_an_unknown_option_is_a_usage_error(command: str) -> None:
    args = ["symbols", sys.executable] if "extable" in command else ["scan", os.devnull]
    p = subprocess.run([*COMMANDS[command], *args, "--no-such-option"], capture_output=True,
                       text=True)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert re.search(r"^[\w -]+: error: .*--no-such-option", p.stderr, re.M), p.stderr


def parsers(p: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """The parser and every subcommand's parser, depth first."""
    out = [p]
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                out += parsers(sub)
    return out


@pytest.mark.parametrize("make", [extable_parser, mcsafe_parser], ids=["extable", "mcsafe"])
def test_every_argument_has_help(make) -> None:  # type: ignore[no-untyped-def]
    silent = [f"{p.prog} {a.dest}" for p in parsers(make()) for a in p._actions
              if not isinstance(a, argparse._SubParsersAction) and not a.help]
    assert silent == []


def test_sort_size_is_ascending_as_nm_size_sort(built) -> None:  # type: ignore[no-untyped-def]
    rows = json.loads(run_cli("symbols", "--json", "--sort", "size", built["x86"],
                              check=True).stdout)
    sizes = [r["size"] for r in rows]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]
    # nm --size-sort over the same file: its function symbols, sizes in the same order
    nm = subprocess.run(["nm", "--size-sort", "-S", str(built["x86"])], capture_output=True,
                        text=True, check=True).stdout
    nm_sizes = [int(f.split()[1], 16) for f in nm.splitlines()
                if f.split()[2] in "Tti" and f.split()[3] in {r["name"] for r in rows}]
    assert nm_sizes == sizes
    back = json.loads(run_cli("symbols", "--json", "--sort", "size", "-r", built["x86"],
                              check=True).stdout)
    assert back == rows[::-1]


def test_sort_file_is_documented() -> None:
    text = extable_parser().format_help()
    sub = next(a for a in extable_parser()._actions
               if isinstance(a, argparse._SubParsersAction)).choices["symbols"].format_help()
    assert "symbols" in text and re.search(r"file \(the symbol\s+table's order", sub), sub


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("read") / "data"
    path.write_bytes(os.urandom(3 * 4096 + 123))
    return path


@settings(max_examples=60, deadline=None)
@given(n=st.one_of(st.none(), st.integers(-5, -1)), offset=st.integers(0, 4 * 4096))
def test_read_minus_one_is_everything_from_offset(data_file: Path, n: int | None,
                                                  offset: int) -> None:
    """MappedFile.read(-1, offset) against the reference, FileIO (the raw file open()
    gives with buffering=0), whose read takes any negative size as "to the end"."""
    with open(data_file, "rb", buffering=0) as ref:
        ref.seek(offset)
        want = ref.read(-1 if n is None else n)
    with mcsafe.MappedFile(data_file) as f:
        assert f.read(n, offset) == want
        if offset == 0:
            assert f.read() == want
    with mcsafe.fileio.open(data_file, "rb", 0) as raw:
        raw.seek(offset)
        assert raw.read(-1 if n is None else n) == want
