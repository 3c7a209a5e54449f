"""Reading a kernel object's table: which format, which version, which types."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from types import ModuleType
from typing import Iterator

from . import arm64, module, vmlinux, x86_64
from .image import KernelImage, parse_version
from .names import Namer
from .table import Columns, KernelTable
from .types import TypeTable, select

FORMATS: dict[str, ModuleType] = {"x86_64": x86_64, "arm64": arm64}


@dataclass
class Opened:
    """A kernel object with its table and the type table chosen for it."""

    image: KernelImage
    fmt: ModuleType
    table: KernelTable | None          # None: the file has no __ex_table
    types: TypeTable
    version: str | None                # as the file or --kernel-version says it
    version_source: str                # "vermagic", "banner", "--kernel-version" or "unknown"
    note: str | None                   # why the type table is a guess, if it is

    def close(self) -> None:
        self.image.close()

    def __enter__(self) -> Opened:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self.table) if self.table is not None else 0

    @property
    def kind(self) -> str:
        return "image" if self.image.linked else "module"

    @cached_property
    def namer(self) -> Namer:
        return Namer(self.image)

    def entries(self, chunk: Columns, decoded: dict[int, dict[str, object]]
                ) -> Iterator[dict[str, object]]:
        """The chunk's entries as dump and lookup show them; ``decoded`` caches the
        architecture's decoding of each data word (a table has few distinct ones)."""
        names = (self.namer.symbols(chunk.insn_sec, chunk.insn_off),
                 self.namer.symbols(chunk.fixup_sec, chunk.fixup_off))
        if len(decoded) > 4096:             # garbage has a distinct word per entry
            decoded.clear()
        for j, word in enumerate(chunk.word):
            if word not in decoded:
                decoded[word] = self.fmt.decode(word, self.types)
            yield {"index": chunk.base + j, "insn": self._location(chunk, "insn", j, names[0]),
                   "fixup": self._location(chunk, "fixup", j, names[1]), **decoded[word]}

    def _location(self, chunk: Columns, field: str, j: int,
                  names: list[str | None] | None = None) -> dict[str, object]:
        """``{"section", "offset"[, "address"], "symbol"}`` of entry j's insn or fixup."""
        secs, offs, addrs = ((chunk.insn_sec, chunk.insn_off, chunk.insn_addr) if field == "insn"
                             else (chunk.fixup_sec, chunk.fixup_off, chunk.fixup_addr))
        s = secs[j]
        out: dict[str, object] = {"section": self._section_names[s] if s >= 0 else None,
                                  "offset": offs[j] if s >= 0 else None}
        if addrs is not None:
            out["address"] = addrs[j]
        out["symbol"] = (names[j] if names is not None
                         else self.namer.symbols([secs[j]], [offs[j]])[0])
        return out

    @cached_property
    def _section_names(self) -> list[str]:
        return [s.name for s in self.image.sections]

    def where(self, chunk: Columns, field: str, j: int) -> str:
        """Entry j of the chunk's insn or fixup: ``.text+0x1a3 <foo+0x13>`` (module) or
        ``0xffffffff81001234 <foo+0x13>`` (image)."""
        return describe(self._location(chunk, field, j))


def describe(loc: dict[str, object]) -> str:
    sym = f" <{loc['symbol']}>" if loc.get("symbol") else ""
    if "address" in loc:
        addr = int(loc["address"])  # type: ignore[call-overload]
        if not sym and loc.get("section"):
            sym = f" [{loc['section']}+{loc['offset']:#x}]"
        return f"{addr:#018x}{sym}"
    if loc.get("section") is None:
        return "?"
    off = int(loc["offset"])  # type: ignore[call-overload]
    # a negative addend can put a target before its section: .text-0x10, not .text+-0x10
    return f"{loc['section']}{'+' if off >= 0 else '-'}{abs(off):#x}{sym}"


def read(path: str | os.PathLike[str], kernel_version: str | None = None) -> Opened:
    """Open ``path`` (plain, .xz, .zst or .gz) and read its ``__ex_table``."""
    image = KernelImage(path)
    try:
        fmt = FORMATS[image.arch]
        version: str | None
        if kernel_version is not None:
            version, source = kernel_version, "--kernel-version"
            parsed = parse_version(kernel_version)
            if parsed is None:
                raise image.error(f"--kernel-version {kernel_version!r} is not a kernel version "
                                  "(like 6.1 or 6.1.0-50-amd64)")
        else:
            version = image.version_string
            source = ("banner" if image.linked else "vermagic") if version else "unknown"
            parsed = parse_version(version) if version else None
        types, note = select(fmt.ARCH, parsed)
        table = None
        if image.section("__ex_table") is not None:
            table = (vmlinux if image.linked else module).read(image, fmt)
        return Opened(image, fmt, table, types, version, source, note)
    except BaseException:
        image.close()
        raise


