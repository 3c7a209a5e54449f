"""The build step: a wheel built from this tree carries a verified table."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import expected
from conftest import run_cli

ROOT = Path(__file__).resolve().parent.parent
#: Not sources: what builds and environments leave in the tree.
NOT_SOURCES = shutil.ignore_patterns(".git", ".venv*", "build", "dist", "*.egg-info", "*.so",
                                     "__pycache__", ".mypy_cache", ".hypothesis", ".benchmarks")


def test_wheel_extension_has_its_table(tmp_path) -> None:
    # A copy of the tree, so the build's own files (build/, _mcsafe.c) do not
    # meet those of another build running from the same clone.
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=NOT_SOURCES)
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                        "--no-build-isolation", "-w", str(tmp_path), str(src)],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    (wheel,) = tmp_path.glob("mcsafe-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        (ext,) = [n for n in names if n.startswith("mcsafe/_mcsafe") and n.endswith(".so")]
        z.extract(ext, tmp_path)
    assert "extable/include/extable.h" in names and "mcsafe/py.typed" in names
    assert "mcsafe/_mcsafe.pyi" in names and "mcsafe/_mcsafe.c" not in names
    so = tmp_path / ext
    assert run_cli("verify", so).returncode == 0
    d = json.loads(run_cli("dump", "--json", so, check=True).stdout)
    assert expected.sites(d) == expected.expected_sites(d["machine"])   # every named site
    assert d["self_vaddr"] != 0


def test_a_second_build_of_the_same_tree_gives_the_same_extension(tmp_path) -> None:
    """pip builds in the tree, so the second build finds build/ up to date: build_ext
    skips the link, and stripping and embedding run again on a finished extension."""
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=NOT_SOURCES)
    built = []
    for n in (1, 2):
        out = tmp_path / f"wheel{n}"
        p = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                            "--no-build-isolation", "-w", str(out), str(src)],
                           capture_output=True, text=True)
        assert p.returncode == 0, (n, p.stdout[-3000:] + p.stderr[-3000:])
        (wheel,) = out.glob("mcsafe-*.whl")
        with zipfile.ZipFile(wheel) as z:
            (ext,) = [name for name in z.namelist() if name.startswith("mcsafe/_mcsafe")
                      and name.endswith(".so")]
            built.append(z.read(ext))
    assert built[0] == built[1]
