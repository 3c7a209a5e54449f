/* arm64: reading and rewriting the interrupted context (as the kernel's
 * arch/arm64/mm/extable.c does with pt_regs). Registers x0..x30 are 0..30. */
#ifndef MCSAFE_ARCH_CONTEXT_H
#define MCSAFE_ARCH_CONTEXT_H

#include <signal.h>
#include <stdint.h>
#include <ucontext.h>

#define MCSAFE_ARCH_MACHINE 183  /* EM_AARCH64 */
#define MCSAFE_ARCH_NREGS   31
#define MCSAFE_ARCH_SP      31   /* sp: not nameable (x0..x30 only), listed for the rule */

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

/* The registers a previous handler could change to make the faulting
 * instruction behave differently when it is retried: x0..x30, sp and pc. */
static inline uint64_t arch_context_hash(const ucontext_t *uc)
{
    uint64_t h = 1469598103934665603ull;
    for (int i = 0; i < 31; i++)
        h = (h ^ (uint64_t)uc->uc_mcontext.regs[i]) * 1099511628211ull;
    h = (h ^ (uint64_t)uc->uc_mcontext.sp) * 1099511628211ull;
    return (h ^ (uint64_t)uc->uc_mcontext.pc) * 1099511628211ull;
}

static inline uintptr_t arch_sp(const ucontext_t *uc)
{
    return (uintptr_t)uc->uc_mcontext.sp;
}

/* The ESR the kernel saved with the context (esr_context in __reserved), or 0. */
static inline uint64_t arch_esr(const ucontext_t *uc)
{
    const unsigned char *p = (const unsigned char *)uc->uc_mcontext.__reserved;
    const unsigned char *end = p + sizeof uc->uc_mcontext.__reserved;
    while (p + 8 <= end) {
        uint32_t magic = *(const uint32_t *)p, size = *(const uint32_t *)(p + 4);
        if (magic == 0 || size < 8 || p + size > end)
            break;
        if (magic == 0x45535201 && size >= 16)          /* ESR_MAGIC */
            return *(const uint64_t *)(p + 8);
        p += size;
    }
    return 0;
}

/* Whether the faulting access was a write: a data abort (EC 0x24/0x25) with WnR. */
static inline int arch_fault_is_write(const ucontext_t *uc)
{
    uint64_t esr = arch_esr(uc), ec = (esr >> 26) & 0x3f;
    return (ec == 0x24 || ec == 0x25) && (esr & (1u << 6));
}

/* Whether it was an instruction fetch: an instruction abort (EC 0x20/0x21). */
static inline int arch_fault_is_exec(const ucontext_t *uc)
{
    uint64_t ec = (arch_esr(uc) >> 26) & 0x3f;
    return ec == 0x20 || ec == 0x21;
}

#endif
