"""``import mcsafe`` and ``import extable`` load what their first use needs and no
more (issue 22): the modules each import adds to sys.modules, in a fresh process.
What it costs in time is a benchmark (benchmarks/test_import.py), not a test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

#: Modules no plain import of either package may load: each costs milliseconds and
#: belongs to a part that is imported when first used.
HEAVY = {"numpy", "ctypes", "mmap", "threading", "tempfile", "dataclasses", "inspect", "ast",
         "elftools", "zstandard", "capstone", "ml_dtypes", "mfusepy", "tqdm", "argparse",
         "subprocess", "json", "pathlib", "struct", "weakref", "typing", "re", "enum", "signal"}

#: Exactly the package's own modules each import loads.
OWN = {"mcsafe": {"mcsafe", "mcsafe._mcsafe", "mcsafe._types"},
       "extable": {"extable", "extable.errors"}}


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def loaded_by(code: str, setup: str = "", python: str = sys.executable,
              bare: bool = False) -> set[str]:
    """The modules `code` adds to sys.modules, run after `setup` in a new interpreter
    (json is imported after `code` has run, so that it is not counted as already there).
    bare: without site (python -S), the packages found in this tree, so that nothing
    the site's start-up (an editable install's import hook) loads hides a module."""
    path = f"sys.path.insert(0, {ROOT!r})\n" if bare else ""
    script = (f"import sys\n{path}{setup}\nbefore = set(sys.modules)\n{code}\n"
              "new = sorted(set(sys.modules) - before)\nimport json\nprint(json.dumps(new))")
    p = subprocess.run([python, *(["-S"] if bare else []), "-c", script], capture_output=True,
                       text=True)
    assert p.returncode == 0, p.stderr
    return set(json.loads(p.stdout))


def top(modules: set[str]) -> set[str]:
    return {m.split(".")[0] for m in modules}


def loaded_by_command(argv: list[str], says: str, bare: bool = False) -> set[str]:
    """The modules `mcsafe ARGV` adds, run through mcsafe.cli.main in a new
    interpreter (bare: see loaded_by), which must exit 0 and print `says` (stdout
    captured)."""
    return loaded_by(f"import io\nstdout, sys.stdout = sys.stdout, io.StringIO()\n"
                     f"from mcsafe.cli import main\n"
                     f"assert main({argv!r}) == 0, 'mcsafe failed'\n"
                     f"assert {says!r} in sys.stdout.getvalue(), sys.stdout.getvalue()\n"
                     f"sys.stdout = stdout", bare=bare)


def assert_lean(package: str, python: str = sys.executable) -> None:
    new = loaded_by(f"import {package}", python=python)
    own = {m for m in new if top({m}) & {"mcsafe", "extable"}}
    assert own == OWN[package]
    # a heavy module already loaded at start-up (site) is not ours to count
    assert not (top(new) | new) & HEAVY, sorted((top(new) | new) & HEAVY)


@pytest.mark.parametrize("package", sorted(OWN))
def test_import_loads_its_core_only(package: str) -> None:
    assert_lean(package)


@pytest.mark.parametrize("name, module", [
    ("MappedFile", "mcsafe.mapped"), ("register", "mcsafe.registry"),
    ("TableError", "mcsafe.registry"), ("inject", "mcsafe.inject"),
    ("fileio", "mcsafe.fileio"), ("arrays", "mcsafe.arrays"), ("formats", "mcsafe.formats")])
def test_a_lazy_name_loads_its_module_when_first_used(name: str, module: str) -> None:
    new = loaded_by(f"getattr(mcsafe, {name!r})", setup="import mcsafe")
    assert module in new
    assert "mcsafe.inject" not in new or name == "inject"


def test_lazy_names_are_the_objects_of_their_modules() -> None:
    import mcsafe
    import mcsafe.fileio
    import mcsafe.registry
    from mcsafe.mapped import MappedFile

    assert (mcsafe.MappedFile, mcsafe.register, mcsafe.fileio) == \
        (MappedFile, mcsafe.registry.register, sys.modules["mcsafe.fileio"])
    with pytest.raises(AttributeError, match="no attribute 'MappedFiles'"):
        mcsafe.MappedFiles      # noqa: B018


def test_dir_of_a_lazy_package_lists_its_lazy_names_without_loading_them() -> None:
    """dir(mcsafe.mapped) names MappedFile, as dir() of any module names what it has,
    and asking does not load mcsafe.mapped.file."""
    script = ("import sys, mcsafe.mapped as m; "
              "print('MappedFile' in dir(m), 'mcsafe.mapped.file' in sys.modules)")
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=60)
    assert (p.returncode, p.stdout, p.stderr) == (0, "True False\n", "")


def test_the_old_name_of_published_table_count_warns_and_still_works() -> None:
    import mcsafe

    with pytest.warns(DeprecationWarning, match=r"use mcsafe.published_table_count\(\)"):
        old = mcsafe.published_tables
    assert old is mcsafe.published_table_count
    assert "published_tables" not in dir(mcsafe) and "published_tables" not in mcsafe.__all__


def test_a_fork_during_a_lazy_import_waits_for_it() -> None:
    """A thread is half way through the first import of mcsafe.mapped (held there by
    an import hook) when the main thread forks: the fork waits for the import, so the
    child finds MappedFile whole instead of a module whose import lock no thread in
    it will ever release (it would hang: SIGALRM)."""
    script = textwrap.dedent("""\
        import importlib.abc, os, signal, sys, threading
        import mcsafe

        entered, go = threading.Event(), threading.Event()

        class Hold(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name == "mcsafe.mapped":
                    entered.set()
                    go.wait()
                return None

        sys.meta_path.insert(0, Hold())
        t = threading.Thread(target=lambda: mcsafe.MappedFile)
        t.start()
        entered.wait()
        threading.Timer(0.1, go.set).start()   # the fork must wait for it, however long
        pid = os.fork()
        if pid == 0:
            signal.alarm(10)
            with mcsafe.MappedFile(sys.executable) as f:
                os._exit(0 if f.read(4) == b"\\x7fELF" else 1)
        t.join()
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status), go.is_set())
        """)
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=60)
    assert (p.returncode, p.stdout) == (0, "0 True\n"), p.stderr


#: Exactly the package's own modules a scan of small files loads (issue 21: the
#: interpreter's start is most of the time of `mcsafe scan` on a small tree).
SCAN_OWN = {"mcsafe", "mcsafe._mcsafe", "mcsafe._types", "mcsafe.cli", "mcsafe.cli.scan",
            "mcsafe.cli.jobs", "mcsafe.cli.output", "mcsafe.cli.scanfile", "mcsafe.cli.stop",
            "mcsafe.cli.walk", "mcsafe.pagecache"}
#: What such a scan, not on a terminal, must not load: the progress (threads, tqdm,
#: rich), MappedFile (large files only), numpy, ctypes, --json's json, --jobs'
#: multiprocessing, typing and what stands behind it; shutil (argparse's, for the
#: width of help: cli.HelpFormatter finds it) with bz2 and lzma.
SCAN_HEAVY = (HEAVY - {"argparse", "signal", "mmap"}) | {
    "rich", "multiprocessing", "datetime", "socket", "fnmatch", "tempfile", "shlex", "shutil",
    "bz2", "lzma"}


@pytest.mark.parametrize("files", [0, 3])
def test_a_scan_of_small_files_off_a_terminal_loads_only_what_it_uses(tmp_path, files) -> None:
    for i in range(files):
        (tmp_path / f"f{i}").write_bytes(bytes(range(256)) * (i + 1))
    new = loaded_by_command(["scan", str(tmp_path)], f"scanned {files} file")
    own = {m for m in new if top({m}) & {"mcsafe", "extable"}}
    assert own == SCAN_OWN
    assert not (top(new) | new) & SCAN_HEAVY, sorted((top(new) | new) & SCAN_HEAVY)


#: Exactly the package's own modules a rescue of a clean file loads where the
#: one-copy path is taken (issue 21: its start is a tenth of the time of a rescue of
#: 1 GiB): no MappedFile, whose careful paths only a failing range needs.
RESCUE_OWN = {"mcsafe", "mcsafe._mcsafe", "mcsafe._types", "mcsafe.cli",
              "mcsafe.cli.rescue", "mcsafe.cli.onecopy", "mcsafe.cli.mapfile",
              "mcsafe.cli.output", "mcsafe.cli.stop", "mcsafe.mapped", "mcsafe.mapped._sys",
              "mcsafe.mapped.opening", "mcsafe.pagecache"}
#: What it must not load: typing, threading, tempfile (random, hashlib), shutil (bz2,
#: lzma: argparse's, for the width of help), datetime and contextlib (the mapfile's
#: dates and clean-ups do without), ctypes (the extension maps, writes and fallocates)
#: and the rest.
RESCUE_HEAVY = (HEAVY - {"argparse", "signal", "mmap"}) | {
    "rich", "multiprocessing", "socket", "hashlib", "random", "shutil", "bz2", "lzma",
    "datetime", "contextlib"}


@pytest.mark.parametrize("size", [0, 4096, 5 << 20])
def test_a_rescue_of_a_clean_file_loads_only_what_it_uses(tmp_path, size) -> None:
    from mcsafe.cli import onecopy
    if onecopy.unavailable() is not None:
        pytest.skip(f"the one-copy path is not taken here: {onecopy.unavailable()}")
    data = os.urandom(size)
    (tmp_path / "src").write_bytes(data)
    new = loaded_by_command(["rescue", "--no-sync", str(tmp_path / "src"),
                             str(tmp_path / "dst")], f"rescued {size} of {size} bytes")
    own = {m for m in new if top({m}) & {"mcsafe", "extable"}}
    assert own == RESCUE_OWN
    assert not (top(new) | new) & RESCUE_HEAVY, sorted((top(new) | new) & RESCUE_HEAVY)
    assert (tmp_path / "dst").read_bytes() == data


#: What neither command may load, seen from an interpreter started without site
#: (where an editable install's import hook loads contextlib and pathlib first, so the
#: tests above cannot see them): each is a millisecond or more of a start that, for a
#: small file, is all of the command's time.
NEVER_AT_START = {"shutil", "bz2", "lzma", "fnmatch", "datetime", "contextlib", "typing",
                  "tempfile", "random", "hashlib", "threading", "dataclasses", "inspect",
                  "json", "pathlib", "weakref", "importlib", "subprocess", "ctypes"}


@pytest.mark.parametrize("command", ["rescue", "scan"])
def test_a_command_on_a_clean_small_file_loads_none_of_the_slow_modules(tmp_path,
                                                                       command) -> None:
    (tmp_path / "src").write_bytes(os.urandom(4096))
    argv, says = ((["rescue", "--no-sync", str(tmp_path / "src"), str(tmp_path / "dst")],
                   "rescued 4096 of 4096 bytes") if command == "rescue" else
                  (["scan", str(tmp_path / "src")], "scanned 1 file"))
    new = loaded_by_command(argv, says, bare=True)
    assert "argparse" in new and "mcsafe.cli" in new   # (a bare start: nothing preloaded)
    assert not (top(new) | new) & NEVER_AT_START, sorted((top(new) | new) & NEVER_AT_START)


def test_a_scan_of_a_cached_large_file_asks_cachestat_not_mincore(tmp_path) -> None:
    """A large file read through MappedFile whose pages are all cached: the page
    cache is known to be left as found from one cachestat(2) per range, so ctypes
    (the mincore(2) call's) is never loaded; the scan still reads it whole."""
    path = tmp_path / "large"
    path.write_bytes(os.urandom(24 << 20))
    os.sync()
    path.read_bytes()                           # all cached
    new = loaded_by_command(["scan", str(path)], "scanned 1 file, 24.0 MiB")
    assert "mcsafe.mapped.scrub" in new         # the large-file reader ran
    assert "ctypes" not in new


def test_a_scan_of_a_large_file_loads_neither_typing_nor_contextlib(tmp_path) -> None:
    """MappedFile's modules name their types for type checkers only: a scan of a
    large file (read by MappedFile's scrub) loads neither typing nor contextlib, 4-5
    ms of its start (main loaded both)."""
    path = tmp_path / "large"
    path.write_bytes(os.urandom(3 << 20))
    new = loaded_by_command(["scan", str(path)], "scanned 1 file, 3.0 MiB", bare=True)
    assert "mcsafe.mapped.scrub" in new         # the large-file reader ran
    assert not new & {"typing", "contextlib"}, sorted(new & {"typing", "contextlib"})
