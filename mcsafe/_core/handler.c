/* handler.c: the SIGBUS/SIGSEGV handler that resumes faulting copies, and
 * forwards everything else exactly as the process without mcsafe would have
 * handled it.
 *
 * Chaining (docs/HANDLER.md has the argument in full). Every install() is
 * its own link of the chain: a *generation*, one of MCSAFE_GENERATIONS entry
 * points on_fault_<g>, with its own previous action per signal, copied once
 * when the generation is taken and never changed. install() does nothing if
 * one of our entries is installed; else it reuses the generation whose
 * previous action equals the one installed now, or takes a new one, and
 * installs that entry. A handler installed after mcsafe saves the entry it
 * replaced, so each place mcsafe holds in a chain forwards to what was below
 * it *there*: whatever another handler does with its saved action (call it,
 * restore it and re-raise, restore it and return), it reaches what it would
 * have reached without mcsafe, one generation down. Nothing counts faults,
 * marks stacks or probes pages to cut loops, because the chain has none
 * that the process without mcsafe would not have; the one guard below (rule
 * 4) is for a chain that another handler bent into a cycle.
 *
 * Rules for everything reachable from the entries (they run in exception
 * context, on any thread, at any instruction):
 *
 *  1. Async-signal-safe only. No malloc or free, no locks, no stdio, no
 *     Python, no thread-local storage (its first touch may allocate), no
 *     function not on the POSIX async-signal-safe list (the extension is
 *     linked with -z now, so no call enters the dynamic linker's lazy
 *     binding). It reads immutable tables reached through one atomic pointer
 *     (registry.c), each generation's previous action through one atomic
 *     pointer (an immutable copy, never freed), and the interrupted context.
 *     All signals are blocked while an entry the kernel delivered to runs
 *     (its sa_mask), so nothing can interrupt a table lookup and leave by
 *     siglongjmp with the readers count raised; an entry called by another
 *     handler, and mcsafe_handle_fault called from an embedder's, run with
 *     that handler's mask and block them themselves around the lookup.
 *  2. Claim only what can be attributed precisely. A fault is claimed when
 *     all hold: the kernel sent it (si_code > 0: never SI_USER, SI_TKILL,
 *     SI_QUEUE or any other user-sent code); it is not BUS_MCEERR_AO (the
 *     kernel's notice of poison found in the background); the PC lies in a
 *     published entry; and, for a copy, the fault address lies in the part
 *     of the source or destination still to be copied (checked from the
 *     registers the entry's descriptor names, without wrapping past the top
 *     of the address space). Any generation claims: a handler installed
 *     above mcsafe that chains to it has its copies' faults resumed.
 *     mcsafe_handle_fault is this decision alone, for runtimes that own the
 *     handler.
 *  3. Forward the rest to the generation's previous action as the kernel
 *     would have delivered it, or, when another handler called the entry as
 *     its saved action, as that call would have reached it. An entry knows
 *     which (arch_kernel_frame, installed): delivered, it runs on the frame
 *     the kernel built and is the installed action. SIG_DFL (whatever SA_SIGINFO says): install
 *     SIG_DFL, queue the original siginfo to this thread and return; every
 *     signal is blocked until the entry returns, so the process dies of it
 *     at the interrupted instruction, whether or not a fault would recur.
 *     SIG_IGN: a signal the kernel forces (a fault: the thread's fault
 *     record names it, arch/<arch>/context.h; or SI_KERNEL) dies as SIG_DFL,
 *     as the kernel forces SIG_DFL on an ignored fault; anything else is
 *     dropped if delivered, and if called, SIG_IGN is restored in the
 *     caller's place, as the caller does with a saved SIG_IGN. A handler:
 *     delivered, called with the mask the kernel would have set had it been
 *     installed itself (interrupted mask, its sa_mask, the signal unless
 *     SA_NODEFER); called, with the caller's mask; SA_SIGINFO or plain.
 *     SA_RESETHAND: delivered, the generation is replaced by its reset form's
 *     (one sigaction exchange, as the kernel resets the action on delivery),
 *     so exactly one delivery calls it; a call spends nothing. Then return:
 *     a handler that returns without fixing a fault is called again, as it
 *     would be without mcsafe. Each entry is installed with its previous
 *     handler's SA_ONSTACK and SA_RESTART, so the kernel picks the stack and
 *     restarts system calls as it would have for that handler.
 *  4. A chain another handler bent into a cycle (it saved one of our
 *     entries and was saved by the same generation, as a handler that
 *     re-installs itself over mcsafe does) would recurse until the stack
 *     overflows: while a generation forwards a delivery, it marks the
 *     delivery's context (uc_link, which the kernel zeroes in every frame
 *     and never reads); the same delivery arriving back at that generation
 *     ends as SIG_DFL. The mark lives and dies with the frame, so a handler
 *     that leaves by siglongjmp leaves nothing behind.
 *  5. No nesting of mcsafe itself. A fault inside an entry is a bug, and the
 *     kernel then kills the process with that signal (a blocked synchronous
 *     fault cannot be delivered). The same holds for any thread that blocks
 *     SIGBUS or SIGSEGV: it cannot recover a copy (mcsafe_faults_blocked).
 *  6. One small switch on the handler kind, as the kernel's
 *     arch/x86/mm/extable.c fixup_exception(). The architecture-specific part
 *     (registers, the fault record) is in arch/<arch>/context.h; the
 *     `unwind` kind's restore of the caller's frame is unwind.c, whose own
 *     rules say which loads it makes from the interrupted stack.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <link.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "mcsafe_core.h"
#include "context.h"

#ifndef BUS_MCEERR_AO
#define BUS_MCEERR_AO 5
#endif

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

/* [start, start + len) without wrapping past the top of the address space. */
static int in_range(uintptr_t addr, uintptr_t start, uintptr_t len)
{
    return addr >= start && addr - start < len;
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
    case EXTABLE_KIND_UNWIND:
        /* Returns to the function's caller (unwind.c): no landing pad, and no fault
         * record (registry.c refuses one: the function's registers are gone). */
        if (!mcsafe_unwind(m, e, d.reg, d.imm, uc))
            return 0;
        atomic_fetch_add_explicit(&claimed, 1, memory_order_relaxed);
        return 1;
    case EXTABLE_KIND_SHORT_COPY: {
        /* registry.c refuses a short_copy that names neither buffer */
        uintptr_t left = arch_reg(uc, d.reg);
        if (d.src_reg != EXTABLE_NOREG && (d.side & EXTABLE_SIDE_SRC)
            && in_range(addr, arch_reg(uc, d.src_reg), left))
            side = EXTABLE_SIDE_SRC;
        else if (d.dst_reg != EXTABLE_NOREG && (d.side & EXTABLE_SIDE_DST)
                 && in_range(addr, arch_reg(uc, d.dst_reg), left))
            side = EXTABLE_SIDE_DST;
        else
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

/* Rule 2, with every signal blocked by the caller. */
static int claim(int sig, siginfo_t *info, void *context)
{
    const struct mcsafe_module *m;
    const struct extable_entry *e;
    if ((sig != SIGBUS && sig != SIGSEGV) || info == NULL || context == NULL
        || info->si_code <= 0 || is_ao(sig, info))
        return 0;
    ucontext_t *uc = context;
    mcsafe_readers_enter();
    int done = (e = mcsafe_lookup(arch_pc(uc), &m)) != NULL && fixup(m, e, sig, info, uc);
    mcsafe_readers_leave();
    return done;
}

int mcsafe_handle_fault(int sig, siginfo_t *info, void *context)
{
    sigset_t all, mask;
    int saved_errno = errno;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &mask);
    int done = claim(sig, info, context);
    pthread_sigmask(SIG_SETMASK, &mask, NULL);
    errno = saved_errno;
    return done;
}

/* The generations of each signal, [0] SIGSEGV and [1] SIGBUS. `previous` is
 * published once, whole, before the entry is installed, and never changes;
 * `reset` is written before it. */
struct generation {
    _Atomic(const struct sigaction *) previous;
    int reset;                           /* SA_RESETHAND: the generation of the action
                                            as the kernel leaves it once delivered */
};
static struct generation generations[2][MCSAFE_GENERATIONS];
static int taken[2];                     /* under install_lock */
static pthread_mutex_t install_lock = PTHREAD_MUTEX_INITIALIZER;

/* The entry points, on_fault_<g> for g = 8 * b + i. Each passes on its CFA:
 * whether it runs on the frame the kernel built tells a delivery from a call. */
static void on_fault(int g, int sig, siginfo_t *info, void *context, const void *cfa);
#define ENTRY(b, i)                                                             \
    static void on_fault_##b##_##i(int sig, siginfo_t *info, void *context)     \
    {                                                                           \
        on_fault(8 * b + i, sig, info, context, __builtin_dwarf_cfa());         \
    }
#define EIGHT(X, b) X(b, 0) X(b, 1) X(b, 2) X(b, 3) X(b, 4) X(b, 5) X(b, 6) X(b, 7)
#define ALL(X) EIGHT(X, 0) EIGHT(X, 1) EIGHT(X, 2) EIGHT(X, 3) EIGHT(X, 4) EIGHT(X, 5)
ALL(ENTRY)
#define NAME(b, i) on_fault_##b##_##i,
static void (*const entries[])(int, siginfo_t *, void *) = {ALL(NAME)};
_Static_assert(sizeof entries / sizeof entries[0] == MCSAFE_GENERATIONS,
               "one entry point per generation");

static int is_entry(const struct sigaction *sa, int g)
{
    return (sa->sa_flags & SA_SIGINFO) && sa->sa_sigaction == entries[g];
}

/* Generation g's entry, with the flags that make the kernel deliver to it as
 * it would have delivered to `prev` (rule 3). */
static struct sigaction entry_action(int g, const struct sigaction *prev)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = entries[g];
    sigfillset(&sa.sa_mask);
    int handler = prev->sa_handler != SIG_DFL && prev->sa_handler != SIG_IGN;
    sa.sa_flags = SA_SIGINFO | (handler ? prev->sa_flags & (SA_ONSTACK | SA_RESTART)
                                        : SA_ONSTACK | SA_RESTART);
    return sa;
}

/* Rule 4's mark in uc_link: a tag no pointer has, and one bit per generation. */
#define FORWARD_TAG (0x4d43ull << 48)
#define FORWARD_TAG_MASK (0xffffull << 48)

/* End the process by the signal as if mcsafe had never been installed:
 * SIG_DFL, and the original siginfo queued to this thread. It is delivered
 * once the signal is unblocked (when the entry returns), at the interrupted
 * instruction with its registers: the core dump shows the real context. */
static void die_by_default(int sig, const siginfo_t *info)
{
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigaction(sig, &dfl, NULL);
    siginfo_t again;
    if (info)
        again = *info;
    if (!info || syscall(SYS_rt_tgsigqueueinfo, getpid(), syscall(SYS_gettid), sig, &again) != 0)
        raise(sig);
}

/* Whether the kernel forces this signal on the thread even where it is
 * ignored: a fault (the thread's fault record is this one) or SI_KERNEL.
 * A child's exit signal (CLD_EXITED, _KILLED, _DUMPED) shares the fault codes'
 * numbers (BUS_ADRALN, _ADRERR, _OBJERR); only the record tells them apart.
 * (F_SETSIG sends SIGBUS and SIGSEGV with SI_SIGIO, not POLL_*: fs/fcntl.c.) */
static int forced(const siginfo_t *info, const ucontext_t *uc)
{
    if (!info || info->si_code <= 0)
        return 0;
    return info->si_code == SI_KERNEL || (uc && arch_fault_recorded(uc, info->si_addr));
}

/* Whether generation g's entry is the installed action. */
static int installed(int g, int sig)
{
    struct sigaction cur;
    return sigaction(sig, NULL, &cur) == 0 && is_entry(&cur, g);
}

/* The kernel delivered to g, whose previous action is one-shot (SA_RESETHAND).
 * It would have reset that action to SIG_DFL as it delivered it: install the
 * generation standing for the action so reset in g's place, with one exchange,
 * so that exactly one delivery calls the handler. 1 if this one does, -1 if
 * another delivery reset it first, 0 if g is not installed (its entry was
 * called by a handler, on the kernel's frame: a tail call). */
static int reset_one_shot(int g, int sig, const struct generation *gen)
{
    struct sigaction cur;
    if (sigaction(sig, NULL, &cur) != 0)
        return 0;
    if (is_entry(&cur, gen->reset))
        return -1;
    if (!is_entry(&cur, g))
        return 0;
    const struct sigaction *dfl = atomic_load_explicit(
        &generations[sig == SIGBUS][gen->reset].previous, memory_order_acquire);
    struct sigaction reset = entry_action(gen->reset, dfl);
    if (sigaction(sig, &reset, &cur) != 0)
        return 0;
    if (is_entry(&cur, g))
        return 1;
    if (is_entry(&cur, gen->reset))
        return -1;
    sigaction(sig, &cur, NULL);          /* installed meanwhile by another thread */
    return 0;
}

/* Run the previous handler (rule 3): delivered, with the mask the kernel would
 * have set for it; called by another handler, with that handler's mask, as a
 * call runs. */
static void call_previous(int g, const struct sigaction *prev, int sig, siginfo_t *info,
                          ucontext_t *uc, int delivered)
{
    sigset_t mask, saved;
    void *link = NULL;
    if (uc) {
        link = uc->uc_link;
        uintptr_t mark = ((uintptr_t)link & FORWARD_TAG_MASK) == FORWARD_TAG ? (uintptr_t)link
                                                                            : FORWARD_TAG;
        uc->uc_link = (void *)(mark | 1ull << g);
    }
    if (delivered) {
        mask = uc->uc_sigmask;
        for (int s = 1; s < NSIG; s++)
            if (sigismember(&prev->sa_mask, s) == 1)
                sigaddset(&mask, s);
        if (!(prev->sa_flags & SA_NODEFER))
            sigaddset(&mask, sig);
        pthread_sigmask(SIG_SETMASK, &mask, &saved);
    }
    if (prev->sa_flags & SA_SIGINFO)
        prev->sa_sigaction(sig, info, uc);
    else
        prev->sa_handler(sig);
    if (delivered)
        pthread_sigmask(SIG_SETMASK, &saved, NULL);
    if (uc)
        uc->uc_link = link;
}

/* Rule 3. `kernel`: the entry runs on the frame the kernel built for this
 * signal; it was delivered to it if its entry is also the installed action. */
static void forward(int g, int sig, siginfo_t *info, ucontext_t *uc, int kernel)
{
    struct generation *gen = &generations[sig == SIGBUS][g];
    const struct sigaction *prev = atomic_load_explicit(&gen->previous, memory_order_acquire);
    uintptr_t link = uc ? (uintptr_t)uc->uc_link : 0;
    if (!prev || prev->sa_handler == SIG_DFL
        || ((link & FORWARD_TAG_MASK) == FORWARD_TAG && (link & 1ull << g))) {
        die_by_default(sig, info);
    } else if (prev->sa_handler == SIG_IGN) {
        if (forced(info, uc))
            die_by_default(sig, info);
        else if (!kernel || !installed(g, sig))
            sigaction(sig, prev, NULL);  /* called as a saved SIG_IGN: restored, as the
                                            handler that saved it does with one */
    } else {
        int delivered = !kernel ? 0
                        : prev->sa_flags & SA_RESETHAND ? reset_one_shot(g, sig, gen)
                                                        : installed(g, sig);
        if (delivered < 0)
            die_by_default(sig, info);
        else
            call_previous(g, prev, sig, info, uc, delivered);
    }
}

/* `cfa`: the entry's canonical frame address, the stack pointer before its
 * return address was pushed (x86-64) or as it was entered (arm64). A call by
 * a handler blocks every signal around the lookup itself, as an embedder's
 * call to mcsafe_handle_fault does (rule 1). */
static __attribute__((noinline)) void on_fault(int g, int sig, siginfo_t *info, void *context,
                                              const void *cfa)
{
    int saved_errno = errno;
    if (sig != SIGBUS && sig != SIGSEGV)
        return;
    int kernel = arch_kernel_frame(cfa, info, context);
    if (info && is_ao(sig, info))
        log_ao(info);                    /* never claimed: no instruction of ours faulted */
    else if (kernel ? claim(sig, info, context) : mcsafe_handle_fault(sig, info, context))
        return;
    forward(g, sig, info, context, kernel);
    errno = saved_errno;
}

/* The generation whose entry `sa` is, if that generation is in use for sig. */
static int generation_of(int sig, const struct sigaction *sa)
{
    if (!(sa->sa_flags & SA_SIGINFO))
        return -1;
    for (int g = 0; g < MCSAFE_GENERATIONS; g++)
        if (sa->sa_sigaction == entries[g])
            return atomic_load(&generations[sig == SIGBUS][g].previous) ? g : -1;
    return -1;
}

static int same_action(const struct sigaction *a, const struct sigaction *b)
{
    if (a->sa_handler != b->sa_handler || a->sa_flags != b->sa_flags)
        return 0;
    for (int s = 1; s < NSIG; s++)
        if (sigismember(&a->sa_mask, s) != sigismember(&b->sa_mask, s))
            return 0;
    return 1;
}

/* Under install_lock: the generation whose previous action is `now`, reused if
 * one exists, else a new one; -1 with errno. A one-shot handler's generation
 * comes with the generation of that action as the kernel leaves it once it has
 * delivered it (SIG_DFL, its flags and mask kept), taken first. */
static int generation_for(int sig, const struct sigaction *now)
{
    int s = sig == SIGBUS;
    for (int g = 0; g < taken[s]; g++)
        if (same_action(atomic_load(&generations[s][g].previous), now))
            return g;
    int reset = -1;
    if (now->sa_handler != SIG_DFL && now->sa_handler != SIG_IGN
        && (now->sa_flags & SA_RESETHAND)) {
        struct sigaction dfl = *now;
        dfl.sa_handler = SIG_DFL;
        if ((reset = generation_for(sig, &dfl)) < 0)
            return -1;
    }
    if (taken[s] == MCSAFE_GENERATIONS) {
        errno = ENOSPC;
        return -1;
    }
    struct sigaction *copy = malloc(sizeof *copy);
    if (!copy) {
        errno = ENOMEM;
        return -1;
    }
    *copy = *now;
    generations[s][taken[s]].reset = reset;
    atomic_store_explicit(&generations[s][taken[s]].previous, copy, memory_order_release);
    return taken[s]++;
}

static int install_one(int sig)
{
    struct sigaction front, mine, replaced;
    memset(&front, 0, sizeof front);
    if (sigaction(sig, NULL, &front) != 0)
        return -1;
    /* Should another thread install a handler between our two calls, we are
     * in front of that one instead: take a generation for it too. */
    for (int tries = 0; tries < 16; tries++) {
        if (generation_of(sig, &front) >= 0)
            return 0;
        int g = generation_for(sig, &front);
        if (g < 0)
            return -1;
        mine = entry_action(g, &front);
        memset(&replaced, 0, sizeof replaced);
        if (sigaction(sig, &mine, &replaced) != 0)
            return -1;
        if (same_action(&replaced, &front))
            return 0;
        front = replaced;
    }
    errno = EAGAIN;
    return -1;
}

static void reset_in_child(void)
{
    pthread_mutex_init(&install_lock, NULL);
}

__attribute__((constructor)) static void handler_init(void)
{
    pthread_atfork(NULL, NULL, reset_in_child);
}

int mcsafe_install(void)
{
    pthread_mutex_lock(&install_lock);
    int rc = install_one(SIGSEGV) || install_one(SIGBUS) ? -1 : 0;
    int saved_errno = errno;
    pthread_mutex_unlock(&install_lock);
    errno = saved_errno;
    return rc;
}

int mcsafe_in_front(int sig, uintptr_t *handler)
{
    struct sigaction cur;
    memset(&cur, 0, sizeof cur);
    if (sigaction(sig, NULL, &cur) != 0)
        return 0;
    if (handler)
        *handler = (uintptr_t)cur.sa_handler;
    return generation_of(sig, &cur) >= 0;
}

int mcsafe_handler_active(void)
{
    return mcsafe_in_front(SIGSEGV, NULL) && mcsafe_in_front(SIGBUS, NULL);
}

int mcsafe_generations_taken(int sig)
{
    pthread_mutex_lock(&install_lock);
    int n = taken[sig == SIGBUS];
    pthread_mutex_unlock(&install_lock);
    return n;
}

int mcsafe_handler_origin(uintptr_t address, const char **file, const char **symbol,
                          uintptr_t *vaddr)
{
    Dl_info info;
    struct link_map *map = NULL;
    if (!dladdr1((void *)address, &info, (void **)&map, RTLD_DL_LINKMAP) || !map)
        return 0;
    *file = info.dli_fname ? info.dli_fname : "";
    *symbol = info.dli_sname && (uintptr_t)info.dli_saddr == address ? info.dli_sname : NULL;
    *vaddr = address - map->l_addr;
    return 1;
}

int mcsafe_faults_blocked(void)
{
    sigset_t cur;
    return pthread_sigmask(SIG_BLOCK, NULL, &cur) == 0
           && (sigismember(&cur, SIGBUS) == 1 || sigismember(&cur, SIGSEGV) == 1);
}

unsigned long mcsafe_claimed_count(void)
{
    return atomic_load_explicit(&claimed, memory_order_relaxed);
}
