"""Recovery time against table size: registered synthetic tables of 10 to 1M
entries. The handler's binary search should keep it flat."""

from __future__ import annotations

import ctypes
import subprocess
from pathlib import Path

import numpy as np
import pytest

import extable
import mcsafe
from benchmarks.conftest import FULL, measure
from extable.compiler import compile_sites
from extable.elf import ElfImage
from extable.model import Kind, classic_data
from extable.sites import SiteSet, from_records, merge
from extable.writer import write_into_section
from mcsafe import inject

SIZES = [10, 1000, 100_000, 1_000_000]

SOURCE = r"""
#include "extable.h"
EXTABLE_RESERVE(%(reserve)d);
__asm__(EXTABLE_ASM_MACROS
        ".text\n"
        ".globl probe_read\n.type probe_read, %%function\n"
#if defined(__x86_64__)
        "probe_read:\n    xor %%eax, %%eax\n1:  movzbl (%%rdi), %%eax\n2:  ret\n"
#else
        "probe_read:\n    mov x1, x0\n    mov x0, #0\n1:  ldrb w0, [x1]\n2:  ret\n"
#endif
        ".size probe_read, .-probe_read\n"
        "    extable_site 1b, 2b, 2b, data=0xfff20003\n"
        ".globl filler\n.type filler, %%function\n"
        "filler:\n    .skip %(fill)d, 0\n.size filler, .-filler\n");
"""


def synthetic_module(folder: Path, n: int) -> Path:
    """A shared object whose table has n entries: probe_read's, and n - 1 in a filler."""
    src = folder / f"lookup_{n}.c"
    src.write_text(SOURCE % {"reserve": 16 * n + 4096, "fill": 16 * n})
    so = folder / f"lookup_{n}.so"
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-I", extable.include_dir(), str(src),
                    "-o", str(so)], check=True)
    with ElfImage(so) as image:
        filler = image.symbol_addresses["filler"]
        start = filler + 16 * np.arange(n - 1, dtype=np.uint64)
        fixup = classic_data(Kind.FIXUP)
        synthetic = SiteSet(start, start + 8, start + 8, np.full(n - 1, fixup, np.uint32), [])
        sites = merge([from_records(image), synthetic])
        table = compile_sites(sites, image.machine, image.segments, image.describe)
        assert len(table) == n
        write_into_section(image, table, str(so))
    return so


@pytest.fixture(scope="module")
def modules(tmp_path_factory) -> dict[int, Path]:
    folder = tmp_path_factory.mktemp("lookup")
    return {n: synthetic_module(folder, n) for n in SIZES}


@pytest.mark.parametrize("n", SIZES, ids=lambda n: f"{n}entries")
def test_recovery_time_by_table_size(benchmark, modules, n: int) -> None:
    so = modules[n]
    lib = ctypes.CDLL(str(so))
    lib.probe_read.argtypes = [ctypes.c_void_p]
    lib.probe_read.restype = ctypes.c_long
    mcsafe.register(so)
    try:
        with inject.region("mprotect", 2, [1]) as r:
            bad = r.address + inject.PAGE
            benchmark.group = "lookup"
            benchmark.extra_info.update(peer=f"{n} entries", entries=n)
            assert lib.probe_read(bad) == -14
            measure(benchmark, lambda: lib.probe_read(bad), 1 << 20)
    finally:
        mcsafe.unregister(so)
