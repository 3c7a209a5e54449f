"""What the kernel path costs at startup: no numpy for a kernel object, and nothing
beyond the detector for the command's own files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from kernel_helpers import TEST_USER_COPY

PROBE = """
import contextlib, io, json, sys
from extable.cli import main
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    code = main(sys.argv[1:])
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


def _modules(*argv: str | Path) -> tuple[int, list[str]]:
    p = subprocess.run([sys.executable, "-c", PROBE, *map(str, argv)], capture_output=True,
                       text=True, check=True)
    out = json.loads(p.stdout)
    return out["code"], out["modules"]


def test_a_kernel_module_is_read_without_numpy() -> None:
    for argv in (["dump", TEST_USER_COPY, "--json"], ["verify", TEST_USER_COPY],
                 ["lookup", TEST_USER_COPY, ".init.text+0x6a9"]):
        code, modules = _modules(*argv)
        assert code == 0
        assert "extable.kernel.cli" in modules
        assert not [m for m in modules if m.split(".")[0] == "numpy"], argv


def test_our_own_files_import_only_the_detector(built) -> None:
    """plain.so has no table of ours (exit 2): what matters is what was imported to say so."""
    code, modules = _modules("dump", built["plain"])
    assert code == 2
    assert [m for m in modules if m.startswith("extable.kernel")] == [
        "extable.kernel", "extable.kernel.detect"]
