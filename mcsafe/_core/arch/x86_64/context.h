/* x86-64: reading and rewriting the interrupted context (as the kernel's
 * arch/x86/mm/extable.c does with pt_regs). Register numbers are in
 * instruction-encoding order, as in extable.h. */
#ifndef MCSAFE_ARCH_CONTEXT_H
#define MCSAFE_ARCH_CONTEXT_H

#include <signal.h>
#include <stdint.h>
#include <ucontext.h>

#define MCSAFE_ARCH_MACHINE 62   /* EM_X86_64 */
#define MCSAFE_ARCH_NREGS   16
#define MCSAFE_ARCH_SP      4    /* rsp: never a register the handler writes */

static const int mcsafe_greg_index[MCSAFE_ARCH_NREGS] = {
    REG_RAX, REG_RCX, REG_RDX, REG_RBX, REG_RSP, REG_RBP, REG_RSI, REG_RDI,
    REG_R8, REG_R9, REG_R10, REG_R11, REG_R12, REG_R13, REG_R14, REG_R15,
};

static inline uintptr_t arch_pc(const ucontext_t *uc)
{
    return (uintptr_t)uc->uc_mcontext.gregs[REG_RIP];
}

static inline void arch_set_pc(ucontext_t *uc, uintptr_t pc)
{
    uc->uc_mcontext.gregs[REG_RIP] = (greg_t)pc;
}

static inline uintptr_t arch_reg(const ucontext_t *uc, unsigned reg)
{
    return (uintptr_t)uc->uc_mcontext.gregs[mcsafe_greg_index[reg]];
}

static inline void arch_set_reg(ucontext_t *uc, unsigned reg, uintptr_t value)
{
    uc->uc_mcontext.gregs[mcsafe_greg_index[reg]] = (greg_t)value;
}

/* The registers a previous handler could change to make the faulting
 * instruction behave differently when it is retried: the general registers,
 * the stack pointer and the PC (gregs REG_R8..REG_RIP). */
static inline uint64_t arch_context_hash(const ucontext_t *uc)
{
    uint64_t h = 1469598103934665603ull;
    for (int i = REG_R8; i <= REG_RIP; i++)
        h = (h ^ (uint64_t)uc->uc_mcontext.gregs[i]) * 1099511628211ull;
    return h;
}

static inline uintptr_t arch_sp(const ucontext_t *uc)
{
    return (uintptr_t)uc->uc_mcontext.gregs[REG_RSP];
}

/* Whether the faulting access was a write (page-fault error code bit 1). */
static inline int arch_fault_is_write(const ucontext_t *uc)
{
    return (uc->uc_mcontext.gregs[REG_TRAPNO] == 14) && (uc->uc_mcontext.gregs[REG_ERR] & 2);
}

/* Whether it was an instruction fetch (error code bit 4). */
static inline int arch_fault_is_exec(const ucontext_t *uc)
{
    return (uc->uc_mcontext.gregs[REG_TRAPNO] == 14) && (uc->uc_mcontext.gregs[REG_ERR] & 16);
}

#endif
