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
import re
from typing import Any, NamedTuple

from .elf import EM_AARCH64, EM_X86_64
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
#: Lite-decoded text that makes an instruction worth a detailed look.
_INTERESTING = {
    EM_X86_64: re.compile(r"\b(?:[re]?sp|spl|[re]?bp|bpl|[re]?bx|b[lh]|r1[2-5][dwb]?)\b"),
    EM_AARCH64: re.compile(r"\b(?:sp|wsp|[xw](?:19|2\d|30)|fp|lr|[bhsdqv](?:[89]|1[0-5]))\b"),
}
_X86_FLOW = {"ret", "call", "leave", "enter", "push", "pop", "pushfq", "popfq", "cpuid",
             "xchg", "ud2", "hlt", "int3", "syscall"}
_ARM_FLOW = {"ret", "bl", "blr", "b", "br", "brk", "udf", "hlt"}
_HEX = re.compile(r"#?(-?0x[0-9a-f]+|-?\d+)$")


class _Checker:
    def __init__(self, machine: int) -> None:
        import capstone

        self.machine = machine
        arch = (capstone.CS_ARCH_X86, capstone.CS_MODE_64) if machine == EM_X86_64 else \
            (capstone.CS_ARCH_ARM64, capstone.CS_MODE_ARM)
        self.lite = capstone.Cs(*arch)
        self.full = capstone.Cs(*arch)
        self.full.detail = True
        self.slot_of = SLOT_OF[machine]
        self.interesting = _INTERESTING[machine]
        self.flow = _X86_FLOW if machine == EM_X86_64 else _ARM_FLOW

    # -- decoding ----------------------------------------------------------------------

    def effect(self, code: bytes, start: int, address: int, size: int, mnemonic: str,
               op_str: str, consts: dict[str, int]) -> Effect:
        """The instruction's effect. ``consts`` holds the arm64 registers known to hold a
        constant (a frame size set with mov/movk before ``sub sp, sp, x12``), kept up to
        date in straight-line code."""
        branch = self._branch(mnemonic, op_str)
        if self.machine == EM_AARCH64:
            _track_constant(consts, mnemonic, op_str)
        if mnemonic not in self.flow and not self.interesting.search(op_str):
            return branch or Effect()
        off = address - start
        ins = next(self.full.disasm(code[off:off + size], address, 1))
        eff = self._x86(ins) if self.machine == EM_X86_64 else self._arm(ins, consts)
        if branch is not None:
            eff = eff._replace(ends=branch.ends or eff.ends, target=branch.target)
        return eff

    def _branch(self, mnemonic: str, op_str: str) -> Effect | None:
        """Direct branches: (ends, target); None for anything else."""
        m = _HEX.search(op_str)
        if self.machine == EM_X86_64:
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

    def _writes(self, ins: Any, skip: set[int] = set()) -> frozenset[int]:
        _, written = ins.regs_access()
        slots = {self.slot_of.get(ins.reg_name(r)) for r in written}
        return frozenset(s for s in slots if s is not None and s not in skip)

    def _x86(self, ins: Any) -> Effect:
        from capstone import x86

        m, ops = ins.mnemonic, ins.operands
        name = ins.reg_name

        def reg(i: int) -> str | None:
            return name(ops[i].reg) if len(ops) > i and ops[i].type == x86.X86_OP_REG else None

        def imm(i: int) -> int | None:
            return ops[i].imm if len(ops) > i and ops[i].type == x86.X86_OP_IMM else None

        def mem(i: int) -> tuple[str, int] | None:
            if len(ops) <= i or ops[i].type != x86.X86_OP_MEM or ops[i].mem.index:
                return None
            base = name(ops[i].mem.base) if ops[i].mem.base else None
            return {"rsp": ("sp", ops[i].mem.disp), "rbp": ("fp", ops[i].mem.disp)}.get(
                base or "")

        slot = self.slot_of.get(reg(0) or "")
        if m == "push":
            stores = ((slot, "sp", -8),) if slot is not None and reg(0) in SLOTS[EM_X86_64] \
                else ()
            return Effect(sp=("add", -8), stores=stores)
        if m == "pushfq":
            return Effect(sp=("add", -8))
        if m in ("pop", "popfq"):
            if m == "pop" and reg(0) is None:
                return Effect(sp=("?", 0))
            loads = ((slot, "sp", 0),) if slot is not None else ()
            fp = ("load", 0) if reg(0) == "rbp" else None
            return Effect(sp=("add", 8), fp=fp, loads=loads,
                          writes=frozenset() if slot is not None or m == "popfq"
                          else self._writes(ins))
        if m == "leave":                      # mov rsp, rbp; pop rbp
            return Effect(sp=("fp", 8), fp=("load", 0), loads=((1, "fp", 0),))
        if m in ("call", "ret", "jmp") or m.startswith("j"):
            return Effect()                   # a call's push and the callee's ret cancel
        if reg(0) == "rsp":
            if m in ("sub", "add") and imm(1) is not None:
                return Effect(sp=("add", imm(1) if m == "add" else -imm(1)))  # type: ignore
            where = mem(1)
            if m == "lea" and where is not None:
                return Effect(sp=("add", where[1]) if where[0] == "sp" else ("fp", where[1]))
            if m == "mov" and reg(1) == "rbp":
                return Effect(sp=("fp", 0))
            return Effect(sp=("?", 0))
        if reg(0) == "rbp":
            where = mem(1)
            if m == "mov" and reg(1) == "rsp":
                return Effect(fp=("sp", 0))
            if m == "lea" and where is not None and where[0] == "sp":
                return Effect(fp=("sp", where[1]))
            if m == "mov" and where is not None:
                return Effect(fp=("load", 0), loads=((1, *where),))
            return Effect(fp=("?", 0), writes=frozenset({1}))
        if m == "mov" and slot is not None and mem(1) is not None:
            return Effect(loads=((slot, *mem(1)),))      # type: ignore[misc]
        if m == "mov" and mem(0) is not None and reg(1) is not None \
                and self.slot_of.get(reg(1) or "") is not None and reg(1) in SLOTS[EM_X86_64]:
            return Effect(stores=((self.slot_of[reg(1) or ""], *mem(0)),))   # type: ignore
        return Effect(writes=self._writes(ins), sp=("?", 0) if "rsp" in
                      {name(r) for r in ins.regs_access()[1]} else None)

    def _arm(self, ins: Any, consts: dict[str, int]) -> Effect:
        from capstone import arm64

        m, ops = ins.mnemonic, ins.operands
        name = ins.reg_name

        def reg(i: int) -> str | None:
            return name(ops[i].reg) if len(ops) > i and ops[i].type == arm64.ARM64_OP_REG \
                else None

        def imm(i: int) -> int | None:
            if len(ops) <= i or ops[i].type != arm64.ARM64_OP_IMM:
                return None
            shift = ops[i].shift.value if ops[i].shift.type else 0
            return ops[i].imm << shift

        mems = [o for o in ops if o.type == arm64.ARM64_OP_MEM]
        if m in ("stp", "ldp", "str", "ldr", "stur", "ldur") and mems:
            mo = mems[0].mem
            base = {"sp": "sp", "fp": "fp", "x29": "fp"}.get(name(mo.base) if mo.base else "")
            regs = [reg(i) for i in range(len(ops) - len(mems) - (1 if ins.post_index else 0))]
            width = 16 if any(r and r.startswith("q") for r in regs) else 8
            post = ops[-1].imm if ins.post_index else 0
            disp = mo.disp
            sp = None
            if base == "sp" and ins.writeback:
                sp = ("add", post if ins.post_index else disp)
                if ins.post_index:
                    disp = 0
            if base is None or mo.index:
                return Effect(writes=self._writes(ins)) if m.startswith("ld") else Effect()
            pairs = [(self.slot_of.get(r or ""), disp + width * k) for k, r in enumerate(regs)]
            if m.startswith("st"):
                return Effect(sp=sp, stores=tuple((s, base, d) for s, d in pairs
                                                  if s is not None))
            fp = ("load", 0) if any(r in ("fp", "x29") for r in regs) else None
            return Effect(sp=sp, fp=fp, loads=tuple((s, base, d) for s, d in pairs
                                                    if s is not None))
        if m in ("bl", "blr"):
            return Effect(writes=frozenset({RA_SLOT[EM_AARCH64]}))
        dst = reg(0)
        if dst == "sp":
            src = reg(1)
            amount = imm(2) if imm(2) is not None else consts.get(reg(2) or "")
            if m in ("add", "sub") and src in ("sp", "fp", "x29") and amount is not None:
                d = amount * (1 if m == "add" else -1)
                return Effect(sp=("add", d) if src == "sp" else ("fp", d))
            if m == "mov" and src in ("fp", "x29"):
                return Effect(sp=("fp", 0))
            return Effect(sp=("?", 0))
        if dst in ("fp", "x29"):
            src = reg(1)
            if m == "mov" and src == "sp":
                return Effect(fp=("sp", 0))
            if m in ("add", "sub") and src == "sp" and imm(2) is not None:
                return Effect(fp=("sp", imm(2) if m == "add" else -imm(2)))  # type: ignore
            return Effect(fp=("?", 0), writes=frozenset({FP_SLOT[EM_AARCH64]}))
        return Effect(writes=self._writes(ins))


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


def check(machine: int, code: bytes, start: int, rows: list[tuple[int, Row]]) -> None:
    """Refuse (Unproved) unless the rows hold at every instruction of code at start.

    The stack and frame pointers are tracked relative to the CFA over the function's
    control flow (direct branches; an instruction reached only by an indirect jump,
    a jump table's case, takes that jump's state): a row resting on one of them says
    where it is, instructions move them, paths that disagree make it unknown. Then
    one pass checks each step, tracking where each slot's register was stored while
    it held the caller's value and which registers were loaded back from their slots.
    """
    chk = _Checker(machine)
    sp_reg, fp_reg, fp_slot = SP_REG[machine], 5 if machine == EM_X86_64 else 29, FP_SLOT[machine]
    ips = [ip for ip, _ in rows]
    end = start + len(code)

    def row_at(address: int) -> Row:
        return rows[bisect.bisect_right(ips, address) - 1][1]

    decoded = list(chk.lite.disasm_lite(code, start))
    covered = sum(size for _, size, _, _ in decoded)
    if covered != len(code):
        raise Unproved(f"at {start + covered:#x}: bytes that do not decode as instructions")
    insns = []
    consts: dict[str, int] = {}
    for address, size, mnemonic, op_str in decoded:
        eff = Effect() if mnemonic == "nop" else \
            chk.effect(code, start, address, size, mnemonic, op_str, consts)
        if eff.ends:
            consts.clear()
        if eff.fp is not None and eff.fp[0] != "load":
            eff = eff._replace(writes=eff.writes | {fp_slot})
        insns.append((address, size, f"{mnemonic} {op_str}".strip(), eff))
    at = {a: i for i, (a, *_) in enumerate(insns)}

    def step(i: int, sp: int | None, fp: int | None) -> tuple[int | None, int | None]:
        """(sp, fp) after instruction i, given them before (a row overrides its base)."""
        r = row_at(insns[i][0])
        eff = insns[i][3]
        if r.cfa_reg == sp_reg:
            sp = -r.cfa_off
        elif r.cfa_reg == fp_reg:
            fp = -r.cfa_off
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

    succs: list[list[int]] = [[] for _ in insns]
    for i, (_a, _s, text, eff) in enumerate(insns):
        if not eff.ends and i + 1 < len(insns):
            succs[i].append(i + 1)
        if eff.target is not None and eff.target in at:
            succs[i].append(at[eff.target])
    reached = {j for js in succs for j in js} | {0}
    orphans = [i for i in range(len(insns)) if i not in reached]
    for i, (_a, _s, text, eff) in enumerate(insns):
        if eff.ends and eff.target is None and not text.startswith(("ret", "ud2", "hlt",
                                                                   "int3", "brk", "udf")):
            succs[i] += orphans                  # an indirect jump: a jump table's cases
    state_in: list[Any] = [(_UNVISITED, _UNVISITED)] * len(insns)
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
    for i, (address, size, text, eff) in enumerate(insns):
        where = f"at {address:#x} ({text})"
        r = row_at(address)
        if r.cfa_reg not in (sp_reg, fp_reg):
            raise Unproved(f"{where}: the CFA rests on a register that is neither the stack "
                           "nor the frame pointer")
        if i in orphans and not any(i in js for js in succs):
            restored = set()
        sp_in, fp_in = (None if v is _UNVISITED else v for v in state_in[i])
        sp = -r.cfa_off if r.cfa_reg == sp_reg else sp_in
        fp = -r.cfa_off if r.cfa_reg == fp_reg else fp_in
        if text.startswith("nop"):
            # No effect, and no fault can happen at it: padding after a return may carry
            # the row before it while falling into the next block's.
            continue

        def rel(base: str, disp: int) -> int | None:
            b = sp if base == "sp" else fp
            return None if b is None else b + disp

        if eff.target is not None and eff.target in at:
            t = row_at(eff.target)
            if t.cfa_reg == r.cfa_reg and t.cfa_off != r.cfa_off:
                raise Unproved(f"{where}: jumps to {eff.target:#x}, where the rows put the "
                               "CFA elsewhere")
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
        nxt = address + size
        last = nxt >= end or eff.ends
        n = r if last else row_at(nxt)
        _check_slots(machine, r, n, writes, saved_at, restored, where)
        if last:
            restored = set()
            continue
        new_sp, new_fp = step(i, sp_in, fp_in)
        need = new_sp if n.cfa_reg == sp_reg else new_fp
        if need is None or need != -n.cfa_off:
            base = "stack" if n.cfa_reg == sp_reg else "frame"
            raise Unproved(f"{where}: the next row puts the CFA at the {base} pointer "
                           f"{n.cfa_off:+d}, where this instruction does not leave it: the "
                           "call-frame information is not precise at every instruction "
                           "(synchronous unwind tables, as Clang 14 emits on arm64; GCC's "
                           "and Clang's x86-64 defaults, -fasynchronous-unwind-tables, are)")


def _check_slots(machine: int, r: Row, n: Row, writes: set[int], saved_at: dict[int, set[int]],
                 restored: set[int], where: str) -> None:
    for s, slot in enumerate(SLOTS[machine]):
        if machine == EM_X86_64 and s == RA_SLOT[machine]:
            continue                                   # pushed by the call, never moves
        a, b = r.saves[s], n.saves[s]
        if b and b != a and b not in saved_at.get(s, ()):
            raise Unproved(f"{where}: the next row says {slot} is saved at CFA{b:+d}, but "
                           "the caller's value was not stored there")
        if a and not b and s not in restored:
            raise Unproved(f"{where}: the next row says {slot} is back in its register, but "
                           f"it was not loaded back from CFA{a:+d}")
        if not a and s in writes and s not in restored:
            raise Unproved(f"{where}: writes {slot} while no row says where the caller's "
                           f"{slot} is saved")
