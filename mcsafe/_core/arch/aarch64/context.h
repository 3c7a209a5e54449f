/* arm64: reading and rewriting the interrupted context (as the kernel's
 * arch/arm64/mm/extable.c does with pt_regs). Registers x0..x30 are 0..30. */
#ifndef MCSAFE_ARCH_CONTEXT_H
#define MCSAFE_ARCH_CONTEXT_H

#include <signal.h>
#include <stdint.h>
#include <ucontext.h>

#define MCSAFE_ARCH_MACHINE 183  /* EM_AARCH64 */
#define MCSAFE_ARCH_NREGS   31

static inline uintptr_t arch_pc(const ucontext_t *uc)
{
    return (uintptr_t)uc->uc_mcontext.pc;
}

static inline void arch_set_pc(ucontext_t *uc, uintptr_t pc)
{
    uc->uc_mcontext.pc = pc;
}

static inline uintptr_t arch_reg(const ucontext_t *uc, unsigned reg)
{
    return (uintptr_t)uc->uc_mcontext.regs[reg];
}

static inline void arch_set_reg(ucontext_t *uc, unsigned reg, uintptr_t value)
{
    uc->uc_mcontext.regs[reg] = value;
}

#endif
