"""Call-frame information (``.eh_frame``, ``.debug_frame``) → unwind rows.

For each range an ``unwind`` entry covers, the function's FDE is decoded with
pyelftools' CFI decoder (``FDE.get_decoded()``: one line per sub-range with
one rule) and each line becomes a :class:`~extable.unwind.Row`. What a row
cannot say is refused with the reason, at build time, rather than guessed at
fault time: a CFA that is a DWARF expression (stack realignment), a saved
register whose rule is an expression or another register, a callee-saved
register or return address left undefined, a signed return address (arm64
pointer authentication), a range no FDE covers.

The FDEs are found through ``.eh_frame_hdr``'s sorted table (what the
libgcc unwinder searches) and only those are parsed: pyelftools parses about
4,000 entries a second, and a 100k-function library would take half a minute
whole. Files without that table are parsed whole.
"""

from __future__ import annotations

import io
import struct
import zlib
from typing import Any

from .errors import missing_extra

try:
    import numpy as np
except ModuleNotFoundError as _exc:
    raise missing_extra(_exc, "numpy", "an unwind rule", "unwind") from None

from .elf import EM_AARCH64, EM_X86_64, ElfImage, Section
from .errors import ExtableError
from .unwind import SLOTS, Row

# DWARF register numbers (the psABIs) → our numbering (instruction-encoding order).
_X86_DWARF = {0: 0, 1: 2, 2: 1, 3: 3, 4: 6, 5: 7, 6: 5, 7: 4, **{r: r for r in range(8, 16)}}
_DWARF_TO_REG = {EM_X86_64: _X86_DWARF, EM_AARCH64: {r: r for r in range(32)}}   # 31 = sp
#: Each slot's DWARF register (x86-64's return address column is 16; aarch64's is x30).
_SLOT_DWARF = {EM_X86_64: (3, 6, 12, 13, 14, 15, 16),
               EM_AARCH64: tuple(range(19, 31)) + tuple(range(72, 80))}
_RA_COLUMN = {EM_X86_64: 16, EM_AARCH64: 30}
_NEGATE_RA_STATE = 0x2D             # DW_CFA_AARCH64_negate_ra_state
SHF_COMPRESSED = 0x800
DW_EH_PE_datarel_sdata4, DW_EH_PE_udata4 = 0x3B, 0x03


class Refused(Exception):
    """A range the table cannot unwind, and why."""


class CallFrames:
    """The FDEs of one file, found by address."""

    def __init__(self, image: ElfImage) -> None:
        from elftools.dwarf.structs import DWARFStructs

        self.image = image
        self.machine = image.machine
        self._structs = DWARFStructs(little_endian=True, dwarf_format=32, address_size=8)
        self._sources: list[Any] = []          # (CallFrameInfo, index: (starts, offsets))
        for name, eh in ((".eh_frame", True), (".debug_frame", False)):
            sec = image.section(name)
            if sec is not None and sec.has_file_bytes and sec.size:
                self._sources.append(self._open(sec, eh))

    def _open(self, sec: Section, eh: bool) -> tuple[Any, np.ndarray, np.ndarray]:
        from elftools.dwarf.callframe import CallFrameInfo

        data = _section_data(self.image, sec)
        cfi = CallFrameInfo(io.BytesIO(data), len(data), sec.addr, self._structs,
                            for_eh_frame=eh)
        index = self._hdr_index(sec) if eh else None
        if index is None:
            index = _full_index(cfi)
        return cfi, index[0], index[1]

    def _hdr_index(self, eh_frame: Section) -> tuple[np.ndarray, np.ndarray] | None:
        """(initial locations, FDE offsets in .eh_frame), sorted, from .eh_frame_hdr."""
        hdr = self.image.section(".eh_frame_hdr")
        if hdr is None or not hdr.has_file_bytes or hdr.size < 12:
            return None
        data = self.image.section_bytes(hdr)
        version, ptr_enc, count_enc, table_enc = data[:4]
        if (version, count_enc, table_enc) != (1, DW_EH_PE_udata4, DW_EH_PE_datarel_sdata4) \
                or ptr_enc & 0x0F not in (0x03, 0x0B):          # a 4-byte eh_frame_ptr
            return None
        (count,) = struct.unpack_from("<I", data, 8)
        if 12 + 8 * count > len(data):
            return None
        pairs = np.frombuffer(data, "<i4", count=2 * count, offset=12).reshape(-1, 2)
        starts = pairs[:, 0].astype(np.int64) + hdr.addr
        offsets = pairs[:, 1].astype(np.int64) + hdr.addr - eh_frame.addr
        if len(starts) > 1 and not bool(np.all(starts[1:] >= starts[:-1])):
            return None
        return starts, offsets

    def fde_for(self, start: int, end: int) -> Any:
        """The FDE covering [start, end); Refused if none does."""
        for cfi, starts, offsets in self._sources:
            i = int(np.searchsorted(starts, start, side="right")) - 1
            if i < 0:
                continue
            try:
                fde = cfi._parse_entry_at(int(offsets[i]))
            except Exception as exc:    # pyelftools raises assorted errors on damaged CFI
                raise Refused(f"its call-frame information is damaged ({exc})") from None
            lo = fde.header.get("initial_location")
            if lo is None or not lo <= start:
                continue
            hi = lo + fde.header["address_range"]
            if start < hi:
                if end > hi:
                    raise Refused(f"its FDE covers only {lo:#x}..{hi:#x}")
                return fde
        where = " or ".join(n for n in (".eh_frame", ".debug_frame")
                            if self.image.section(n) is not None)
        raise Refused("no call-frame information (FDE) covers it"
                      + (f" in {where}" if where else ": the file has no .eh_frame or "
                         ".debug_frame (built with -fno-asynchronous-unwind-tables?)"))


def _full_index(cfi: Any) -> tuple[np.ndarray, np.ndarray]:
    """Every FDE of a section, parsed: (initial locations, offsets), sorted."""
    from elftools.dwarf.callframe import FDE

    try:
        fdes = [e for e in cfi.get_entries() if isinstance(e, FDE)]
    except Exception:
        fdes = []
    pairs = sorted((e.header["initial_location"], e.offset) for e in fdes)
    return (np.array([p[0] for p in pairs], np.int64),
            np.array([p[1] for p in pairs], np.int64))


def _section_data(image: ElfImage, sec: Section) -> bytes:
    data = image.section_bytes(sec)
    if not sec.flags & SHF_COMPRESSED:
        return data
    ch_type, _, size, _ = struct.unpack_from("<IIQQ", data)
    if ch_type == 1:
        return zlib.decompress(data[24:])[:size]
    if ch_type == 2:
        try:
            import zstandard
        except ModuleNotFoundError as exc:
            raise missing_extra(exc, "zstandard", "a zstd-compressed debug section",
                                "unwind") from None

        return zstandard.ZstdDecompressor().decompress(data[24:], max_output_size=size)
    raise ExtableError(f"{sec.name}: compressed with unknown type {ch_type}", image.path)


def rows_for(image: ElfImage, ranges: list[tuple[int, int, str]]) -> list[tuple[int, Row]]:
    """(sub-range start, row) for every [start, end) of ``ranges`` (start, end, label);
    ExtableError naming the range and the reason when one cannot be unwound."""
    if image.machine not in _SLOT_DWARF:
        raise ExtableError(f"unwind is not supported on {image.machine_name}", image.path)
    from .framecheck import Unproved, check

    frames = CallFrames(image)
    out: list[tuple[int, Row]] = []
    for start, end, label in ranges:
        try:
            rows = _rows(frames, start, end)
            check(image.machine, image.code_bytes(start, end), start, rows)
        except (Refused, Unproved) as exc:
            raise ExtableError(f"{label} ({start:#x}..{end:#x}) cannot be unwound: {exc}",
                               image.path) from None
        out += rows
    return out


def _rows(frames: CallFrames, start: int, end: int) -> list[tuple[int, Row]]:
    machine = frames.machine
    fde = frames.fde_for(start, end)
    cie = fde.cie
    if cie["return_address_register"] != _RA_COLUMN[machine]:
        raise Refused(f"its return address is in DWARF column {cie['return_address_register']}, "
                      f"not {_RA_COLUMN[machine]}")
    if machine == EM_AARCH64 and any(int(i.opcode) == _NEGATE_RA_STATE
                                     for i in (*cie.instructions, *fde.instructions)):
        raise Refused("its return address is signed (pointer authentication, "
                      "-mbranch-protection): the table cannot authenticate it")
    try:
        lines = fde.get_decoded().table
    except Exception as exc:
        raise Refused(f"its call-frame information does not decode ({exc})") from None
    hi = fde.header["initial_location"] + fde.header["address_range"]
    rows: list[tuple[int, Row]] = []
    for k, line in enumerate(lines):
        lo = line["pc"]
        nxt = lines[k + 1]["pc"] if k + 1 < len(lines) else hi
        if nxt <= start or lo >= end or nxt <= lo:
            continue
        at = max(lo, start)
        try:
            row = _row(machine, line)
        except Refused as exc:
            raise Refused(f"at {at:#x} ({frames.image.describe(at)}): {exc}") from None
        if not rows or rows[-1][1] != row:
            rows.append((at, row))
    if not rows or rows[0][0] != start:
        raise Refused("its FDE has no rule at the start of the range")
    return rows


def _row(machine: int, line: dict[Any, Any]) -> Row:
    from elftools.dwarf.callframe import RegisterRule

    cfa = line["cfa"]
    if cfa.expr is not None:
        raise Refused("the CFA is a DWARF expression (stack realignment): a row is a "
                      "register plus an offset")
    reg = _DWARF_TO_REG[machine].get(cfa.reg)
    if reg is None:
        raise Refused(f"the CFA is based on DWARF register {cfa.reg}")
    if not 0 <= cfa.offset < 1 << 31:
        raise Refused(f"the CFA offset {cfa.offset} does not fit")
    saves = []
    for slot, dwarf in zip(SLOTS[machine], _SLOT_DWARF[machine]):
        rule = line.get(dwarf)
        if rule is None or rule.type == RegisterRule.SAME_VALUE:
            if machine == EM_X86_64 and slot == "ra":
                raise Refused("the return address has no rule")
            saves.append(0)
        elif rule.type == RegisterRule.OFFSET:
            if not -32768 <= rule.arg < 0 or rule.arg % 8:
                raise Refused(f"{slot} is saved at CFA{rule.arg:+d}, which a row cannot say "
                              "(a negative multiple of 8 within 32 KiB)")
            saves.append(rule.arg)
        elif rule.type == RegisterRule.UNDEFINED:
            what = "the return address" if dwarf == _RA_COLUMN[machine] else slot
            raise Refused(f"{what} is undefined (an outermost frame, or a value the "
                          "function does not keep)")
        else:
            raise Refused(f"{slot} has a {rule.type.lower().replace('_', ' ')} rule; a row "
                          "holds only 'saved at CFA+N' or 'not saved'")
    return Row(reg, cfa.offset, tuple(saves))
