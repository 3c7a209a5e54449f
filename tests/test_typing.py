"""Every function of both packages is typed, and the types hold (mypy, strictness
in pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_mypy_passes() -> None:
    p = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Success" in p.stdout


USER_SCRIPT = ROOT / "tests" / "typing" / "user_script.py"


def test_a_users_script_over_the_public_api_is_strict_clean() -> None:
    """mypy --strict on a script using the whole public API: no Any leaking out
    (read_array), the class fileio.open returns for each mode, FaultInfo.cause and
    side as Literals (the script's assert_type calls say what must be inferred)."""
    p = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental",
                        str(USER_SCRIPT)], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.startswith("Success: no issues found in 1 source file"), p.stdout


def test_the_users_script_runs() -> None:
    p = subprocess.run([sys.executable, str(USER_SCRIPT)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert p.stdout.endswith("True SafetensorsError True 0.1.0\n"), p.stdout
