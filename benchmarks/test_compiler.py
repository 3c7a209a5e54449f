"""The extable compiler: symbol extraction on the largest ELF here, and a
million-entry compile, against readelf and a one-symbol-at-a-time pyelftools loop."""

from __future__ import annotations

import subprocess
import tracemalloc

import numpy as np
import pytest
from elftools.elf.elffile import ELFFile

from benchmarks.conftest import FULL, largest_elf
from extable.compiler import compile_sites
from extable.elf import STT_FUNC, ElfImage, Segment
from extable.model import Handler, Kind, extended_word
from extable.sites import SiteSet

BIG = largest_elf()


def ours() -> int:
    with ElfImage(BIG) as image:
        return len(image.functions)


def readelf() -> int:
    subprocess.run(["readelf", "-sW", BIG], stdout=subprocess.DEVNULL, check=True)
    return 0


def pyelftools_loop() -> int:
    with open(BIG, "rb") as f:
        elf = ELFFile(f)
        table = elf.get_section_by_name(".symtab") or elf.get_section_by_name(".dynsym")
        return sum(1 for s in table.iter_symbols()
                   if s["st_info"]["type"] == "STT_FUNC" and s["st_size"])


@pytest.mark.parametrize("peer", ["extable", "readelf -sW", "pyelftools loop"])
def test_symbols_of_the_largest_elf(benchmark, peer: str) -> None:
    fn = {"extable": ours, "readelf -sW": readelf, "pyelftools loop": pyelftools_loop}[peer]
    benchmark.group = "symbols"
    benchmark.extra_info.update(peer=peer, file=BIG)
    rounds = 1 if peer == "pyelftools loop" else (10 if FULL else 3)
    count = benchmark.pedantic(fn, rounds=rounds, iterations=1)
    if peer == "extable":
        assert count > 1000


def pad_outside_functions(image: ElfImage) -> int:
    """An executable address no function symbol covers (the PLT), for a `*` rule's pad:
    a pad inside a covered function is refused."""
    sec = image.section(".plt") or image.section(".init")
    assert sec is not None, f"{image.path} has neither .plt nor .init"
    return sec.addr


def build_largest() -> int:
    """extable build's work on the largest ELF: a rule over every function (all landing
    in the PLT, for timing only), compiled and encoded; nothing is written."""
    from extable.compiler import build
    from extable.sites import Rule
    from extable.spec import load
    from extable.table import encode

    with ElfImage(BIG) as image:
        rule = Rule("*", "fixup", hex(pad_outside_functions(image)))
        result = build(image, load(None, image.machine), [rule])
        return len(encode(result.table))


def test_build_on_the_largest_elf(benchmark) -> None:
    benchmark.group = "build"
    benchmark.extra_info.update(peer="extable", file=BIG)
    size = benchmark.pedantic(build_largest, rounds=3 if FULL else 1, iterations=1)
    assert size > 48


def million_sites() -> SiteSet:
    n = 1_000_000
    start = np.random.default_rng(0).permutation(n).astype(np.uint64) * 16 + 0x1000
    return SiteSet(start, start + 8, start + 12, np.full(n, extended_word(0), np.uint32),
                   [Handler(Kind.FIXUP, name="f")])


def test_compile_a_million_entries(benchmark) -> None:
    sites = million_sites()
    seg = [Segment(0, 1 << 30, 0, 1 << 30, 5)]
    benchmark.group = "compile"
    benchmark.extra_info.update(peer="extable", entries=1_000_000)
    table = benchmark.pedantic(compile_sites, args=(sites, 62, seg), rounds=3 if FULL else 1,
                               iterations=1)
    tracemalloc.start()
    compile_sites(sites, 62, seg)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    benchmark.extra_info["peak_bytes"] = peak
    assert len(table) == 1_000_000
    assert peak < 200 << 20, f"peak {peak >> 20} MiB"
