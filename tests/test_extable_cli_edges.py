"""The extable command's edges (issue 20, item 5): inputs that are not files, a stdout
that cannot be written, symbol names that are not UTF-8.

Every failure is one line on stderr naming the file, exit 2 (bad input), and under
--json also the error object on stdout; build leaves no output file behind.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FIXTURES, compile_so, run_cli

COMMANDS = {
    "symbols": lambda f, out: ["symbols", f],
    "dump": lambda f, out: ["dump", f],
    "verify": lambda f, out: ["verify", f],
    "lookup": lambda f, out: ["lookup", f, "0x10"],
    "build": lambda f, out: ["build", f, "-o", out, "--rule", "csum=errno@csum_fixup"],
}


def extable(*args: str, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "extable", *map(str, args)],
                          capture_output=True, text=True, **kw)


def one_line(proc: subprocess.CompletedProcess[str], path: object, *words: str,
             code: int = 2) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert str(path) in lines[0], lines[0]
    for w in words:
        assert w in lines[0], lines[0]


@pytest.fixture(scope="module")
def csum(tmp_path_factory) -> Path:
    return compile_so(FIXTURES / "csum.c", tmp_path_factory.mktemp("csum") / "csum.so")


# -- inputs that are not files --------------------------------------------------------

@pytest.fixture
def not_files(tmp_path: Path, csum: Path):
    """name -> (path, words the one line must hold, how to run the command)."""
    sock_path = tmp_path / "sock"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(sock_path))
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "gone.so")
    locked = tmp_path / "locked.so"
    locked.write_bytes(csum.read_bytes())
    locked.chmod(0)
    # Root reads any file: drop the two capabilities that let it, as setpriv(1) does.
    unprivileged = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]
    yield {
        "directory": (tmp_path, ["a directory"], []),
        "socket": (sock_path, ["a socket"], []),
        "/proc/self/mem": (Path("/proc/self/mem"), ["not an ELF file"], []),
        "dangling symlink": (dangling, ["dangling symbolic link", "gone.so"], []),
        "no permission": (locked, ["Permission denied"], unprivileged),
    }
    sock.close()


@pytest.mark.parametrize("kind", ["directory", "socket", "/proc/self/mem", "dangling symlink",
                                  "no permission"])
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_an_input_that_is_not_a_readable_file_is_one_line_exit_2(not_files, tmp_path, kind,
                                                                 command) -> None:
    # On main a directory gave a traceback ending in "IsADirectoryError: [Errno 21] Is a
    # directory: 3" (a descriptor number, not the name), exit 1, nothing on stdout.
    path, words, prefix = not_files[kind]
    out = tmp_path / "out.so"
    args = COMMANDS[command](path, out)
    for json_flag in ([], ["--json"]):
        proc = subprocess.run([*prefix, sys.executable, "-m", "extable", args[0], *json_flag,
                               *map(str, args[1:])], capture_output=True, text=True)
        one_line(proc, path, *words)
        if json_flag:
            err = json.loads(proc.stdout)
            assert err["exit"] == 2 and err["file"] == str(path)
            assert all(w in err["error"] for w in words), err
        else:
            assert proc.stdout == ""
        assert not out.exists()


# -- a stdout that cannot be written ---------------------------------------------------

@pytest.fixture(scope="module")
def with_table(csum: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("table") / "built.so"
    run_cli("build", csum, "-o", out, "--rule", "csum=errno@csum_fixup", check=True)
    return out


def stdout_cases(built: Path, out: Path) -> dict[str, list[str]]:
    return {
        "symbols": ["symbols", str(built)],
        "symbols --json": ["symbols", "--json", str(built)],
        "dump": ["dump", str(built)],
        "dump --json": ["dump", "--json", str(built)],
        "verify": ["verify", str(built)],
        "lookup": ["lookup", str(built), "csum+4"],
        "build": ["build", str(built), "-o", str(out), "--rule", "csum=errno@csum_fixup"],
        "include-dir": ["--include-dir"],
    }


@pytest.mark.parametrize("how", ["/dev/full", "closed"])
@pytest.mark.parametrize("case", sorted(stdout_cases(Path("x"), Path("y"))))
def test_a_stdout_that_cannot_be_written_is_one_line_exit_2(with_table, tmp_path, how,
                                                           case) -> None:
    # On main: a traceback (OSError: [Errno 28] No space left on device, or AttributeError:
    # 'NoneType' object has no attribute ...) and exit 1, and build wrote its output file.
    out = tmp_path / "out.so"
    argv = stdout_cases(with_table, out)[case]
    if how == "/dev/full":
        with open("/dev/full", "w") as full:
            proc = subprocess.run([sys.executable, "-m", "extable", *argv], stdout=full,
                                  stderr=subprocess.PIPE, text=True)
    else:
        proc = subprocess.run([sys.executable, "-m", "extable", *argv], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True,
                              preexec_fn=lambda: os.close(1))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "standard output" in lines[0], lines[0]
    assert ("No space left on device" if how == "/dev/full" else "closed") in lines[0]
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".extable-")]


def test_in_place_build_with_a_full_stdout_leaves_the_input_as_it_was(with_table,
                                                                      tmp_path) -> None:
    target = tmp_path / "inplace.so"
    target.write_bytes(with_table.read_bytes())
    before = target.read_bytes()
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "extable", "build", str(target),
                               "--in-place", "--rule", "csum=errno@csum"], stdout=full,
                              stderr=subprocess.PIPE, text=True)
    assert proc.returncode == 2
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "extable", "build", str(target),
                               "--in-place", "--rule", "csum=fixup@csum_fixup"], stdout=full,
                              stderr=subprocess.PIPE, text=True)
    assert proc.returncode == 2 and "standard output" in proc.stderr, proc.stderr
    assert target.read_bytes() == before


def test_a_closed_pipe_is_quiet_and_exit_0(with_table) -> None:
    # `extable symbols big.so | head -1`: the reader left; as head's writers do.
    p = subprocess.Popen([sys.executable, "-m", "extable", "dump", str(with_table)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()
    err = p.stderr.read()
    assert p.wait() == 0 and err == b""


# -- names that are not UTF-8 -----------------------------------------------------------

NAMES = [b"in\x89\x08ateEnd", b"caf\xc3\xa9", b"trunc\xc3", b"ctl\x7f\x01", b"plain"]
SHOWN = {b"in\x89\x08ateEnd": "in{0x89}^HateEnd", b"caf\xc3\xa9": "caf\u00e9",
         b"trunc\xc3": "trunc{0xc3}", b"ctl\x7f\x01": "ctl\x7f\x01", b"plain": "plain"}


@pytest.fixture(scope="module")
def raw_names(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("names")
    src = b".text\n"
    for n in NAMES + [b"pad"]:
        q = b'"' + n + b'"'
        src += b".globl " + q + b"\n.type " + q + b",@function\n" + q + b":\n ret\n.size " \
            + q + b",1\n"
    src += b'.section .note.GNU-stack,"",@progbits\n'
    (d / "names.s").write_bytes(src)
    so = d / "names.so"
    subprocess.run(["gcc", "-shared", str(d / "names.s"), "-o", str(so)], check=True)
    return so


def strict_json(raw: bytes) -> object:
    """Parse as a strict reader does: UTF-8, and no lone surrogates in any string."""
    doc = json.loads(raw.decode("utf-8"))

    def walk(v: object) -> None:
        if isinstance(v, str):
            v.encode("utf-8")                     # UnicodeEncodeError on a lone surrogate
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)
    walk(doc)
    return doc


def test_symbols_json_is_valid_utf8_and_keeps_the_raw_bytes(raw_names) -> None:
    # On main: "in\udc89\bateEnd", a lone surrogate that strict JSON readers reject.
    raw = subprocess.run([sys.executable, "-m", "extable", "symbols", "--json",
                          str(raw_names)], capture_output=True, check=True).stdout
    rows = {r["name"]: r for r in strict_json(raw)}
    for name in NAMES:
        valid = True
        try:
            name.decode("utf-8")
        except UnicodeDecodeError:
            valid = False
        row = rows[SHOWN[name]]
        if valid:
            assert "name_hex" not in row
        else:
            assert bytes.fromhex(row["name_hex"]) == name
    # readelf shows the names the same way with --unicode=invalid
    shown = subprocess.run(["readelf", "-sW", "--unicode=invalid", str(raw_names)],
                           capture_output=True, check=True).stdout.decode("utf-8", "replace")
    for name in (b"in\x89\x08ateEnd", b"trunc\xc3"):
        assert SHOWN[name] in shown


def test_dump_and_lookup_json_are_valid_utf8(raw_names, tmp_path) -> None:
    out = tmp_path / "t.so"
    run_cli("build", raw_names, "-o", out, "--add-section", "--rule", "*=fixup@pad", check=True)
    for argv in (["dump", "--json", out], ["lookup", "--json", out, "pad-1"]):
        raw = subprocess.run([sys.executable, "-m", "extable", *map(str, argv)],
                             capture_output=True, check=True).stdout
        text = json.dumps(strict_json(raw), ensure_ascii=False)
        assert "{0x89}" in text or "{0xc3}" in text or "ctl" in text, text
    # text output renders them the same way, whatever the locale's encoding
    for env in ({"LC_ALL": "C.UTF-8", "PYTHONIOENCODING": "utf-8:strict"}, {"LC_ALL": "C"}):
        proc = subprocess.run([sys.executable, "-m", "extable", "dump", str(out)],
                              capture_output=True, env={**os.environ, **env})
        assert proc.returncode == 0, proc.stderr
        assert b"in{0x89}^HateEnd" in proc.stdout
