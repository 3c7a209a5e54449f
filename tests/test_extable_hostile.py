"""Files that are not what their path says: truncated under us, FIFOs, devices, hard links."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import pytest


_TRUNCATE_THEN_READ = """
import os, sys
from extable.elf import ElfImage
from extable.errors import ExtableError
path, what = sys.argv[1], sys.argv[2]
image = ElfImage(path)
os.truncate(path, 4096)          # another process shrinks the file while we hold it
try:
    if what == "symbols":
        len(image.functions)
    else:
        from extable.compiler import build
        from extable.sites import Rule
        from extable.spec import load
        from extable.writer import write_added_section
        table = build(image, load(None, image.machine), [Rule.parse("copy_word=errno")]).table
        write_added_section(image, table, sys.argv[3])
except ExtableError as exc:
    print(exc)
    sys.exit(2)
print("read a file that had shrunk")
"""


@pytest.mark.parametrize("what", ["symbols", "build"])
def test_a_file_truncated_while_held_is_an_error_not_sigbus(built, tmp_path, what) -> None:
    src = tmp_path / "shrinking.so"
    src.write_bytes(built["plain"].read_bytes())
    out = tmp_path / "out.so"
    proc = subprocess.run([sys.executable, "-c", _TRUNCATE_THEN_READ, str(src), what, str(out)],
                          capture_output=True, text=True)
    assert proc.returncode != -signal.SIGBUS, "died of SIGBUS reading a truncated file"
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert str(src) in proc.stdout and "shrank" in proc.stdout, proc.stdout
    assert sorted(os.listdir(tmp_path)) == ["shrinking.so"]      # no output, no temporary
