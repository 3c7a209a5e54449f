/* x86-64: the caller's registers from an unwind row (unwind.c), as the SysV
 * ABI defines them: rbx, rbp, r12-r15 callee-saved, the return address pushed
 * by the call, no callee-saved vector registers. */
#ifndef MCSAFE_ARCH_UNWIND_H
#define MCSAFE_ARCH_UNWIND_H

#include "context.h"

#define MCSAFE_UNWIND_SLOTS   7          /* rbx rbp r12 r13 r14 r15, return address */
#define MCSAFE_UNWIND_RA      6
/* The 128 bytes below the stack pointer belong to the function (the red zone):
 * the kernel never writes a signal frame there, and compilers leave a
 * register's "saved at CFA-16" rule in place after its pop, so a slot may lie
 * there in an epilogue. */
#define MCSAFE_UNWIND_REDZONE 128
#define MCSAFE_EFLAGS_DF      0x400

/* The interrupted stack pointer. */
static inline uintptr_t arch_unwind_sp(const ucontext_t *uc)
{
    return (uintptr_t)uc->uc_mcontext.gregs[REG_RSP];
}

static const int mcsafe_unwind_greg[MCSAFE_UNWIND_SLOTS - 1] = {
    REG_RBX, REG_RBP, REG_R12, REG_R13, REG_R14, REG_R15,
};

/* Write the caller's state: every saved slot, SP = cfa, PC = the return
 * address, `reg` = value; DF clear, as at any return. 0 if it cannot. */
static inline int arch_unwind(ucontext_t *uc, const int16_t *save, const uint64_t *val,
                              uintptr_t cfa, unsigned reg, int32_t value)
{
    if (!save[MCSAFE_UNWIND_RA])
        return 0;                        /* registry.c refuses such a row */
    greg_t *g = uc->uc_mcontext.gregs;
    for (int k = 0; k < MCSAFE_UNWIND_SLOTS - 1; k++)
        if (save[k])
            g[mcsafe_unwind_greg[k]] = (greg_t)val[k];
    g[REG_RSP] = (greg_t)cfa;
    g[REG_RIP] = (greg_t)val[MCSAFE_UNWIND_RA];
    g[REG_EFL] &= ~(greg_t)MCSAFE_EFLAGS_DF;
    g[mcsafe_greg_index[reg]] = (greg_t)(intptr_t)value;
    return 1;
}

#endif
