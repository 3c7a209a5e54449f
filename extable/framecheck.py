"""Proving a function's unwind rows against its instructions, as objtool checks ORC.

The rows come from the compiler's call-frame information, which an unwinder
trusts. ``unwind`` trusts it at *every* instruction, and not every compiler
makes it precise there: Clang 14 on arm64 describes a frame only from the end
of its prologue and not in its epilogue (synchronous tables, precise at calls,
enough for C++ exceptions), so a fault in an epilogue would restore the
caller's registers from the wrong places. So before a function is covered,
each of its instructions is decoded (capstone) and each step checked:

* the CFA stays where the rows put it: across an instruction that moves the
  stack pointer (push, pop, sub/add sp, stp/ldp with writeback, leave) or sets
  the frame pointer from it, the next row's CFA must be the same address;
  where the stack pointer moves by an amount the code computes (alloca) or a
  mask (realignment), the CFA must already rest on the frame pointer;
* a callee-saved register (a row slot) is written only while a row says it is
  saved, and a row starts saying so only at the instruction that stores it
  there (and stops only at the one that loads it back from there); on arm64 a
  call (which writes x30) happens only while x30 is saved;
* a direct jump inside the function lands where the rows give the same CFA.

A step that cannot be proved refuses the function, naming the instruction.
What is not checked: control flow beyond direct jumps within the function,
and what memory the function writes (a function that overwrites its own save
slots would still unwind wrongly; no compiler does).
"""

from __future__ import annotations

import bisect
import functools
import re
from typing import Any, NamedTuple

from .elf import EM_AARCH64, EM_X86_64
from .errors import missing_extra
from .unwind import RA_SLOT, SLOTS, SP_REG, Row


class Unproved(Exception):
    """An instruction at which the rows cannot be proved to hold, and why."""


class Effect(NamedTuple):
    """What one instruction does to the frame (addresses relative to SP or FP before it)."""

    sp: tuple[str, int] | None = None     # ("add", d) | ("fp", k): SP' = FP + k | ("?", 0)
    fp: tuple[str, int] | None = None     # ("sp", k): FP' = SP + k | ("load", 0) | ("?", 0)
    stores: tuple[tuple[int, str, int], ...] = ()   # (slot, "sp"|"fp", displacement)
    loads: tuple[tuple[int, str, int], ...] = ()
    writes: frozenset[int] = frozenset()  # slots written otherwise
    ends: bool = False                    # no fall-through (ret, jmp, trap)
    target: int | None = None             # a direct branch's target


# -- register names -> slots -------------------------------------------------------------

def _x86_aliases() -> dict[str, int]:
    names = {"rbx": ("ebx", "bx", "bl", "bh"), "rbp": ("ebp", "bp", "bpl"),
             **{f"r{i}": (f"r{i}d", f"r{i}w", f"r{i}b") for i in range(12, 16)}}
    out = {}
    for k, slot in enumerate(SLOTS[EM_X86_64][:6]):
        for n in (slot, *names[slot]):
            out[n] = k
    return out


def _arm_aliases() -> dict[str, int]:
    out = {}
    for k in range(12):                                   # x19..x30
        n = 19 + k
        out[f"x{n}"] = out[f"w{n}"] = k
    out["fp"], out["lr"] = 10, 11
    for k in range(8):                                    # d8..d15
        for p in "bhsdqv":
            out[f"{p}{8 + k}"] = 12 + k
    return out


SLOT_OF = {EM_X86_64: _x86_aliases(), EM_AARCH64: _arm_aliases()}
FP_SLOT = {EM_X86_64: 1, EM_AARCH64: 10}                  # rbp, x29
_HEX = re.compile(r"#?(-?0x[0-9a-f]+|-?\d+)$")
_NUMBER = re.compile(r"#?-?(?:0x[0-9a-f]+|\d+)$")
_X86_MEM = re.compile(r"\[(\w+)(?: ([+-]) (0x[0-9a-f]+|\d+))?\]$")
_X86_PREFIXES = {"lock", "rep", "repe", "repz", "repne", "repnz", "notrack", "bnd", "data16"}
#: x86 instructions whose first operand, even a register, is only read.
_X86_READS_FIRST = {"cmp", "test", "bt", "push", "call", "jmp", "ucomisd", "ucomiss", "comisd",
                    "comiss", "vucomisd", "vucomiss", "vcomisd", "vcomiss", "ptest", "vptest",
                    "vtestps", "vtestpd"}
#: arm64 instructions whose first operand is not written.
_ARM_READS_FIRST = {"cmp", "cmn", "tst", "ccmp", "ccmn", "fcmp", "fcmpe", "fccmp", "fccmpe",
                    "b", "br", "blr", "bl", "ret", "cbz", "cbnz", "tbz", "tbnz", "prfm", "prfum",
                    "dmb", "dsb", "isb", "nop", "hint", "yield", "brk", "udf", "hlt", "svc",
                    "hvc", "dc", "ic", "tlbi", "msr", "bti", "autiasp", "paciasp", "at", "csdb"}
_ARM_MEM = re.compile(r"\[(\w+)(?:, #(-?0x[0-9a-f]+|-?\d+))?\](!?)$")


_OUTER_COMMA = re.compile(r", (?![^\[{]*[\]}])")


def _split(op_str: str) -> list[str]:
    """Operands, split at the commas outside brackets and braces."""
    return _OUTER_COMMA.split(op_str) if op_str else []


#: Text that may concern the frame: a slot register, the stack or frame pointer. An
#: instruction without it, and not among the ones with implicit effects, has none.
_MENTIONS = {
    EM_X86_64: re.compile(r"\b(?:[re]?[sb]p|[sb]pl|[re]?bx|b[lh]|r1[2-5][dwb]?)\b"),
    EM_AARCH64: re.compile(r"\b(?:w?sp|[xw](?:19|2\d|30)|fp|lr|[bhsdqv](?:[89]|1[0-5]))\b"),
}
_IMPLICIT = {
    EM_X86_64: {"push", "pop", "pushfq", "popfq", "pushf", "popf", "leave", "enter", "cpuid",
                "call", "ret"},
    EM_AARCH64: {"bl", "blr", "blraa", "blrab", "mov", "movz", "movk"},
}


def _arm_reg(text: str) -> str:
    """v8.16b -> v8, v8.d[1] -> v8, x19 -> x19."""
    return text.split(".", 1)[0].split("[", 1)[0].strip()


_NOTHING = Effect()


class _Checker:
    """Decodes instructions with capstone (boundaries and text only: the "lite" mode is
    twenty times faster than the detailed one) and reads each one's effect on the frame
    from its text. tests/test_framecheck.py holds this reading against capstone's detailed
    decoding (the registers it says an instruction writes) over whole libraries."""

    def __init__(self, machine: int) -> None:
        try:
            import capstone
        except ModuleNotFoundError as exc:
            raise missing_extra(exc, "capstone", "proving unwind rules against the code",
                                "unwind") from None

        self.machine = machine
        arch = (capstone.CS_ARCH_X86, capstone.CS_MODE_64) if machine == EM_X86_64 else \
            (capstone.CS_ARCH_ARM64, capstone.CS_MODE_ARM)
        self.lite = capstone.Cs(*arch)
        self.slot_of = SLOT_OF[machine]
        self.mentions = _MENTIONS[machine].search
        self.implicit = _IMPLICIT[machine]

    def effect(self, mnemonic: str, op_str: str, consts: dict[str, int]) -> Effect:
        """The instruction's effect. ``consts`` holds the arm64 registers known to hold a
        constant (a frame size set with mov/movk before ``sub sp, sp, x12``), kept up to
        date in straight-line code."""
        branch = self._branch(mnemonic, op_str) if mnemonic[:1] in "jbrcthiu" else None
        if not self.mentions(op_str) and mnemonic not in self.implicit \
                and " " not in mnemonic:
            if self.machine == EM_AARCH64 and op_str:
                consts.pop("x" + op_str.split(",", 1)[0][1:], None)
            return branch or _NOTHING
        if self.machine == EM_X86_64:
            dst = op_str.split(", ", 1)[0]
            if (dst not in self.slot_of and dst not in ("rsp", "rbp") and "[rsp" not in dst
                    and "[rbp" not in dst and mnemonic not in self.implicit
                    and mnemonic not in ("xchg", "xadd") and " " not in mnemonic):
                return branch or _NOTHING      # reads a slot register, writes none
            eff = self._x86(mnemonic, op_str)
        else:
            eff = self._arm(mnemonic, op_str, consts)
            _track_constant(consts, mnemonic, op_str)
        if branch is not None:
            eff = eff._replace(ends=branch.ends or eff.ends, target=branch.target)
        return _NOTHING if eff == _NOTHING else eff

    def _branch(self, mnemonic: str, op_str: str) -> Effect | None:
        """Direct branches: (ends, target); None for anything else."""
        m = _HEX.search(op_str)
        if self.machine == EM_X86_64:
            mnemonic = mnemonic.split()[-1] if mnemonic else mnemonic
            if mnemonic in ("ret", "ud2", "hlt", "int3"):
                return Effect(ends=True)
            if mnemonic == "jmp":
                return Effect(ends=True, target=int(m.group(1), 16) if m and
                              op_str.startswith("0x") else None)
            if mnemonic.startswith("j") and m and op_str.startswith("0x"):
                return Effect(target=int(m.group(1), 16))
            return None
        if mnemonic in ("ret", "br", "brk", "udf", "hlt"):
            return Effect(ends=True)
        if mnemonic == "b" and m:
            return Effect(ends=True, target=int(m.group(1), 0))
        if (mnemonic.startswith("b.") or mnemonic in ("cbz", "cbnz", "tbz", "tbnz")) and m:
            return Effect(target=int(m.group(1), 0))
        return None

    def _slots(self, names: list[str]) -> frozenset[int]:
        return frozenset(s for s in (self.slot_of.get(n) for n in names) if s is not None)

    def _x86(self, mnemonic: str, op_str: str) -> Effect:
        words = mnemonic.split()
        m = next((w for w in words if w not in _X86_PREFIXES), words[-1] if words else "")
        ops = _split(op_str)
        dst = ops[0] if ops else ""

        def mem(o: str) -> tuple[str, int] | None:
            inner = _X86_MEM.search(o)
            if inner is None or inner.group(1) not in ("rsp", "rbp"):
                return None
            d = int(inner.group(3), 0) if inner.group(3) else 0
            return ("sp" if inner.group(1) == "rsp" else "fp", -d if inner.group(2) == "-" else d)

        def imm(o: str) -> int | None:
            return int(o, 0) if _NUMBER.match(o) else None

        full = SLOTS[EM_X86_64]                     # the 64-bit names
        slot = self.slot_of.get(dst)
        if m == "push":
            return Effect(sp=("add", -8), stores=((slot, "sp", -8),)
                          if slot is not None and dst in full else ())
        if m in ("pushfq", "pushf"):
            return Effect(sp=("add", -8))
        if m in ("popfq", "popf"):
            return Effect(sp=("add", 8))
        if m == "pop":
            if slot is None or dst not in full:
                return Effect(sp=("add", 8), writes=self._slots([dst]))
            return Effect(sp=("add", 8), fp=("load", 0) if dst == "rbp" else None,
                          loads=((slot, "sp", 0),))
        if m == "leave":                      # mov rsp, rbp; pop rbp
            return Effect(sp=("fp", 8), fp=("load", 0), loads=((1, "fp", 0),))
        if m == "enter":
            return Effect(sp=("?", 0), fp=("?", 0))
        if m in ("call", "ret") or m.startswith("j"):
            return Effect()                   # a call's push and the callee's ret cancel
        if m == "cpuid":
            return Effect(writes=frozenset({0}))                      # rbx
        if m in ("syscall", "sysenter", "rdtsc", "rdtscp", "cqo", "cdq", "cwd", "xgetbv"):
            return Effect()
        if dst == "rsp":
            src = ops[1] if len(ops) > 1 else ""
            if m in ("sub", "add") and imm(src) is not None:
                return Effect(sp=("add", imm(src) if m == "add" else -imm(src)))  # type: ignore
            where = mem(src)
            if m == "lea" and where is not None:
                return Effect(sp=("add", where[1]) if where[0] == "sp" else ("fp", where[1]))
            if m == "mov" and src == "rbp":
                return Effect(sp=("fp", 0))
            return Effect(sp=("?", 0))
        if dst == "rbp" and m not in _X86_READS_FIRST:
            src = ops[1] if len(ops) > 1 else ""
            where = mem(src)
            if m == "mov" and src == "rsp":
                return Effect(fp=("sp", 0))
            if m == "lea" and where is not None and where[0] == "sp":
                return Effect(fp=("sp", where[1]))
            if m == "mov" and where is not None:
                return Effect(fp=("load", 0), loads=((1, *where),))
            return Effect(fp=("?", 0), writes=frozenset({1}))
        if m == "mov" and slot is not None and dst in full and len(ops) > 1 and mem(ops[1]):
            return Effect(loads=((slot, *mem(ops[1])),))             # type: ignore[misc]
        if m == "mov" and len(ops) > 1 and ops[1] in full and mem(dst) is not None:
            return Effect(stores=((self.slot_of[ops[1]], *mem(dst)),))  # type: ignore[misc]
        written = []
        if ops and m not in _X86_READS_FIRST and not (m in ("mul", "div", "idiv", "imul")
                                                        and len(ops) == 1):
            written.append(dst)
        if m in ("xchg", "xadd") and len(ops) > 1:
            written.append(ops[1])
        return Effect(writes=self._slots(written))

    def _arm(self, m: str, op_str: str, consts: dict[str, int]) -> Effect:
        ops = _split(op_str)
        regs: list[str] = []
        for o in ops:
            if o.startswith("{"):
                regs += [_arm_reg(r) for r in o.strip("{}").split(",")]
            elif not o.startswith(("[", "#")):
                regs.append(_arm_reg(o))
        memory = next((o for o in ops if o.startswith("[")), None)
        if memory is not None and m.startswith(("ld", "st")):
            if m.startswith(("stxr", "stlxr", "stxp", "stlxp")):     # a status register first
                return Effect(writes=self._slots(regs[:1]))
            inner = _ARM_MEM.match(memory)
            base = {"sp": "sp", "x29": "fp", "fp": "fp"}.get(inner.group(1)) if inner else None
            data = [r for r in regs if r != _arm_reg(memory)]
            pair = m.startswith(("ldp", "stp", "ldnp", "stnp", "ldxp", "ldaxp"))
            data = data[:2] if pair else data[:1]
            if m.startswith(("ld1", "ld2", "ld3", "ld4", "st1", "st2", "st3", "st4")):
                data = [r for r in regs]
            sp = None
            disp = int(inner.group(2), 0) if inner and inner.group(2) else 0
            post = ops[-1] if ops[-1].startswith("#") and ops[-1] is not memory else None
            if base == "sp" and inner is not None and (inner.group(3) or post):
                sp = ("add", int(post.lstrip("#"), 0) if post else disp)
            loading = m.startswith("ld")
            base_reg = _arm_reg(memory.strip("[]!").split(",")[0])
            written_base = self._slots([base_reg]) if (inner is not None and (
                inner.group(3) or post)) or (inner is None and memory.endswith("!")) \
                or (post and inner is None) else frozenset()
            if base is None or inner is None:
                return Effect(writes=(self._slots(data) if loading else frozenset())
                              | written_base)
            width = 16 if any(r.startswith("q") for r in data) else 8
            # (slot, displacement) of each register moved; a save is a whole x, d or q one
            moved = [(self.slot_of.get(r), disp + width * k, r[0] in "xdq" or r in ("fp", "lr"))
                     for k, r in enumerate(data)]
            fp_moved = written_base if base == "fp" else frozenset()   # x29 written back
            if not loading:
                return Effect(sp=sp, fp=("?", 0) if fp_moved else None, writes=fp_moved,
                              stores=tuple((s, base, d) for s, d, whole in moved
                                           if s is not None and whole))
            fp = ("load", 0) if any(r in ("x29", "fp") for r in data) else \
                ("?", 0) if fp_moved else None
            return Effect(sp=sp, fp=fp, writes=fp_moved,
                          loads=tuple((s, base, d) for s, d, _w in moved if s is not None))
        if m in ("bl", "blr", "blraa", "blrab"):
            return Effect(writes=frozenset({RA_SLOT[EM_AARCH64]}))
        dst = regs[0] if regs else ""
        if dst == "sp":
            src = regs[1] if len(regs) > 1 else ""
            last = ops[-1] if ops else ""
            amount = (int(last.lstrip("#").split()[0], 0) if last.startswith("#") and
                      len(ops) == 3 else consts.get(regs[2] if len(regs) > 2 else ""))
            shift = re.search(r"lsl #(\d+)", op_str)
            if amount is not None and shift and last.startswith("#"):
                amount <<= int(shift.group(1))
            if m in ("add", "sub") and src in ("sp", "x29", "fp") and amount is not None:
                d = amount * (1 if m == "add" else -1)
                return Effect(sp=("add", d) if src == "sp" else ("fp", d))
            if m == "mov" and src in ("x29", "fp"):
                return Effect(sp=("fp", 0))
            return Effect(sp=("?", 0))
        if dst in ("x29", "fp") and m not in _ARM_READS_FIRST:
            src = regs[1] if len(regs) > 1 else ""
            last = ops[-1] if ops else ""
            if m == "mov" and src == "sp":
                return Effect(fp=("sp", 0))
            if m in ("add", "sub") and src == "sp" and last.startswith("#") and len(ops) == 3:
                d = int(last.lstrip("#"), 0)
                return Effect(fp=("sp", d if m == "add" else -d))
            return Effect(fp=("?", 0), writes=frozenset({FP_SLOT[EM_AARCH64]}))
        if m in _ARM_READS_FIRST or m.startswith("b."):
            return Effect()
        return Effect(writes=self._slots(regs[:1]))


_MOVE = re.compile(r"([xw])(\d+), #(-?0x[0-9a-f]+|-?\d+)(?:, lsl #(\d+))?$")


def _track_constant(consts: dict[str, int], mnemonic: str, op_str: str) -> None:
    """Follow ``mov x12, #imm`` / ``movk x12, #imm, lsl #16`` (keyed by x-name); any other
    instruction whose first operand is a register forgets that register's value."""
    m = _MOVE.match(op_str)
    first = op_str.split(",", 1)[0].strip()
    key = "x" + first[1:] if first[:1] in ("x", "w") else first
    if m and mnemonic in ("mov", "movz"):
        consts[key] = int(m.group(3), 0) << int(m.group(4) or 0)
    elif m and mnemonic == "movk" and key in consts:
        shift = int(m.group(4) or 0)
        consts[key] = consts[key] & ~(0xFFFF << shift) | (int(m.group(3), 0) << shift)
    else:
        consts.pop(key, None)



_UNVISITED = object()


def _merge(a: object, b: int | None) -> int | None:
    return b if a is _UNVISITED else a if a == b else None      # type: ignore[return-value]


@functools.lru_cache(maxsize=None)
def _checker(machine: int) -> _Checker:
    return _Checker(machine)


def check(machine: int, code: bytes, start: int, rows: list[tuple[int, Row]]) -> None:
    """Refuse (Unproved) unless the rows hold at every instruction of code at start.

    The stack and frame pointers are tracked relative to the CFA over the function's
    control flow (direct branches; an instruction reached only by an indirect jump,
    a jump table's case, takes that jump's state): a row resting on one of them says
    where it is, instructions move them, paths that disagree make it unknown. Then
    one pass checks each step, tracking where each slot's register was stored while
    it held the caller's value and which registers were loaded back from their slots.
    """
    chk = _checker(machine)
    sp_reg, fp_reg, fp_slot = SP_REG[machine], 5 if machine == EM_X86_64 else 29, FP_SLOT[machine]
    ips = [ip for ip, _ in rows]
    end = start + len(code)

    def row_at(address: int) -> Row:
        return rows[bisect.bisect_right(ips, address) - 1][1]

    decoded = list(chk.lite.disasm_lite(code, start))
    covered = sum(size for _, size, _, _ in decoded)
    if covered != len(code):
        raise Unproved(f"at {start + covered:#x}: bytes that do not decode as instructions")
    effects = []
    consts: dict[str, int] = {}
    for _address, _size, mnemonic, op_str in decoded:
        eff = _NOTHING if mnemonic == "nop" else chk.effect(mnemonic, op_str, consts)
        if eff.ends:
            consts.clear()
        if eff.fp is not None and eff.fp[0] != "load":
            eff = eff._replace(writes=eff.writes | {fp_slot})
        effects.append(eff)
    at = {a: i for i, (a, *_) in enumerate(decoded)}
    row_of = [row_at(a) for a, *_ in decoded]

    def step(i: int, sp: int | None, fp: int | None) -> tuple[int | None, int | None]:
        """(sp, fp) after instruction i, given them before (a row overrides its base)."""
        r, eff = row_of[i], effects[i]
        if r.cfa_reg == sp_reg:
            sp = -r.cfa_off
        elif r.cfa_reg == fp_reg:
            fp = -r.cfa_off
        if eff is _NOTHING:
            return sp, fp
        new_sp, new_fp = sp, fp
        if eff.sp is not None:
            kind, d = eff.sp
            new_sp = (sp + d if kind == "add" and sp is not None
                      else fp + d if kind == "fp" and fp is not None else None)
        if eff.fp is not None:
            kind, d = eff.fp
            new_fp = sp + d if kind == "sp" and sp is not None else None
        elif fp_slot in eff.writes:
            new_fp = None
        return new_sp, new_fp

    n = len(decoded)
    succs: list[list[int]] = [[] for _ in decoded]
    for i, eff in enumerate(effects):
        if not eff.ends and i + 1 < n:
            succs[i].append(i + 1)
        if eff.target is not None and eff.target in at:
            succs[i].append(at[eff.target])
    reached = {j for js in succs for j in js} | {0}
    orphans = [i for i in range(n) if i not in reached]
    unreached = set(orphans)              # reached by no direct branch nor fall-through
    for i, eff in enumerate(effects):
        if eff.ends and eff.target is None and decoded[i][2] not in (
                "ret", "ud2", "hlt", "int3", "brk", "udf"):
            succs[i] += orphans                  # an indirect jump: a jump table's cases
    state_in: list[Any] = [(_UNVISITED, _UNVISITED)] * n
    state_in[0] = (None, None)
    work = [0]
    while work:
        i = work.pop()
        out = step(i, *state_in[i])
        for j in succs[i]:
            old = state_in[j]
            new = (_merge(old[0], out[0]), _merge(old[1], out[1]))
            if new != old:
                state_in[j] = new
                work.append(j)

    saved_at: dict[int, set[int]] = {}          # slot -> CFA offsets holding the caller's value
    restored: set[int] = set()                  # slots loaded back from their save slot
    for i, (address, size, mnemonic, op_str) in enumerate(decoded):
        r, eff = row_of[i], effects[i]
        nxt = address + size
        last = nxt >= end or eff.ends
        nrow = r if last else row_of[i + 1]
        if i in unreached:
            restored = set()
        if nrow is r and r.cfa_reg in (sp_reg, fp_reg) and (
                eff is _NOTHING or (eff.sp is None and eff.fp is None and not eff.stores
                                    and not eff.loads and not eff.writes and not eff.ends
                                    and (eff.target not in at
                                         or row_of[at[eff.target]].cfa_reg != r.cfa_reg
                                         or row_of[at[eff.target]].cfa_off == r.cfa_off))):
            continue                      # nothing moves, the row holds: the common case
        why = _step_problem(machine, r, nrow, eff, state_in[i], saved_at, restored, last,
                            step(i, *(None if v is _UNVISITED else v for v in state_in[i])),
                            row_at(eff.target) if eff.target is not None and eff.target in at
                            else None, mnemonic)
        if why:
            raise Unproved(f"at {address:#x} ({f'{mnemonic} {op_str}'.strip()}): {why}")
        if last:
            restored = set()


def _step_problem(machine: int, r: Row, nrow: Row, eff: Effect, state: Any,
                  saved_at: dict[int, set[int]], restored: set[int], last: bool,
                  after: tuple[int | None, int | None], target: Row | None,
                  mnemonic: str) -> str | None:
    """What is wrong with one step from row r to row nrow, or None; updates saved_at and
    restored."""
    sp_reg, fp_reg = SP_REG[machine], 5 if machine == EM_X86_64 else 29
    if r.cfa_reg not in (sp_reg, fp_reg):
        return "the CFA rests on a register that is neither the stack nor the frame pointer"
    sp_in, fp_in = (None if v is _UNVISITED else v for v in state)
    sp = -r.cfa_off if r.cfa_reg == sp_reg else sp_in
    fp = -r.cfa_off if r.cfa_reg == fp_reg else fp_in
    if mnemonic == "nop":
        # No effect, and no fault can happen at it: padding after a return may carry the
        # row before it while falling into the next block's.
        return None

    def rel(base: str, disp: int) -> int | None:
        b = sp if base == "sp" else fp
        return None if b is None else b + disp

    if target is not None and target.cfa_reg == r.cfa_reg and target.cfa_off != r.cfa_off:
        return f"jumps to {eff.target:#x}, where the rows put the CFA elsewhere"
    for s, base, disp in eff.stores:
        addr = rel(base, disp)
        if addr is not None and (r.saves[s] == 0 or s in restored):
            saved_at.setdefault(s, set()).add(addr)
    writes = set(eff.writes)
    for s, base, disp in eff.loads:
        if r.saves[s] and rel(base, disp) == r.saves[s]:
            restored.add(s)
        else:
            writes.add(s)
    restored -= writes
    why = _check_slots(machine, r, nrow, writes, saved_at, restored)
    if why or last:
        return why
    new_sp, new_fp = after
    need = new_sp if nrow.cfa_reg == sp_reg else new_fp
    if need is None or need != -nrow.cfa_off:
        base = "stack" if nrow.cfa_reg == sp_reg else "frame"
        return (f"the next row puts the CFA at the {base} pointer {nrow.cfa_off:+d}, where this "
                "instruction does not leave it: the call-frame information is not precise at "
                "every instruction here (tables precise only at calls, as Clang 14 emits on "
                "arm64; GCC's, and Clang's on x86-64, are precise everywhere)")
    return None


def _check_slots(machine: int, r: Row, n: Row, writes: set[int], saved_at: dict[int, set[int]],
                 restored: set[int]) -> str | None:
    for s, slot in enumerate(SLOTS[machine]):
        if machine == EM_X86_64 and s == RA_SLOT[machine]:
            continue                                   # pushed by the call, never moves
        a, b = r.saves[s], n.saves[s]
        if b and b != a and b not in saved_at.get(s, ()):
            return (f"the next row says {slot} is saved at CFA{b:+d}, but the caller's value "
                    "was not stored there")
        if a and not b and s not in restored:
            return (f"the next row says {slot} is back in its register, but it was not loaded "
                    f"back from CFA{a:+d}")
        if not a and s in writes and s not in restored:
            return f"writes {slot} while no row says where the caller's {slot} is saved"
    return None
