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

/* Whether a handler entered with this CFA (its stack pointer on entry) runs
 * on the signal frame the kernel built for (info, uc), rather than being
 * called by another handler: the kernel enters a handler with the stack
 * pointer at the frame, the siginfo first (arch/arm64/kernel/signal.c, struct
 * rt_sigframe: info, uc; qemu-user builds the same). */
static inline int arch_kernel_frame(const void *cfa, const siginfo_t *info, const void *uc)
{
    return uc != NULL && (const void *)info == cfa;
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

/* Whether the kernel's record of this thread's last fault, which it copies
 * into every signal frame (setup_sigframe: fault_address, and an esr_context
 * when the thread's fault_code is set), is the fault this signal reports. A
 * page fault records the (untagged) fault address and the ESR
 * (arch/arm64/mm/fault.c, set_thread_esr) just before it sends SIGSEGV or
 * SIGBUS with that address; a synchronous external abort and the other
 * aborts of arm64_notify_die record address 0 and the ESR. A signal that was
 * sent, not raised by a fault, finds the record of an earlier fault or none.
 * (qemu-user fills fault_address only for the faults it raises itself, not
 * for a SIGBUS it passes on from the host, and writes no ESR.) */
static inline int arch_fault_recorded(const ucontext_t *uc, const void *addr)
{
    const uintptr_t untag = ~((uintptr_t)0xff << 56);
    uintptr_t recorded = uc->uc_mcontext.fault_address & untag;
    if (recorded)
        return recorded == ((uintptr_t)addr & untag);
    return arch_esr(uc) != 0;
}

#endif
