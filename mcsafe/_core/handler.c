/* handler.c: the SIGBUS/SIGSEGV handler that resumes faulting copies.
 *
 * Rules for everything reachable from mcsafe_on_fault (the handler runs in
 * exception context, on any thread, at any instruction):
 *
 *  1. Async-signal-safe only. No malloc or free, no locks, no stdio, no
 *     Python, no thread-local storage (its first touch may allocate), no
 *     function not on the POSIX async-signal-safe list. It reads only
 *     immutable tables reached through one atomic pointer (registry.c), the
 *     saved previous actions (written before the handler is installed), and
 *     the interrupted context.
 *  2. Claim only what can be attributed precisely. A fault is claimed when
 *     all hold: the kernel sent it (si_code > 0: never SI_USER, SI_TKILL,
 *     SI_QUEUE or any other user-sent code); it is synchronous (never
 *     BUS_MCEERR_AO, the kernel's notice of poison found in the background);
 *     the PC lies in a published entry; and, for a copy, the fault address
 *     lies in the part of the source or destination still to be copied
 *     (checked from the registers the entry's descriptor names).
 *  3. Forward the rest exactly as the previous handler expects: SA_SIGINFO or
 *     plain, with its sa_mask and SA_NODEFER honoured, SA_RESETHAND applied.
 *     If the previous action was SIG_DFL (or SIG_IGN, which the kernel
 *     overrides for synchronous faults), restore SIG_DFL and return, so the
 *     instruction faults again and the process dies of the original signal,
 *     with a core dump that shows the real context. A user-sent signal does not
 *     recur by itself, so it is re-raised (or dropped, if it was ignored).
 *     Asynchronous poison notices (BUS_MCEERR_AO) are recorded in a fixed
 *     ring (address, time) before they are forwarded.
 *  4. No nesting. The handler runs with SIGBUS and SIGSEGV blocked; a fault
 *     inside it is a bug, and the kernel then kills the process with that
 *     signal (a blocked synchronous fault cannot be delivered).
 *  5. One small switch on the handler kind, as the kernel's
 *     arch/x86/mm/extable.c fixup_exception(). The architecture-specific part
 *     (reading and writing registers) is in arch/<arch>/context.h.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "mcsafe_core.h"
#include "context.h"

#ifndef BUS_MCEERR_AO
#define BUS_MCEERR_AO 5
#endif

static struct sigaction previous[2];     /* [0] SIGSEGV, [1] SIGBUS */
static atomic_long forwarding[2];        /* thread id forwarding this signal, or 0 */
static atomic_ulong claimed;

/* The asynchronous-poison log: a ring of MCSAFE_AO_LOG slots. A writer takes a
 * ticket, fills its slot and publishes the ticket in `seq` last (release);
 * readers copy a slot and keep it only if `seq` was the same before and after. */
static struct mcsafe_ao_record ao_log[MCSAFE_AO_LOG];
static atomic_ulong ao_tickets;

static void log_ao(const siginfo_t *info)
{
    unsigned long ticket = atomic_fetch_add_explicit(&ao_tickets, 1, memory_order_relaxed);
    struct mcsafe_ao_record *r = &ao_log[ticket % MCSAFE_AO_LOG];
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    atomic_store_explicit(&r->seq, 0, memory_order_relaxed);
    atomic_thread_fence(memory_order_release);
    r->addr = (uint64_t)(uintptr_t)info->si_addr;
    r->sec = now.tv_sec;
    r->nsec = now.tv_nsec;
    atomic_store_explicit(&r->seq, ticket + 1, memory_order_release);
}

size_t mcsafe_ao_read(struct mcsafe_ao_record *out, size_t max, unsigned long *total)
{
    unsigned long end = atomic_load_explicit(&ao_tickets, memory_order_acquire);
    unsigned long start = end > MCSAFE_AO_LOG ? end - MCSAFE_AO_LOG : 0;
    size_t n = 0;
    for (unsigned long t = start; t < end && n < max; t++) {
        struct mcsafe_ao_record *r = &ao_log[t % MCSAFE_AO_LOG];
        unsigned long seq = atomic_load_explicit(&r->seq, memory_order_acquire);
        out[n].addr = r->addr;
        out[n].sec = r->sec;
        out[n].nsec = r->nsec;
        atomic_thread_fence(memory_order_acquire);
        if (seq == t + 1 && atomic_load_explicit(&r->seq, memory_order_relaxed) == seq)
            n++;                     /* skipped if overwritten or still being written */
    }
    *total = end;
    return n;
}

static struct sigaction *previous_for(int sig)
{
    return &previous[sig == SIGBUS];
}

static int in_range(uintptr_t addr, uintptr_t start, uintptr_t len)
{
    return addr - start < len;           /* unsigned: also false below start */
}

/* Decide for one entry; 1 if the context was rewritten to resume the copy. */
static int fixup(const struct mcsafe_module *m, const struct extable_entry *e, int sig,
                 const siginfo_t *info, ucontext_t *uc)
{
    struct extable_desc d = {0};
    if (e->data & EXTABLE_DATA_EXTENDED) {
        d = m->descs[EXTABLE_DATA_INDEX(e->data)];
    } else {
        d.kind = EXTABLE_DATA_TYPE(e->data);
        d.reg = EXTABLE_DATA_REG(e->data);
        d.imm = EXTABLE_DATA_IMM(e->data);
        d.src_reg = d.dst_reg = d.rec_reg = EXTABLE_NOREG;
    }
    uintptr_t addr = (uintptr_t)info->si_addr;
    uint32_t side = 0;

    switch (d.kind) {
    case EXTABLE_KIND_FIXUP:
        break;
    case EXTABLE_KIND_ERRNO:
        arch_set_reg(uc, d.reg, (uintptr_t)(intptr_t)d.imm);
        break;
    case EXTABLE_KIND_SHORT_COPY: {
        uintptr_t left = arch_reg(uc, d.reg);
        if (d.src_reg != EXTABLE_NOREG && (d.side & EXTABLE_SIDE_SRC)
            && in_range(addr, arch_reg(uc, d.src_reg), left))
            side = EXTABLE_SIDE_SRC;
        else if (d.dst_reg != EXTABLE_NOREG && (d.side & EXTABLE_SIDE_DST)
                 && in_range(addr, arch_reg(uc, d.dst_reg), left))
            side = EXTABLE_SIDE_DST;
        else if (d.src_reg != EXTABLE_NOREG || d.dst_reg != EXTABLE_NOREG)
            return 0;                    /* not in this copy's buffers: not ours */
        break;
    }
    default:
        return 0;
    }
    if (d.rec_reg != EXTABLE_NOREG) {
        struct mcsafe_fault *rec = (struct mcsafe_fault *)arch_reg(uc, d.rec_reg);
        rec->addr = addr;
        rec->side = side;
        rec->signo = sig;
        rec->code = info->si_code;
    }
    arch_set_pc(uc, m->base + e->fixup);
    atomic_fetch_add_explicit(&claimed, 1, memory_order_relaxed);
    return 1;
}

static int is_ao(int sig, const siginfo_t *info)
{
    return sig == SIGBUS && info->si_code == BUS_MCEERR_AO;
}

static void die_by_default(int sig, int recurs)
{
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigaction(sig, &dfl, NULL);
    if (!recurs)
        raise(sig);                      /* delivered, and fatal, when we return */
}

static void forward(int sig, siginfo_t *info, void *context)
{
    struct sigaction *prev = previous_for(sig);
    /* A synchronous fault happens again when we return; anything else does not. */
    int recurs = info->si_code > 0 && !is_ao(sig, info);

    if (prev->sa_flags & SA_SIGINFO ? prev->sa_sigaction == NULL
                                    : prev->sa_handler == SIG_DFL || prev->sa_handler == SIG_IGN) {
        if (!recurs && !(prev->sa_flags & SA_SIGINFO) && prev->sa_handler == SIG_IGN)
            return;                      /* an ignored signal that will not recur */
        die_by_default(sig, recurs);
        return;
    }
    /* A previous handler that re-raises into us (faulthandler restores the
     * handler it replaced, which may be ours, then raises) must not loop: a
     * signal raised by this very thread while it forwards the same signal goes
     * to SIG_DFL. Kernel faults always start a new forward, so a previous
     * handler that leaves by siglongjmp (cysignals) leaves nothing stuck. */
    long self = syscall(SYS_gettid);
    atomic_long *slot = &forwarding[sig == SIGBUS];
    if (info->si_code <= 0 && atomic_load_explicit(slot, memory_order_acquire) == self) {
        die_by_default(sig, 0);
        return;
    }
    atomic_store_explicit(slot, self, memory_order_release);

    /* Run the previous handler with the mask it asked for. */
    ucontext_t *uc = context;
    sigset_t mask = uc->uc_sigmask, saved;
    for (int s = 1; s < NSIG; s++)
        if (sigismember(&prev->sa_mask, s) == 1)
            sigaddset(&mask, s);
    if (prev->sa_flags & SA_NODEFER)
        sigdelset(&mask, sig);
    else
        sigaddset(&mask, sig);
    struct sigaction call = *prev;
    if (prev->sa_flags & SA_RESETHAND) {
        memset(prev, 0, sizeof *prev);
        prev->sa_handler = SIG_DFL;
    }
    pthread_sigmask(SIG_SETMASK, &mask, &saved);
    if (call.sa_flags & SA_SIGINFO)
        call.sa_sigaction(sig, info, context);
    else
        call.sa_handler(sig);
    pthread_sigmask(SIG_SETMASK, &saved, NULL);
    atomic_store_explicit(slot, 0, memory_order_release);
}

static void mcsafe_on_fault(int sig, siginfo_t *info, void *context)
{
    int saved_errno = errno;
    ucontext_t *uc = context;
    const struct mcsafe_module *m;
    const struct extable_entry *e;

    if (is_ao(sig, info)) {
        log_ao(info);                    /* never claimed: no instruction of ours faulted */
    } else if (info->si_code > 0 && (e = mcsafe_lookup(arch_pc(uc), &m)) != NULL
               && fixup(m, e, sig, info, uc)) {
        errno = saved_errno;
        return;
    }
    forward(sig, info, context);
    errno = saved_errno;
}

static int install_one(int sig)
{
    struct sigaction sa, old;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = mcsafe_on_fault;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    sigaddset(&sa.sa_mask, SIGBUS);
    sigaddset(&sa.sa_mask, SIGSEGV);
    /* Block both while swapping, so the handler never sees a half-saved action. */
    sigset_t block, saved;
    sigemptyset(&block);
    sigaddset(&block, sig);
    pthread_sigmask(SIG_BLOCK, &block, &saved);
    int rc = sigaction(sig, &sa, &old);
    if (rc == 0 && !((old.sa_flags & SA_SIGINFO) && old.sa_sigaction == mcsafe_on_fault))
        *previous_for(sig) = old;        /* re-installing never saves ourselves */
    pthread_sigmask(SIG_SETMASK, &saved, NULL);
    return rc;
}

int mcsafe_install(void)
{
    return install_one(SIGSEGV) || install_one(SIGBUS) ? -1 : 0;
}

int mcsafe_handler_active(void)
{
    struct sigaction cur;
    for (int i = 0; i < 2; i++) {
        int sig = i ? SIGBUS : SIGSEGV;
        if (sigaction(sig, NULL, &cur) != 0 || !(cur.sa_flags & SA_SIGINFO)
            || cur.sa_sigaction != mcsafe_on_fault)
            return 0;
    }
    return 1;
}

unsigned long mcsafe_claimed_count(void)
{
    return atomic_load_explicit(&claimed, memory_order_relaxed);
}
