"""The model: handler kinds, handler descriptors, data words and register names.

An exception-table entry covers ``[start, end)``, names a landing pad and carries
a 32-bit data word. A *classic* word packs a handler type, a register and a
signed immediate the way Linux x86 packs ``EX_DATA_*``; an *extended* word (bit
31 set) is the index of a :class:`Handler` descriptor in the table.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .elf import EM_AARCH64, EM_X86_64
from .errors import ExtableError

NOREG = 0xFF

# Classic data word layout (Linux arch/x86/include/asm/extable_fixup_types.h).
DATA_TYPE_MASK = 0x000000FF
DATA_REG_SHIFT, DATA_REG_MASK = 8, 0x00000F00
DATA_FLAG_SHIFT, DATA_FLAG_MASK = 12, 0x0000F000
DATA_IMM_SHIFT = 16
DATA_EXTENDED = 0x00008000     # top flag bit: the immediate field is a descriptor index
MAX_DESCRIPTORS = 1 << 16


def extended_word(index: int) -> int:
    """The data word naming descriptor ``index``."""
    if not 0 <= index < MAX_DESCRIPTORS:
        raise ExtableError(f"descriptor index {index} does not fit 16 bits")
    return DATA_EXTENDED | (index << DATA_IMM_SHIFT)


def descriptor_index(data: int) -> int | None:
    """The descriptor an extended word names, None for a classic word."""
    return data >> DATA_IMM_SHIFT if data & DATA_EXTENDED else None


class Kind(enum.IntEnum):
    """What the runtime does when an entry of this kind claims a fault."""

    FIXUP = 1        # resume at the landing pad
    SHORT_COPY = 2   # resume at the landing pad; `reg` holds the bytes remaining
    ERRNO = 3        # resume at the landing pad with `reg` set to `imm` (a negative errno)
    UNWIND = 4       # return to the caller with `reg` set to `imm`: no landing pad; the
                     # caller's frame comes from the table's unwind rows (extable.unwind)


class Side(enum.IntEnum):
    """Which side of a copy an entry guards."""

    NONE = 0
    SRC = 1
    DST = 2
    BOTH = 3


FLAG_MC_SAFE = 0x01   # the routine is safe against machine checks (poisoned memory)

X86_64_REGS = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
               "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
AARCH64_REGS = tuple(f"x{i}" for i in range(31))
REGISTERS = {EM_X86_64: X86_64_REGS, EM_AARCH64: AARCH64_REGS}


def register_name(machine: int, number: int) -> str | None:
    """The name of a register number (instruction-encoding order), None for NOREG."""
    if number == NOREG:
        return None
    names = REGISTERS[machine]
    return names[number] if number < len(names) else f"reg{number}"


def register_number(machine: int, name: str | int | None) -> int:
    """The number of a register given by name (``rcx``, ``x2``) or number."""
    if name is None:
        return NOREG
    if isinstance(name, int) and not isinstance(name, bool):
        number = name
    else:
        names = REGISTERS[machine]
        if str(name).lower() not in names:
            raise ExtableError(f"unknown register {name!r} (one of {', '.join(names)})")
        number = names.index(str(name).lower())
    if not 0 <= number < len(REGISTERS[machine]):
        raise ExtableError(f"register number {number} out of range")
    return number


@dataclass(frozen=True, order=True)
class Handler:
    """An extended handler descriptor: the kind and its parameters."""

    kind: Kind
    reg: int = NOREG        # bytes remaining (short_copy), errno target (errno), return
                            # register (unwind)
    src_reg: int = NOREG    # current source address (short_copy)
    dst_reg: int = NOREG    # current destination address (short_copy)
    rec_reg: int = NOREG    # pointer to a caller's fault record, filled by the runtime
    side: Side = Side.NONE
    flags: int = 0
    imm: int = 0
    name: str = ""

    def __post_init__(self) -> None:
        if not -(1 << 31) <= self.imm < (1 << 31):
            raise ExtableError(f"handler {self.name!r}: immediate {self.imm} does not fit 32 bits")
        if len(self.name.encode()) > 255:
            raise ExtableError(f"handler name {self.name[:20]!r}... is too long")

    @property
    def mc_safe(self) -> bool:
        return bool(self.flags & FLAG_MC_SAFE)

    def describe(self, machine: int) -> str:
        parts = [self.kind.name.lower()]
        for label, reg in (("reg", self.reg), ("src", self.src_reg), ("dst", self.dst_reg),
                           ("rec", self.rec_reg)):
            if reg != NOREG:
                parts.append(f"{label}={register_name(machine, reg)}")
        if self.side:
            parts.append(f"side={self.side.name.lower()}")
        if self.kind in (Kind.ERRNO, Kind.UNWIND) or self.imm:
            parts.append(f"imm={self.imm}")
        if self.mc_safe:
            parts.append("mc_safe")
        return " ".join(parts)

    def as_dict(self, machine: int) -> dict[str, object]:
        return {"name": self.name, "kind": self.kind.name.lower(),
                "reg": register_name(machine, self.reg),
                "src_reg": register_name(machine, self.src_reg),
                "dst_reg": register_name(machine, self.dst_reg),
                "rec_reg": register_name(machine, self.rec_reg),
                "side": self.side.name.lower(), "mc_safe": self.mc_safe, "imm": self.imm}


def classic_data(kind: Kind, reg: int = 0, flags: int = 0, imm: int = 0) -> int:
    """Pack a classic data word."""
    if not -(1 << 15) <= imm < (1 << 15):
        raise ExtableError(f"classic immediate {imm} does not fit 16 bits")
    if reg == NOREG:
        reg = 0
    return (int(kind) | (reg << DATA_REG_SHIFT) | ((flags & 0x7) << DATA_FLAG_SHIFT)
            | ((imm & 0xFFFF) << DATA_IMM_SHIFT))


def decode_classic(data: int) -> tuple[int, int, int, int]:
    """Unpack a classic data word into (type, reg, flags, imm)."""
    imm = (data >> DATA_IMM_SHIFT) & 0xFFFF
    if imm & 0x8000:
        imm -= 0x10000
    return (data & DATA_TYPE_MASK, (data & DATA_REG_MASK) >> DATA_REG_SHIFT,
            (data & DATA_FLAG_MASK) >> DATA_FLAG_SHIFT, imm)


def describe_data(machine: int, data: int, handlers: list[Handler]) -> str:
    """Human text for a data word."""
    index = descriptor_index(data)
    if index is not None:
        if index < len(handlers):
            h = handlers[index]
            return f"[{index}] {h.name or '-'}: {h.describe(machine)}"
        return f"[{index}] <missing descriptor>"
    kind, reg, flags, imm = decode_classic(data)
    name = Kind(kind).name.lower() if kind in Kind._value2member_map_ else f"type{kind}"
    return f"classic {name} reg={register_name(machine, reg)} flags={flags:#x} imm={imm}"


def builtin_handlers(machine: int) -> dict[str, Handler]:
    """The handlers every rule may name without defining them."""
    if machine == EM_X86_64:
        count, src, dst, ret = "rcx", "rsi", "rdi", "rax"
    else:
        count, src, dst, ret = "x2", "x1", "x0", "x0"

    def reg(name: str) -> int:
        return register_number(machine, name)

    return {
        "fixup": Handler(Kind.FIXUP, name="fixup"),
        "short_copy": Handler(Kind.SHORT_COPY, reg=reg(count), src_reg=reg(src),
                              dst_reg=reg(dst), side=Side.BOTH, flags=FLAG_MC_SAFE,
                              name="short_copy"),
        "errno": Handler(Kind.ERRNO, reg=reg(ret), imm=-14, name="errno"),   # -EFAULT
        "unwind": Handler(Kind.UNWIND, reg=reg(ret), imm=-14, name="unwind"),
    }
