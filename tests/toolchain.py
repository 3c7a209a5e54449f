"""What the tests for the other machine need from this one, and why it may be missing."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

#: The arm64 Python that scripts/arm64-sysroot.sh unpacks for the emulated tests,
#: the stamp it writes once complete, and what it checks is there (the same list).
SYSROOT = Path(os.environ.get("MCSAFE_ARM64_SYSROOT",
                              Path.home() / ".cache" / "mcsafe" / "arm64-sysroot"))
SYSROOT_STAMP = SYSROOT / ".mcsafe-sysroot-complete"
SYSROOT_NEEDED = (
    "usr/bin/python3.11", "lib/ld-linux-aarch64.so.1", "usr/lib/python3.11/os.py",
    "usr/include/python3.11/Python.h", "usr/include/aarch64-linux-gnu/python3.11/pyconfig.h",
    "usr/lib/python3.11/lib-dynload/_ctypes.cpython-311-aarch64-linux-gnu.so")


def _installed(package: str) -> bool:
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package],
                             capture_output=True, text=True).stdout
    except FileNotFoundError:                     # not a Debian machine
        return False
    return "ok installed" in out


def missing(tools: list[str]) -> str | None:
    """None when every tool is on PATH, else a sentence naming the missing ones.

    Debian's gcc-multilib conflicts with the gcc-*-linux-gnu cross compilers,
    so scripts/setup.sh leaves them out where it is installed: say so.
    """
    absent = [tool for tool in tools if not shutil.which(tool)]
    if not absent:
        return None
    why = "make test installs them (scripts/setup.sh)"
    if any(tool.endswith("-linux-gnu-gcc") for tool in absent) and _installed("gcc-multilib"):
        why = ("Debian's gcc-multilib is installed here and conflicts with the cross "
               "compiler; MCSAFE_REPLACE_MULTILIB=1 make test replaces it")
    return f"not installed on this machine: {', '.join(absent)} ({why})"
