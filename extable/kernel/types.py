"""The kernel's exception-table types, per architecture and kernel version range.

This module is data: each :class:`TypeTable` lists the ``EX_TYPE_`` numbers of
one range of kernel versions (from ``since`` up to the next table's ``since``)
and, per type, which parts of the entry's data the kernel's handler reads, so
that ``verify`` can tell a malformed entry from a merely unusual one. Where a
number comes from is written beside it (the header and the commit that
changed it), so that the next renumbering is one new table, not new code.

x86-64 (arch/x86/include/asm/extable_fixup_types.h, handlers in
arch/x86/mm/extable.c):

* 5.16: the type is the whole data word; tglx's series added the types
  (WRMSR 7, RDMSR 8, BPF 9, ..._MCE_SAFE 12/13).
* 5.17: Peter Zijlstra's "x86/extable: Extend extable functionality" (and the
  .fixup removal series on top) split the word into type/reg/flags/imm and
  renumbered (BPF 7, WRMSR 8, ...); FAULT_SGX 18, UCOPY_LEN 19 and ZEROPAD 20
  arrived in the same merge. Debian's 6.1 modules and vmlinux use this table.
* 6.9: FRED added ERETU 21.
* 6.10: EX_TYPE_COPY (4) unused ("x86/extable: Remove unused fixup type
  EX_TYPE_COPY", cb517619f967, posted February 2024 on the same header
  revision as ERETU; backported to 6.6.y in April 2025). Which merge window
  took it is not checked here, so the table changes at the later candidate:
  a kernel that still has COPY entries is never failed for them.

arm64 (arch/arm64/include/asm/asm-extable.h, handlers in arch/arm64/mm/extable.c):

* 5.16: Mark Rutland's series: NONE 0, FIXUP 1, BPF 2, UACCESS_ERR_ZERO 3,
  LOAD_UNALIGNED_ZEROPAD 4. Before 5.16 an entry was 8 bytes and untyped.
* 6.0: Tong Tiangen removed FIXUP and added KACCESS_ERR_ZERO: BPF 1,
  UACCESS_ERR_ZERO 2, KACCESS_ERR_ZERO 3, LOAD_UNALIGNED_ZEROPAD 4 (what
  Debian's 6.1 arm64 modules use).
* Not included: the mm tree's renumbering (ACCESS_ERR_ZERO 2, UACCESS_CPY 3,
  KACCESS_SEA 5), which has no release to key it to yet.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

Version = tuple[int, int]

# What an x86 handler does with the data word's reg and imm fields.
NONE, WRITE, READ = "none", "write", "read"


@dataclass(frozen=True)
class X86Usage:
    """Which fields of the x86 data word a type's handler uses."""

    reg: str = NONE                  # NONE: must be 0; WRITE: the handler sets it; READ
    imm: bool = False                # False: must be 0
    imm_values: tuple[int, ...] = ()  # when not empty, the only values the kernel emits


@dataclass(frozen=True)
class Arm64Usage:
    """What bits 0-4 and 5-9 of an arm64 entry's ``data`` name (None: data must be 0)."""

    low: str | None = None      # e.g. "err", "data"
    high: str | None = None     # e.g. "zero", "addr"
    xzr_ok: bool = True         # may a field be 31 (xzr)?
    any_data: bool = False      # the JIT's BPF entries keep their own encoding


@dataclass(frozen=True)
class TypeTable:
    """The types of one architecture from kernel ``since`` to the next table."""

    arch: str                                   # "x86_64" or "arm64"
    since: Version
    names: Mapping[int, str]
    usage: Mapping[str, X86Usage | Arm64Usage] = field(default_factory=dict)
    source: str = ""
    fields: bool = True     # x86 before 5.17: False, the whole data word is the type

    @property
    def label(self) -> str:
        return f"{self.since[0]}.{self.since[1]}"

    def name(self, number: int) -> str | None:
        return self.names.get(number)


# -- x86-64 ---------------------------------------------------------------

_X86_516 = {0: "NONE", 1: "DEFAULT", 2: "FAULT", 3: "UACCESS", 4: "COPY", 5: "CLEAR_FS",
            6: "FPU_RESTORE", 7: "WRMSR", 8: "RDMSR", 9: "BPF", 10: "WRMSR_IN_MCE",
            11: "RDMSR_IN_MCE", 12: "DEFAULT_MCE_SAFE", 13: "FAULT_MCE_SAFE"}

_X86_517 = {0: "NONE", 1: "DEFAULT", 2: "FAULT", 3: "UACCESS", 4: "COPY", 5: "CLEAR_FS",
            6: "FPU_RESTORE", 7: "BPF", 8: "WRMSR", 9: "RDMSR", 10: "WRMSR_SAFE",
            11: "RDMSR_SAFE", 12: "WRMSR_IN_MCE", 13: "RDMSR_IN_MCE", 14: "DEFAULT_MCE_SAFE",
            15: "FAULT_MCE_SAFE", 16: "POP_REG", 17: "IMM_REG", 18: "FAULT_SGX",
            19: "UCOPY_LEN", 20: "ZEROPAD"}

_X86_69 = {**_X86_517, 21: "ERETU"}
_X86_610 = {k: v for k, v in _X86_69.items() if v != "COPY"}

#: Handlers that use reg/imm (arch/x86/mm/extable.c, fixup_exception()); every
#: other type ignores both, so a nonzero field there is a mistake. Flags
#: (CLEAR_AX, CLEAR_DX) are applied by ex_handler_default() for every type.
_X86_FIELDS: dict[str, X86Usage] = {
    "WRMSR_SAFE": X86Usage(reg=WRITE),          # reg := -EIO
    "RDMSR_SAFE": X86Usage(reg=WRITE),
    "POP_REG": X86Usage(reg=WRITE, imm=True),   # sp += 8; reg := imm
    "IMM_REG": X86Usage(reg=WRITE, imm=True),   # reg := (long)imm
    "UCOPY_LEN": X86Usage(reg=READ, imm=True, imm_values=(1, 4, 8)),  # cx := reg + imm*cx
}


def _x86_usage(names: Mapping[int, str]) -> dict[str, X86Usage | Arm64Usage]:
    return {n: _X86_FIELDS.get(n, X86Usage()) for n in names.values()}


#: The IMM_REG spellings of extable_fixup_types.h, by immediate.
X86_IMM_REG_ALIASES = {-14: "EFAULT_REG", 0: "ZERO_REG", 1: "ONE_REG"}
X86_FLAGS = {1: "CLEAR_AX", 2: "CLEAR_DX"}
X86_REGS = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
            "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")

# -- arm64 ----------------------------------------------------------------

_ARM64_ERR_ZERO = Arm64Usage(low="err", high="zero")
_ARM64_ZEROPAD = Arm64Usage(low="data", high="addr", xzr_ok=False)
_ARM64_BPF = Arm64Usage(any_data=True)

_ARM64_516 = {0: "NONE", 1: "FIXUP", 2: "BPF", 3: "UACCESS_ERR_ZERO",
              4: "LOAD_UNALIGNED_ZEROPAD"}
_ARM64_60 = {0: "NONE", 1: "BPF", 2: "UACCESS_ERR_ZERO", 3: "KACCESS_ERR_ZERO",
             4: "LOAD_UNALIGNED_ZEROPAD"}
_ARM64_USAGE: dict[str, X86Usage | Arm64Usage] = {
    "NONE": Arm64Usage(), "FIXUP": Arm64Usage(), "BPF": _ARM64_BPF,
    "UACCESS_ERR_ZERO": _ARM64_ERR_ZERO, "KACCESS_ERR_ZERO": _ARM64_ERR_ZERO,
    "LOAD_UNALIGNED_ZEROPAD": _ARM64_ZEROPAD}

TABLES: tuple[TypeTable, ...] = (
    TypeTable("x86_64", (5, 16), _X86_516, {n: X86Usage() for n in _X86_516.values()},
              "v5.16 extable_fixup_types.h (tglx, x86/fpu + MCE_SAFE)", fields=False),
    TypeTable("x86_64", (5, 17), _X86_517, _x86_usage(_X86_517),
              "v5.17..v6.8 extable_fixup_types.h (peterz, extend extable functionality)"),
    TypeTable("x86_64", (6, 9), _X86_69, _x86_usage(_X86_69),
              "v6.9 extable_fixup_types.h (FRED: ERETU)"),
    TypeTable("x86_64", (6, 10), _X86_610, _x86_usage(_X86_610),
              "mainline extable_fixup_types.h (EX_TYPE_COPY unused)"),
    TypeTable("arm64", (5, 16), _ARM64_516, _ARM64_USAGE,
              "v5.16 asm-extable.h (mark rutland, extable types)"),
    TypeTable("arm64", (6, 0), _ARM64_60, _ARM64_USAGE,
              "v6.0..mainline asm-extable.h (FIXUP removed, KACCESS_ERR_ZERO)"),
)

#: The newest kernel whose headers these tables were compared with.
CHECKED_THROUGH: Version = (6, 18)
#: The first kernel with typed entries (12 bytes on both architectures).
FIRST_TYPED: Version = (5, 16)


def tables_for(arch: str) -> list[TypeTable]:
    return sorted((t for t in TABLES if t.arch == arch), key=lambda t: t.since)


def select(arch: str, version: Version | None) -> tuple[TypeTable, str | None]:
    """The table for ``version`` and, when it is a guess, a note saying so."""
    tables = tables_for(arch)
    newest = tables[-1]
    if version is None:
        return newest, f"kernel version unknown; using the {newest.label}+ types"
    chosen = tables[0]
    for t in tables:
        if t.since <= version:
            chosen = t
    v = f"{version[0]}.{version[1]}"
    if version < FIRST_TYPED:
        return chosen, (f"kernel {v} predates typed entries ({FIRST_TYPED[0]}.{FIRST_TYPED[1]}); "
                        f"using the nearest table, {chosen.label}: type names are a guess")
    if version > CHECKED_THROUGH:
        c = f"{CHECKED_THROUGH[0]}.{CHECKED_THROUGH[1]}"
        return chosen, (f"kernel {v} is newer than any table checked (through {c}); "
                        f"using the nearest, {chosen.label}+")
    return chosen, None
