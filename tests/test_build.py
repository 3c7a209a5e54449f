"""The build step: a wheel built from this tree carries a verified table."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

from conftest import run_cli

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_extension_has_its_table(tmp_path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(tmp_path), str(ROOT)], check=True,
                   capture_output=True)
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
    assert len(d["entries"]) >= 7 and d["self_vaddr"] != 0
