"""Reading a kernel object's table: which format, which version, which types."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from types import ModuleType

from . import arm64, module, vmlinux, x86_64
from .image import KernelImage, parse_version
from .names import Namer
from .table import KernelTable
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

    @cached_property
    def symbols(self) -> tuple[list[str | None], list[str | None]]:
        """The symbol+offset of every insn and every fixup."""
        t = self.table
        if t is None:
            return [], []
        return (self.namer.symbols(t.insn_sec, t.insn_off),
                self.namer.symbols(t.fixup_sec, t.fixup_off))

    @cached_property
    def _columns(self) -> dict[str, tuple[list[int], list[int], list[int] | None]]:
        """Per field: section indices, offsets, addresses."""
        t = self.table
        assert t is not None
        return {"insn": (t.insn_sec, t.insn_off, t.insn_addr),
                "fixup": (t.fixup_sec, t.fixup_off, t.fixup_addr)}

    def location(self, field: str, i: int) -> dict[str, object]:
        """``{"section", "offset"[, "address"], "symbol"}`` of an entry's insn or fixup."""
        secs, offs, addrs = self._columns[field]
        s = secs[i]
        out: dict[str, object] = {"section": self._section_names[s] if s >= 0 else None,
                                  "offset": offs[i] if s >= 0 else None}
        if addrs is not None:
            out["address"] = addrs[i]
        out["symbol"] = self.symbols[0 if field == "insn" else 1][i]
        return out

    @cached_property
    def _section_names(self) -> list[str]:
        return [s.name for s in self.image.sections]

    def where(self, field: str, i: int) -> str:
        """``.text+0x1a3 <foo+0x13>`` (module) or ``0xffffffff81001234 <foo+0x13>`` (image)."""
        return describe(self.location(field, i))


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


