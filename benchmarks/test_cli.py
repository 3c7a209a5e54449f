"""The ``extable`` command as a build step runs it: whole processes, start to exit.

Peers in the same run: ``readelf -sW`` and ``nm`` for listing symbols (on a
small library and on the largest ELF here), ``extable symbols`` against its own
``--json``, ``objcopy --add-section`` for adding a section, and ``python -c
pass`` for the interpreter's own start. Goals (issue 12): ``symbols`` on a
small library under 80 ms, on the largest file at most 0.5x ``readelf -sW``,
``--json`` within 1.2x of text.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.conftest import FULL, largest_elf

BIG = largest_elf()
SMALL = "/usr/lib/x86_64-linux-gnu/libz.so.1"
if not os.path.exists(SMALL):
    SMALL = min((p for p in (os.path.realpath("/lib/x86_64-linux-gnu/libz.so.1"), BIG)
                 if os.path.exists(p)), key=os.path.getsize)


def extable_cmd() -> list[str]:
    """The console script next to this interpreter, as a user runs it; else ``-m``."""
    script = Path(sys.executable).parent / "extable"
    return [str(script)] if script.exists() else [sys.executable, "-m", "extable"]


def run(argv: list[str]) -> None:
    subprocess.run(argv, stdout=subprocess.DEVNULL, check=True)


def timed(benchmark, group: str, peer: str, argv: list[str], rounds: int) -> None:
    benchmark.group = group
    benchmark.extra_info.update(peer=peer, argv=" ".join(argv))
    benchmark.pedantic(run, args=(argv,), rounds=rounds, iterations=1, warmup_rounds=1)


SYMBOL_PEERS = {
    "extable symbols": lambda f: [*extable_cmd(), "symbols", f],
    "extable symbols --json": lambda f: [*extable_cmd(), "symbols", "--json", f],
    "readelf -sW": lambda f: ["readelf", "-sW", f],
    "nm": lambda f: ["nm", "-D" if f == SMALL else "-a", f],
    "python -c pass": lambda f: [sys.executable, "-c", "pass"],
}


@pytest.mark.parametrize("peer", sorted(SYMBOL_PEERS))
def test_cli_symbols_small(benchmark, peer: str) -> None:
    timed(benchmark, "cli-symbols-small", peer, SYMBOL_PEERS[peer](SMALL), 40 if FULL else 15)


@pytest.mark.parametrize("peer", sorted(set(SYMBOL_PEERS) - {"python -c pass"}))
def test_cli_symbols_large(benchmark, peer: str) -> None:
    timed(benchmark, "cli-symbols-large", peer, SYMBOL_PEERS[peer](BIG), 10 if FULL else 4)


@pytest.mark.parametrize("peer", ["extable dump", "extable dump --json", "extable verify",
                                  "python -c pass"])
def test_cli_table_commands(benchmark, peer: str, tmp_path_factory) -> None:
    """dump and verify on a library with a 4000-entry table (they need numpy: the decode)."""
    out = tmp_path_factory.mktemp("cli") / "libstdc++.so.6"
    lib = "/usr/lib/x86_64-linux-gnu/libstdc++.so.6"
    if not os.path.exists(lib):
        pytest.skip(f"{lib} is not on this machine")
    subprocess.run([*extable_cmd(), "build", lib, "-o", str(out), "--add-section",
                    "--rule", "*=fixup@_ZSt9terminatev"], check=True, capture_output=True)
    argv = ([sys.executable, "-c", "pass"] if peer.startswith("python")
            else [*extable_cmd(), *peer.split()[1:2], *peer.split()[2:], str(out)])
    timed(benchmark, "cli-table", peer, argv, 10 if FULL else 4)


@pytest.mark.parametrize("peer", ["extable build --add-section", "objcopy --add-section"])
def test_cli_add_section_to_the_largest_elf(benchmark, peer: str, tmp_path_factory) -> None:
    """Adding a small section to the largest file: a streamed copy plus headers, both."""
    work = tmp_path_factory.mktemp("add")
    out = work / "out.so"
    if peer.startswith("objcopy"):
        if shutil.which("objcopy") is None:
            pytest.skip("objcopy is not installed")
        blob = work / "blob"
        blob.write_bytes(b"\0" * 64)
        argv = ["objcopy", "--add-section", f"extable_table={blob}", BIG, str(out)]
    else:
        funcs = json.loads(subprocess.run([*extable_cmd(), "symbols", "--json", BIG],
                                          capture_output=True, check=True).stdout)
        first = min((f["start"], f["name"].split("@")[0]) for f in funcs)[1]
        argv = [*extable_cmd(), "build", BIG, "-o", str(out), "--add-section",
                "--rule", f"{first}=fixup@{first}+0x1"]

    def once() -> None:
        if out.exists():
            out.unlink()
        run(argv)

    if peer.startswith("objcopy"):
        probe = subprocess.run(argv, capture_output=True, text=True)
        if probe.returncode:
            pytest.skip(f"objcopy cannot rewrite {BIG}: {probe.stderr.strip().splitlines()[-1]}")

    benchmark.group = "cli-add-section"
    benchmark.extra_info.update(peer=peer, file=BIG, size=os.path.getsize(BIG))
    benchmark.pedantic(once, rounds=5 if FULL else 2, iterations=1)
    if peer.startswith("extable"):            # appended: objcopy rewrites (and may shrink)
        assert out.stat().st_size > os.path.getsize(BIG)
