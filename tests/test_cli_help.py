"""``mcsafe``'s help and usage text as argparse formats it: the command gives its
formatters their width itself (cli.HelpFormatter: argparse would import shutil for
it), and every text must be byte for byte what argparse's own formatters make of
the same parser, at every width COLUMNS or a terminal gives. argparse is the
reference: the same parser is built a second time with argparse's formatters."""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import pty
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcsafe import cli
from terminal import run_on_terminal, set_size

#: what to ask each parser for: help of the top and of each command, and a usage error
ARGVS = [["--help"], ["scan", "--help"], ["rescue", "--help"], ["demo", "--help"],
         ["rescue", "only-src"], ["scan", "--jobs", "0", "x"], []]


def texts(formatters: tuple[type, type] | None) -> list[tuple[str, str, object]]:
    """(stdout, stderr, exit status) of each of ARGVS parsed by cli.parser(), built
    with argparse's own formatter classes when formatters is (HelpFormatter,
    RawDescriptionHelpFormatter), else with the command's."""
    out: list[tuple[str, str, object]] = []
    with pytest.MonkeyPatch.context() as mp:
        if formatters is not None:
            mp.setattr(cli, "HelpFormatter", formatters[0])
            mp.setattr(cli, "RawDescriptionHelpFormatter", formatters[1])
        for argv in ARGVS:
            stdout, stderr = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr), \
                    pytest.raises(SystemExit) as exited:
                cli.parser("mcsafe").parse_args(argv)
            out.append((stdout.getvalue(), stderr.getvalue(), exited.value.code))
    return out


ARGPARSE = (argparse.HelpFormatter, argparse.RawDescriptionHelpFormatter)


@settings(max_examples=60, deadline=None)
@given(columns=st.one_of(st.none(), st.integers(-3, 300).map(str),
                         st.sampled_from(["", "abc", " 90", "1e2", "0x50", "٨٠"])),
       terminal=st.one_of(st.none(), st.integers(0, 300)))
def test_help_and_usage_are_argparses_at_every_width(columns: str | None,
                                                     terminal: int | None) -> None:
    """COLUMNS unset, a number (positive, 0, negative), or not one; stdout a terminal
    of some width (0: one that says none) or not a terminal."""
    with contextlib.ExitStack() as stack, pytest.MonkeyPatch.context() as mp:
        if columns is None:
            mp.delenv("COLUMNS", raising=False)
        else:
            mp.setenv("COLUMNS", columns)
        if terminal is None:
            stdout = stack.enter_context(open(os.devnull, "w"))
        else:
            master, slave = pty.openpty()
            stack.callback(os.close, master)
            stdout = stack.enter_context(open(slave, "w"))
            set_size(slave, terminal)
        mp.setattr(sys, "__stdout__", stdout)
        ours, theirs = texts(None), texts(ARGPARSE)
    assert ours == theirs
    assert [code for _, _, code in ours] == [0, 0, 0, 0, 2, 2, 2]


def test_without_a_stdout_the_width_is_argparses() -> None:
    """sys.__stdout__ None (pythonw, a daemon that closed it): the fallback, 80."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("COLUMNS", raising=False)
        mp.setattr(sys, "__stdout__", None)
        assert cli.terminal_width() == 80
        assert texts(None) == texts(ARGPARSE)


@pytest.mark.parametrize("width", [33, 80, 151])
def test_the_command_on_a_terminal_prints_argparses_help_without_shutil(width: int) -> None:
    """`mcsafe rescue --help` run with a terminal of `width` columns as its stdout,
    COLUMNS unset: the text argparse's formatters print for it, and shutil is
    never imported."""
    script = ("import sys\nfrom mcsafe.cli import main\n"
              "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
              "sys.stderr.write(str('shutil' in sys.modules))\n")
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}

    def run(code: str, **extra: str) -> tuple[bytes, str]:
        p, out = run_on_terminal([sys.executable, "-c", code, "rescue", "--help"], "stdout",
                                 width, stderr=subprocess.PIPE, env={**env, **extra},
                                 timeout=60)
        assert p.returncode == 0, p.stderr
        return out, p.stderr.decode()

    ours, imported = run(script)
    theirs, _ = run("import argparse\nfrom mcsafe import cli\n"
                    "cli.HelpFormatter = argparse.HelpFormatter\n"
                    "cli.RawDescriptionHelpFormatter = argparse.RawDescriptionHelpFormatter\n"
                    + script)
    assert ours == theirs
    assert ours.startswith(b"usage: python -m mcsafe rescue")
    assert imported == "False"
    # the terminal's width was the one used: COLUMNS=80 makes another text
    assert (ours == run(script, COLUMNS="80")[0]) == (width == 80)
