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

/* Whether a handler entered with this CFA (the stack pointer before its
 * return address was pushed) runs on the signal frame the kernel built for
 * (info, uc), rather than being called by another handler: the kernel enters
 * a handler with the stack pointer at the frame's return address, the
 * ucontext right after it (arch/x86/include/asm/sigframe.h, struct
 * rt_sigframe: pretcode, uc, info). */
static inline int arch_kernel_frame(const void *cfa, const siginfo_t *info, const void *uc)
{
    (void)info;
    return uc != NULL && uc == cfa;
}

/* Whether the kernel's record of this thread's last fault, which it copies
 * into every signal frame (setup_sigcontext: trapno, err, cr2 from
 * current->thread), is the fault this signal reports. A page fault records
 * X86_TRAP_PF and the address (arch/x86/mm/fault.c, set_signal_archinfo)
 * just before it sends SIGSEGV or SIGBUS with that address; an alignment
 * check (17) and a control-protection fault (21) record their trap and send
 * no address (do_trap, do_user_cp_fault). A signal that was sent, not raised
 * by a fault (a child's exit signal), finds the record of an earlier fault or
 * none. */
static inline int arch_fault_recorded(const ucontext_t *uc, const void *addr)
{
    greg_t trap = uc->uc_mcontext.gregs[REG_TRAPNO];
    if (trap == 14)
        return (uintptr_t)uc->uc_mcontext.gregs[REG_CR2] == (uintptr_t)addr;
    return (trap == 17 || trap == 21) && addr == NULL;
}

#endif
