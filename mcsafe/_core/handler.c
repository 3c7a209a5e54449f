/* handler.c: the SIGBUS/SIGSEGV handler that resumes faulting copies.
 *
 * Rules for everything reachable from mcsafe_on_fault (the handler runs in
 * exception context, on any thread, at any instruction):
 *
 *  1. Async-signal-safe only. No malloc or free, no locks, no stdio, no
 *     Python, no thread-local storage (its first touch may allocate), no
 *     function not on the POSIX async-signal-safe list (the extension is
 *     linked with -z now, so no call enters the dynamic linker's lazy
 *     binding). It reads immutable tables reached through one atomic pointer
 *     (registry.c), the previous actions through one atomic pointer each
 *     (immutable copies, never freed), a fixed array of per-thread slots
 *     keyed by thread id, and the interrupted context.
 *  2. Claim only what can be attributed precisely. A fault is claimed when
 *     all hold: the kernel sent it (si_code > 0: never SI_USER, SI_TKILL,
 *     SI_QUEUE or any other user-sent code); it is synchronous (never
 *     BUS_MCEERR_AO, the kernel's notice of poison found in the background);
 *     the PC lies in a published entry; and, for a copy, the fault address
 *     lies in the part of the source or destination still to be copied
 *     (checked from the registers the entry's descriptor names, without
 *     wrapping past the top of the address space). mcsafe_handle_fault is
 *     this decision alone, for runtimes that own the handler.
 *  3. Forward the rest exactly as the previous handler expects: SA_SIGINFO or
 *     plain, with its sa_mask and SA_NODEFER honoured, SA_RESETHAND applied.
 *     If the previous action was SIG_DFL (or SIG_IGN, which the kernel
 *     overrides for synchronous faults), install SIG_DFL, queue the original
 *     siginfo to this thread and return: it is delivered at once, at the
 *     faulting instruction, so the process dies of the original signal with a
 *     core dump that shows the real context, whether or not the fault would
 *     have recurred (it never lives on with SIG_DFL in mcsafe's place).
 *     An ignored signal that does not recur (user-sent, BUS_MCEERR_AO) is
 *     dropped. Asynchronous poison notices are recorded in a fixed ring
 *     (address, time) before they are forwarded.
 *  4. Bounded recurrence. A synchronous fault that comes back at the same PC
 *     and address with the same registers, right after the previous handler
 *     returned leaving its cause in place (the page still unmapped or still
 *     without the access), is the same fault: after MCSAFE_RECUR_LIMIT of them
 *     the process dies as in rule 3. A handler that fixes the page and returns
 *     (a JIT guard page, a page mapped in) starts a new count each time.
 *  5. A previous handler that re-raises into us (faulthandler restores the
 *     handler it replaced, which may be ours, then raises) cannot loop: a
 *     user-sent signal that arrives inside a forward of the same signal on the
 *     same thread goes to SIG_DFL. A forward is "inside" only while its frame
 *     is still on the stack with its token, so one left by siglongjmp
 *     (cysignals) leaves nothing stuck. Nor can a handler that chains by
 *     calling its previous action directly, when that action was mcsafe's
 *     (install() ran again after it saved us): the same siginfo or context
 *     coming back into a forward of it still under way goes to SIG_DFL, not
 *     round again.
 *  6. No nesting of mcsafe itself. The handler runs with SIGBUS and SIGSEGV
 *     blocked; a fault inside it is a bug, and the kernel then kills the
 *     process with that signal (a blocked synchronous fault cannot be
 *     delivered). The same holds for any thread that blocks them: such a
 *     thread cannot recover a copy (mcsafe_faults_blocked tells).
 *  7. One small switch on the handler kind, as the kernel's
 *     arch/x86/mm/extable.c fixup_exception(). The architecture-specific part
 *     (reading and writing registers) is in arch/<arch>/context.h; the
 *     `unwind` kind's restore of the caller's frame is unwind.c, whose own
 *     rules say which loads it makes from the interrupted stack.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "mcsafe_core.h"
#include "context.h"

#ifndef BUS_MCEERR_AO
#define BUS_MCEERR_AO 5
#endif

/* The actions installed before mcsafe, [0] SIGSEGV and [1] SIGBUS: each an
 * immutable copy, published whole through an atomic pointer (never freed, as a
 * forwarding thread may still hold the old one). NULL means SIG_DFL. */
static _Atomic(const struct sigaction *) previous[2];
static const struct sigaction default_action = {.sa_handler = SIG_DFL};
static atomic_ulong claimed;
static uintptr_t page_size = 4096;       /* set at install, outside the handler */

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

static const struct sigaction *previous_for(int sig)
{
    const struct sigaction *p = atomic_load_explicit(&previous[sig == SIGBUS],
                                                     memory_order_acquire);
    return p ? p : &default_action;
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

int mcsafe_handle_fault(int sig, siginfo_t *info, void *context)
{
    const struct mcsafe_module *m;
    const struct extable_entry *e;
    if ((sig != SIGBUS && sig != SIGSEGV) || info == NULL || context == NULL
        || info->si_code <= 0 || is_ao(sig, info))
        return 0;
    int saved_errno = errno;
    ucontext_t *uc = context;
    mcsafe_readers_enter();
    int done = (e = mcsafe_lookup(arch_pc(uc), &m)) != NULL && fixup(m, e, sig, info, uc);
    mcsafe_readers_leave();
    errno = saved_errno;
    return done;
}

/* End the process by the signal as if mcsafe had never been installed: SIG_DFL,
 * and the original siginfo queued to this thread. The signal is blocked while
 * the handler runs, so it is delivered the moment the handler returns, at the
 * interrupted instruction with its registers: the core dump shows the real
 * context, and the process dies whether or not the fault would have recurred
 * (so it never lives on with SIG_DFL in mcsafe's place). */
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

/* Per-thread forwarding state, in a fixed array of lock-free slots keyed by
 * thread id (no TLS: its first touch may allocate). A slot remembers the last
 * synchronous fault its thread forwarded that the previous handler returned
 * from without removing the cause, and the forward in progress, if any; the
 * thread gives it back when it holds neither. With more than
 * MCSAFE_THREAD_SLOTS threads forwarding at once, slots are reused round-robin
 * and a count may restart. */
#define MCSAFE_THREAD_SLOTS 64
#define MCSAFE_RECUR_LIMIT 32            /* unfixed retries before death by SIG_DFL */

struct thread_slot {
    atomic_long tid;                     /* owner, 0 if free */
    _Atomic uint64_t unfixed;            /* key of that fault, 0 if none */
    atomic_uint repeats;                 /* how many times it came back */
    atomic_int fwd_sig;                  /* signal being forwarded, 0 if none */
    atomic_uintptr_t fwd_frame;          /* where forward()'s token lives */
    _Atomic uint64_t fwd_token;
    _Atomic(const siginfo_t *) fwd_info; /* the siginfo it forwards */
    _Atomic(const void *) fwd_context;   /* and the context */
};

static struct thread_slot slots[MCSAFE_THREAD_SLOTS];
static atomic_uint slot_reuse;
static _Atomic uint64_t tokens;

static struct thread_slot *slot_of(long tid)
{
    for (int i = 0; i < MCSAFE_THREAD_SLOTS; i++)
        if (atomic_load_explicit(&slots[i].tid, memory_order_acquire) == tid)
            return &slots[i];
    struct thread_slot *s = NULL;
    for (int i = 0; i < MCSAFE_THREAD_SLOTS && !s; i++) {
        long expected = 0;
        if (atomic_compare_exchange_strong(&slots[i].tid, &expected, tid))
            s = &slots[i];
    }
    if (!s) {
        s = &slots[atomic_fetch_add(&slot_reuse, 1) % MCSAFE_THREAD_SLOTS];
        atomic_store(&s->tid, tid);
    }
    atomic_store(&s->unfixed, 0);
    atomic_store(&s->repeats, 0);
    atomic_store(&s->fwd_sig, 0);
    atomic_store(&s->fwd_info, NULL);
    atomic_store(&s->fwd_context, NULL);
    return s;
}

/* Give the slot back once its thread keeps nothing in it (no fault to count,
 * no forward under way), so that only threads forwarding right now hold one. */
static void slot_release(struct thread_slot *s, long tid)
{
    if (atomic_load(&s->unfixed) == 0 && atomic_load(&s->fwd_sig) == 0)
        atomic_compare_exchange_strong(&s->tid, &tid, 0);
}

/* Whether the 8 bytes at frame hold token, read with process_vm_readv, which
 * fails instead of faulting; where seccomp forbids it (EPERM, ENOSYS),
 * directly, and only when frame lies less than 64 KiB above `low`, an address
 * on the same live stack. */
static int frame_holds(uintptr_t frame, uint64_t token, uintptr_t low)
{
    uint64_t got = 0;
    struct iovec local = {&got, sizeof got}, remote = {(void *)frame, sizeof got};
    if (syscall(SYS_process_vm_readv, getpid(), &local, 1, &remote, 1, 0) == sizeof got)
        return got == token;
    if (errno != EPERM && errno != ENOSYS)
        return 0;
    return frame - low < 65536 && *(volatile uint64_t *)frame == token;
}

/* Whether the forward recorded in the slot is still under way, an ancestor of
 * the frame at `mine` (the caller's own token, already written: a mark left at
 * that very address by a forward that left by siglongjmp reads as ours). */
static int forward_live(struct thread_slot *s, uintptr_t mine)
{
    uintptr_t frame = atomic_load_explicit(&s->fwd_frame, memory_order_relaxed);
    return frame > mine
           && frame_holds(frame, atomic_load_explicit(&s->fwd_token, memory_order_relaxed), mine);
}

static uint64_t fault_key(int sig, const siginfo_t *info, const ucontext_t *uc)
{
    uint64_t h = arch_context_hash(uc);
    h = (h ^ (uint64_t)(uintptr_t)info->si_addr) * 1099511628211ull;
    h = (h ^ ((uint64_t)(uint32_t)sig << 32 | (uint32_t)info->si_code)) * 1099511628211ull;
    return h ? h : 1;
}

/* Whether the page at addr grants the access: from /proc/self/maps, read and
 * parsed here with a small buffer (open, read and close are async-signal-safe).
 * -1 if the maps cannot be read. */
static int page_allows(uintptr_t addr, char need)
{
    int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    char buf[512];
    uintptr_t lo = 0, hi = 0;
    int field = 0, found = -1;           /* field: 0 lo, 1 hi, 2..5 perms, 6 rest of line */
    char perms[4];
    ssize_t n;
    while (found < 0 && (n = read(fd, buf, sizeof buf)) > 0) {
        for (ssize_t i = 0; i < n && found < 0; i++) {
            char c = buf[i];
            if (c == '\n') {
                if (field >= 6 && addr >= lo && addr < hi)
                    found = need == 'r' ? perms[0] == 'r'
                          : need == 'w' ? perms[1] == 'w' : perms[2] == 'x';
                else if (field >= 6 && lo > addr)
                    found = 0;           /* sorted: no mapping holds addr */
                lo = hi = 0;
                field = 0;
            } else if (field < 2) {
                int v = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
                if (v >= 0)
                    *(field ? &hi : &lo) = *(field ? &hi : &lo) << 4 | (uintptr_t)v;
                else
                    field++;             /* '-' after lo, ' ' after hi */
            } else if (field < 6) {
                perms[field - 2] = c;
                field++;
            }
        }
    }
    close(fd);
    return found < 0 ? (n < 0 ? -1 : 0) : found;
}

/* After the previous handler returned without touching the context: would the
 * fault happen again? Never inlined: its buffer must not sit in forward()'s
 * frame, on the (alternate) stack under the previous handler, while it runs. A SIGSEGV is gone when the page is now mapped with the
 * access it needs (a JIT guard page made writable, a page mapped in); SIGBUS
 * causes (poison, a file that shrank, a missing userfaultfd page) cannot be
 * probed without touching the page, so they count as remaining. */
__attribute__((noinline)) static int cause_remains(int sig, const siginfo_t *info,
                                                  const ucontext_t *uc)
{
    if (sig != SIGSEGV || (info->si_code != SEGV_MAPERR && info->si_code != SEGV_ACCERR))
        return 1;
    uintptr_t addr = (uintptr_t)info->si_addr;
    unsigned char vec;
    if (mincore((void *)(addr & ~(page_size - 1)), 1, &vec) != 0)
        return 1;                        /* ENOMEM: still unmapped */
    char need = arch_fault_is_write(uc) ? 'w' : arch_fault_is_exec(uc) ? 'x' : 'r';
    return page_allows(addr, need) != 1;
}

/* Whether this (user-sent) signal arrived inside a forward of the same signal
 * on this thread: the previous handler re-raised it (faulthandler restores the
 * handler it replaced, which may be ours, then raises). The forward is still on
 * the stack when the interrupted stack pointer lies below its frame and the
 * frame still holds its token; a previous handler that left by siglongjmp
 * (cysignals) leaves a stale mark that fails this test. The token is read with
 * process_vm_readv, which fails instead of faulting; where seccomp forbids it,
 * directly, and only when it lies just above the interrupted stack pointer. */
static int nested_forward(struct thread_slot *s, int sig, const ucontext_t *uc)
{
    if (atomic_load_explicit(&s->fwd_sig, memory_order_relaxed) != sig)
        return 0;
    uintptr_t frame = atomic_load_explicit(&s->fwd_frame, memory_order_relaxed);
    uint64_t token = atomic_load_explicit(&s->fwd_token, memory_order_relaxed);
    uintptr_t sp = arch_sp(uc), here = (uintptr_t)__builtin_frame_address(0);
    if (!(here < sp && sp < frame))
        return 0;
    return frame_holds(frame, token, sp);
}

/* info and context may be NULL when a handler that chains by calling its
 * previous action has none to pass (a plain handler forwarding to us): such a
 * call is forwarded as a user-sent signal, with the mask of the moment. */
static void forward(int sig, siginfo_t *info, void *context)
{
    const struct sigaction *prev = previous_for(sig);
    ucontext_t *uc = context;
    int kernel = info && uc && info->si_code > 0;
    /* A synchronous fault happens again when we return; anything else does not. */
    int sync = kernel && !is_ao(sig, info);

    if (prev->sa_flags & SA_SIGINFO ? prev->sa_sigaction == NULL
                                    : prev->sa_handler == SIG_DFL || prev->sa_handler == SIG_IGN) {
        if (!sync && !(prev->sa_flags & SA_SIGINFO) && prev->sa_handler == SIG_IGN)
            return;                      /* an ignored signal that will not recur */
        die_by_default(sig, info);       /* the kernel forces SIG_DFL on ignored faults */
        return;
    }

    long tid = syscall(SYS_gettid);
    struct thread_slot *slot = slot_of(tid);
    uint64_t key = 0, before = 0;
    /* This forward's mark, written before anything reads the slot. */
    volatile uint64_t token = (atomic_fetch_add(&tokens, 1) + 1) * 0x9E3779B97F4A7C15ull
                              ^ (uintptr_t)&token;
    if (atomic_load(&slot->fwd_sig) && !forward_live(slot, (uintptr_t)&token)) {
        atomic_store(&slot->fwd_sig, 0);             /* left by siglongjmp: stale */
        atomic_store(&slot->fwd_info, NULL);
        atomic_store(&slot->fwd_context, NULL);
    }
    /* Our own forward of this very signal, back in mcsafe_on_fault through a
     * handler that chains by calling its previous action (Wasmtime's and V8's
     * do), which was mcsafe: install() ran again after that handler saved us.
     * Forwarding again would recurse until the (alternate) stack overflows.
     * A new fault always comes with a new siginfo and context; a chaining
     * handler may pass a copy of one of them, hardly of both. */
    int looped = kernel && atomic_load(&slot->fwd_sig) == sig
                 && (atomic_load(&slot->fwd_info) == info
                     || atomic_load(&slot->fwd_context) == context);
    if (looped || (!kernel && uc && nested_forward(slot, sig, uc))) {
        die_by_default(sig, info);
        return;
    }
    if (sync) {
        /* The same fault, at the same PC and address with the same registers,
         * right after the previous handler returned leaving its cause in
         * place: that handler cannot fix it (faulthandler once disabled
         * returns at once). Death by SIG_DFL after a bounded number. */
        key = fault_key(sig, info, uc);
        before = arch_context_hash(uc);
        if (atomic_load_explicit(&slot->unfixed, memory_order_relaxed) == key) {
            if (atomic_fetch_add(&slot->repeats, 1) + 1 >= MCSAFE_RECUR_LIMIT) {
                die_by_default(sig, info);
                return;
            }
        } else {
            atomic_store(&slot->repeats, 0);
        }
        atomic_store(&slot->unfixed, 0);
    }

    /* Mark the forward (nested forwards of the other signal save and restore it). */
    int outer_sig = atomic_load(&slot->fwd_sig);
    uintptr_t outer_frame = atomic_load(&slot->fwd_frame);
    uint64_t outer_token = atomic_load(&slot->fwd_token);
    const siginfo_t *outer_info = atomic_load(&slot->fwd_info);
    const void *outer_context = atomic_load(&slot->fwd_context);
    atomic_store(&slot->fwd_frame, (uintptr_t)&token);
    atomic_store(&slot->fwd_token, token);
    atomic_store(&slot->fwd_info, info);
    atomic_store(&slot->fwd_context, context);
    atomic_store(&slot->fwd_sig, sig);

    /* Run the previous handler with the mask it asked for. */
    sigset_t mask, saved;
    if (uc)
        mask = uc->uc_sigmask;
    else
        pthread_sigmask(SIG_BLOCK, NULL, &mask);
    for (int s = 1; s < NSIG; s++)
        if (sigismember(&prev->sa_mask, s) == 1)
            sigaddset(&mask, s);
    if (prev->sa_flags & SA_NODEFER)
        sigdelset(&mask, sig);
    else
        sigaddset(&mask, sig);
    const struct sigaction call = *prev;
    if (prev->sa_flags & SA_RESETHAND)
        atomic_store_explicit(&previous[sig == SIGBUS], &default_action, memory_order_release);
    pthread_sigmask(SIG_SETMASK, &mask, &saved);
    if (call.sa_flags & SA_SIGINFO)
        call.sa_sigaction(sig, info, context);
    else
        call.sa_handler(sig);
    pthread_sigmask(SIG_SETMASK, &saved, NULL);

    atomic_store(&slot->fwd_sig, outer_sig);
    atomic_store(&slot->fwd_frame, outer_frame);
    atomic_store(&slot->fwd_token, outer_token);
    atomic_store(&slot->fwd_info, outer_info);
    atomic_store(&slot->fwd_context, outer_context);
    if (sync && arch_context_hash(uc) == before && cause_remains(sig, info, uc))
        atomic_store(&slot->unfixed, key);
    slot_release(slot, tid);
}

static void mcsafe_on_fault(int sig, siginfo_t *info, void *context)
{
    int saved_errno = errno;
    if (info && is_ao(sig, info))
        log_ao(info);                    /* never claimed: no instruction of ours faulted */
    else if (mcsafe_handle_fault(sig, info, context))
        return;
    forward(sig, info, context);
    errno = saved_errno;
}

static int is_ours(const struct sigaction *sa)
{
    return (sa->sa_flags & SA_SIGINFO) && sa->sa_sigaction == mcsafe_on_fault;
}

static int install_one(int sig)
{
    struct sigaction sa, *old = calloc(1, sizeof *old), *now = calloc(1, sizeof *now);
    if (!old || !now) {
        free(old);
        free(now);
        errno = ENOMEM;
        return -1;
    }
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = mcsafe_on_fault;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    sigaddset(&sa.sa_mask, SIGBUS);
    sigaddset(&sa.sa_mask, SIGSEGV);
    /* Publish the action we replace before replacing it, so that a fault on
     * another thread in between forwards to it; then publish what sigaction
     * returned, should another have been installed in the meantime. A copy once
     * published is never freed; re-installing never saves ourselves. */
    int rc = sigaction(sig, NULL, old);
    int published = rc == 0 && !is_ours(old);
    if (published)
        atomic_store_explicit(&previous[sig == SIGBUS], old, memory_order_release);
    if (rc == 0)
        rc = sigaction(sig, &sa, now);
    if (rc == 0 && !is_ours(now) && !(published && memcmp(now, old, sizeof *now) == 0))
        atomic_store_explicit(&previous[sig == SIGBUS], now, memory_order_release);
    else
        free(now);
    if (!published)
        free(old);
    return rc;
}

int mcsafe_install(void)
{
    long ps = sysconf(_SC_PAGESIZE);
    if (ps > 0)
        page_size = (uintptr_t)ps;
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
