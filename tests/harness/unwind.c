/* The `unwind` handler against its reference, the caller's own state: plain C
 * functions (tests/fixtures/unwind_funcs.c, built with any compiler and
 * flags) are called from an assembly caller that fills every callee-saved
 * register with a canary and, after the call, records them, the stack
 * pointer and the return value. A fault recovered by unwinding must leave all
 * of them as they were before the call, with -EFAULT returned.
 *
 *   unwind NAME:SIZE...     the covered functions to test, with their sizes
 *                           (from `extable symbols`) for stepping, or 0
 *
 * Two kinds of faults:
 *   - real ones: the function reads a buffer whose page k bytes in is
 *     PROT_NONE (at its first access, and after 1, 3 and 17 bytes);
 *   - on x86-64, one at every instruction of the function: the caller sets the
 *     trap flag, a SIGTRAP handler counts the steps inside the function and at
 *     step k hands the interrupted context to mcsafe_handle_fault() as a
 *     SIGSEGV, the API a runtime owning the handler calls. The state at a
 *     single-step trap before instruction k is the state a fault at k would
 *     see, so every instruction (prologue, body, epilogue, the first) is
 *     tried. qemu-user has no single-step, so on aarch64 only real faults run.
 *
 * Prints one line per function and "N passed, M failed".
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include "mcsafe_core.h"

EXTABLE_RESERVE(32768);               /* room for the functions' unwind rows */

#define PAGE 4096
#define EFAULT_RET ((uint64_t)(int64_t)-14)

typedef uint64_t (*covered_fn)(const void *p, size_t n);

#if defined(__x86_64__)
#define NCANARY 6                     /* rbx rbp r12 r13 r14 r15 */
static const char *const canary_names[NCANARY] = {"rbx", "rbp", "r12", "r13", "r14", "r15"};
#else
#define NCANARY 19                    /* x19..x29, d8..d15 */
static const char *const canary_names[NCANARY] = {
    "x19", "x20", "x21", "x22", "x23", "x24", "x25", "x26", "x27", "x28", "x29",
    "d8", "d9", "d10", "d11", "d12", "d13", "d14", "d15"};
#endif

/* Shared with the assembly: the layout is the offsets used there. */
struct uw_state {
    uint64_t canary[NCANARY];
    uint64_t sp_before;
#if defined(__x86_64__)
    uint64_t step;                    /* set the trap flag for the call */
#endif
    uint64_t after[NCANARY];
    uint64_t sp_after;
#if defined(__x86_64__)
    uint64_t flags_after;
#endif
};

uint64_t canary_call(covered_fn fn, const void *p, size_t n, struct uw_state *st);
extern char canary_call_ret[];
uint64_t uw_asm_epilogue(const void *p, size_t n);

#if defined(__x86_64__)
_Static_assert(offsetof(struct uw_state, sp_before) == 48, "layout");
_Static_assert(offsetof(struct uw_state, after) == 64, "layout");
_Static_assert(offsetof(struct uw_state, sp_after) == 112, "layout");
__asm__(".text\n"
        ".globl canary_call\n.type canary_call, @function\n"
        "canary_call:\n"                  /* rdi fn, rsi p, rdx n, rcx st */
        "    .cfi_startproc\n"
        "    push %rbx\n    push %rbp\n    push %r12\n    push %r13\n    push %r14\n"
        "    push %r15\n    push %rcx\n"              /* 7 pushes: the stack is 16-aligned */
        "    .cfi_def_cfa_offset 64\n"
        "    mov %rdi, %rax\n    mov %rsi, %rdi\n    mov %rdx, %rsi\n"
        "    mov 0(%rcx), %rbx\n    mov 8(%rcx), %rbp\n    mov 16(%rcx), %r12\n"
        "    mov 24(%rcx), %r13\n    mov 32(%rcx), %r14\n    mov 40(%rcx), %r15\n"
        "    mov %rsp, 48(%rcx)\n"
        "    testq $1, 56(%rcx)\n    jz 1f\n"
        "    pushfq\n    orq $0x100, (%rsp)\n    popfq\n"  /* trap after the call */
        "1:  call *%rax\n"
        ".globl canary_call_ret\n"
        "canary_call_ret:\n"
        "    mov (%rsp), %rcx\n    mov %rsp, 112(%rcx)\n"
        "    mov %rbx, 64(%rcx)\n    mov %rbp, 72(%rcx)\n    mov %r12, 80(%rcx)\n"
        "    mov %r13, 88(%rcx)\n    mov %r14, 96(%rcx)\n    mov %r15, 104(%rcx)\n"
        "    pushfq\n    pop %rdx\n    mov %rdx, 120(%rcx)\n"
        "    pop %rcx\n    pop %r15\n    pop %r14\n    pop %r13\n    pop %r12\n"
        "    pop %rbp\n    pop %rbx\n    ret\n"
        "    .cfi_endproc\n"
        ".size canary_call, .-canary_call\n"
        /* A fault in an epilogue, after the callee-saved registers came back. */
        ".globl uw_asm_epilogue\n.type uw_asm_epilogue, @function\n"
        "uw_asm_epilogue:\n"
        "    .cfi_startproc\n"
        "    push %rbx\n    .cfi_def_cfa_offset 16\n    .cfi_offset %rbx, -16\n"
        "    push %r12\n    .cfi_def_cfa_offset 24\n    .cfi_offset %r12, -24\n"
        "    mov $0x1111, %ebx\n    mov $0x2222, %r12d\n    mov %rsi, %rax\n"
        "    pop %r12\n    .cfi_def_cfa_offset 16\n    .cfi_restore %r12\n"
        "    pop %rbx\n    .cfi_def_cfa_offset 8\n    .cfi_restore %rbx\n"
        "    add (%rdi), %rax\n"
        "    ret\n"
        "    .cfi_endproc\n"
        ".size uw_asm_epilogue, .-uw_asm_epilogue\n");
#elif defined(__aarch64__)
_Static_assert(offsetof(struct uw_state, sp_before) == 152, "layout");
_Static_assert(offsetof(struct uw_state, after) == 160, "layout");
_Static_assert(offsetof(struct uw_state, sp_after) == 312, "layout");
__asm__(".text\n"
        ".globl canary_call\n.type canary_call, %function\n"
        "canary_call:\n"                  /* x0 fn, x1 p, x2 n, x3 st */
        "    .cfi_startproc\n"
        "    stp x29, x30, [sp, #-176]!\n"
        "    .cfi_def_cfa_offset 176\n    .cfi_offset x29, -176\n    .cfi_offset x30, -168\n"
        "    mov x29, sp\n"
        "    stp x19, x20, [sp, #16]\n    stp x21, x22, [sp, #32]\n"
        "    stp x23, x24, [sp, #48]\n    stp x25, x26, [sp, #64]\n"
        "    stp x27, x28, [sp, #80]\n    stp d8, d9, [sp, #96]\n"
        "    stp d10, d11, [sp, #112]\n    stp d12, d13, [sp, #128]\n"
        "    stp d14, d15, [sp, #144]\n    str x3, [sp, #160]\n"
        "    mov x9, x0\n    mov x0, x1\n    mov x1, x2\n"
        "    ldp x19, x20, [x3, #0]\n    ldp x21, x22, [x3, #16]\n"
        "    ldp x23, x24, [x3, #32]\n    ldp x25, x26, [x3, #48]\n"
        "    ldp x27, x28, [x3, #64]\n    ldr x29, [x3, #80]\n"
        "    ldp d8, d9, [x3, #88]\n    ldp d10, d11, [x3, #104]\n"
        "    ldp d12, d13, [x3, #120]\n    ldp d14, d15, [x3, #136]\n"
        "    mov x10, sp\n    str x10, [x3, #152]\n"
        "    blr x9\n"
        ".globl canary_call_ret\n"
        "canary_call_ret:\n"
        "    mov x10, sp\n    ldr x3, [sp, #160]\n    str x10, [x3, #312]\n"
        "    stp x19, x20, [x3, #160]\n    stp x21, x22, [x3, #176]\n"
        "    stp x23, x24, [x3, #192]\n    stp x25, x26, [x3, #208]\n"
        "    stp x27, x28, [x3, #224]\n    str x29, [x3, #240]\n"
        "    stp d8, d9, [x3, #248]\n    stp d10, d11, [x3, #264]\n"
        "    stp d12, d13, [x3, #280]\n    stp d14, d15, [x3, #296]\n"
        "    ldp x19, x20, [sp, #16]\n    ldp x21, x22, [sp, #32]\n"
        "    ldp x23, x24, [sp, #48]\n    ldp x25, x26, [sp, #64]\n"
        "    ldp x27, x28, [sp, #80]\n    ldp d8, d9, [sp, #96]\n"
        "    ldp d10, d11, [sp, #112]\n    ldp d12, d13, [sp, #128]\n"
        "    ldp d14, d15, [sp, #144]\n"
        "    ldp x29, x30, [sp], #176\n"
        "    ret\n"
        "    .cfi_endproc\n"
        ".size canary_call, .-canary_call\n"
        /* A fault in an epilogue, after x19, x29 and x30 came back. */
        ".globl uw_asm_epilogue\n.type uw_asm_epilogue, %function\n"
        "uw_asm_epilogue:\n"
        "    .cfi_startproc\n"
        "    stp x29, x30, [sp, #-32]!\n"
        "    .cfi_def_cfa_offset 32\n    .cfi_offset x29, -32\n    .cfi_offset x30, -24\n"
        "    mov x29, sp\n"
        "    str x19, [sp, #16]\n    .cfi_offset x19, -16\n"
        "    mov x19, #0x1111\n    mov x30, #0x2222\n    add x1, x1, x19\n"
        "    ldr x19, [sp, #16]\n    .cfi_restore x19\n"
        "    ldp x29, x30, [sp], #32\n"
        "    .cfi_restore x29\n    .cfi_restore x30\n    .cfi_def_cfa_offset 0\n"
        "    ldr x0, [x0]\n"
        "    add x0, x0, x1\n"
        "    ret\n"
        "    .cfi_endproc\n"
        ".size uw_asm_epilogue, .-uw_asm_epilogue\n");
#endif

uint64_t uw_first(const void *, size_t), uw_leaf(const void *, size_t),
    uw_saved(const void *, size_t), uw_alloca(const void *, size_t),
    uw_big(const void *, size_t), uw_fp(const void *, size_t);

struct covered {
    const char *name;
    covered_fn fn;
    int word;                         /* reads an 8-byte word, not bytes */
    size_t size;                      /* from argv, for stepping */
    int tested;                       /* named in argv */
};

static struct covered all[] = {
    {"uw_first", uw_first, 1, 0}, {"uw_leaf", uw_leaf, 0, 0}, {"uw_saved", uw_saved, 0, 0},
    {"uw_alloca", uw_alloca, 0, 0}, {"uw_big", uw_big, 0, 0}, {"uw_fp", uw_fp, 0, 0},
    {"uw_asm_epilogue", uw_asm_epilogue, 1, 0},
};
#define NCOVERED (sizeof all / sizeof all[0])

static long passed, failed;

static void fill_canaries(struct uw_state *st, uint64_t seed)
{
    memset(st, 0, sizeof *st);
    for (int i = 0; i < NCANARY; i++)
        st->canary[i] = 0xC0DE000000000000ull ^ (seed * 0x9E3779B97F4A7C15ull) ^
                        ((uint64_t)(i + 1) << 40) ^ (uint64_t)(i + 1) * 0x01010101u;
}

/* The caller's state after the call is the state before it, and the value is
 * `want`; a line naming what differs otherwise. */
static int check(const char *name, const char *what, const struct uw_state *st,
                 uint64_t got, uint64_t want)
{
    char why[512] = "";
    size_t len = 0;
    if (got != want)
        len += (size_t)snprintf(why + len, sizeof why - len, " returned %#llx, not %#llx",
                                (unsigned long long)got, (unsigned long long)want);
    if (st->sp_after != st->sp_before)
        len += (size_t)snprintf(why + len, sizeof why - len, " sp %#llx, not %#llx",
                                (unsigned long long)st->sp_after,
                                (unsigned long long)st->sp_before);
    for (int i = 0; i < NCANARY && len < sizeof why - 64; i++)
        if (st->after[i] != st->canary[i])
            len += (size_t)snprintf(why + len, sizeof why - len, " %s %#llx, not %#llx",
                                    canary_names[i], (unsigned long long)st->after[i],
                                    (unsigned long long)st->canary[i]);
#if defined(__x86_64__)
    if (st->flags_after & 0x400)
        len += (size_t)snprintf(why + len, sizeof why - len, " direction flag set");
#endif
    if (len) {
        printf("FAIL %s %s:%s\n", name, what, why);
        failed++;
        return 1;
    }
    passed++;
    return 0;
}

#if defined(__x86_64__)
/* Single-stepping: count the steps inside [lo, hi); at step `target`, the
 * interrupted context goes to mcsafe_handle_fault as a SIGSEGV. */
static volatile uintptr_t step_lo, step_hi;
static volatile long step_target, step_count, step_claimed, step_declined;

static void on_trap(int sig, siginfo_t *info, void *context)
{
    ucontext_t *uc = context;
    greg_t *g = uc->uc_mcontext.gregs;
    uintptr_t pc = (uintptr_t)g[REG_RIP];
    (void)sig, (void)info;
    if (pc == (uintptr_t)canary_call_ret) {
        g[REG_EFL] &= ~0x100;                        /* back in the caller: stop */
        return;
    }
    if (pc < step_lo || pc >= step_hi || step_count++ != step_target)
        return;
    siginfo_t fault;
    memset(&fault, 0, sizeof fault);
    fault.si_signo = SIGSEGV;
    fault.si_code = SEGV_MAPERR;
    fault.si_addr = (void *)16;
    if (mcsafe_handle_fault(SIGSEGV, &fault, uc))
        step_claimed++;
    else
        step_declined++;
    g[REG_EFL] &= ~0x100;
}

/* Every instruction of fn, with 3 readable bytes (8 for a word reader). */
static void step_through(struct covered *c, const unsigned char *buf, uint64_t want)
{
    long steps = 0;
    for (long target = 0; target < 100000; target++) {
        struct uw_state st;
        fill_canaries(&st, (uint64_t)target + 1);
        st.step = 1;
        step_lo = (uintptr_t)c->fn;
        step_hi = step_lo + c->size;
        step_target = target;
        step_count = step_claimed = step_declined = 0;
        uint64_t got = canary_call(c->fn, buf, 3, &st);
        char what[64];
        snprintf(what, sizeof what, "step %ld", target);
        if (step_declined) {
            printf("FAIL %s %s: mcsafe_handle_fault declined\n", c->name, what);
            failed++;
            continue;
        }
        if (!step_claimed) {                         /* ran to the end: all steps tried */
            check(c->name, "stepped through, no fault", &st, got, want);
            break;
        }
        check(c->name, what, &st, got, EFAULT_RET);
        steps++;
    }
    printf("%s: %ld instructions stepped, each unwound\n", c->name, steps);
}
#endif

int main(int argc, char **argv)
{
    char err[256];
    size_t size;
    const void *table = mcsafe_own_table(&size);
    mcsafe_arch_init();
    if (mcsafe_register(table, size, "unwind", err, sizeof err)) {
        fprintf(stderr, "unwind: own table refused: %s\n", err);
        return 2;
    }
    if (mcsafe_install()) {
        perror("unwind: sigaction");
        return 2;
    }
    for (int a = 1; a < argc; a++) {
        char *colon = strchr(argv[a], ':');
        for (size_t i = 0; colon && i < NCOVERED; i++)
            if ((size_t)(colon - argv[a]) == strlen(all[i].name)
                && !strncmp(argv[a], all[i].name, (size_t)(colon - argv[a]))) {
                all[i].size = strtoul(colon + 1, NULL, 0);
                all[i].tested = 1;
            }
    }
#if defined(__x86_64__)
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_trap;
    sa.sa_flags = SA_SIGINFO;
    sigaction(SIGTRAP, &sa, NULL);
#endif
    unsigned char *region = mmap(NULL, 2 * PAGE, PROT_READ | PROT_WRITE,
                                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (region == MAP_FAILED || mprotect(region + PAGE, PAGE, PROT_NONE)) {
        perror("unwind: mmap");
        return 2;
    }
    for (size_t i = 0; i < PAGE; i++)
        region[i] = (unsigned char)(i * 7 + 3);
    unsigned char *edge = region + PAGE;              /* the first byte that faults */
    unsigned long claimed = 0;
    long faults = 0;
    for (size_t i = 0; i < NCOVERED; i++) {
        struct covered *c = &all[i];
        struct uw_state st;
        if (!c->tested)
            continue;
        /* the reference: the same call on readable memory */
        fill_canaries(&st, 7);
        uint64_t want = canary_call(c->fn, region, 64, &st);
        check(c->name, "no fault", &st, want, want);
        fill_canaries(&st, 8);
        uint64_t want3 = canary_call(c->fn, region, 3, &st);
        check(c->name, "no fault, 3 bytes", &st, want3, want3);
        static const size_t byte_cuts[] = {0, 1, 3, 17}, word_cuts[] = {0, 4};
        const size_t *cuts = c->word ? word_cuts : byte_cuts;
        size_t ncuts = c->word ? 2 : 4;
        for (size_t k = 0; k < ncuts; k++) {
            char what[64];
            snprintf(what, sizeof what, "fault after %zu bytes", cuts[k]);
            fill_canaries(&st, 100 + k);
            unsigned long before = mcsafe_claimed_count();
            uint64_t got = canary_call(c->fn, edge - cuts[k], 64, &st);
            claimed += mcsafe_claimed_count() - before;
            check(c->name, what, &st, got, EFAULT_RET);
            faults++;
        }
        printf("%s: %zu real faults\n", c->name, ncuts);
#if defined(__x86_64__)
        if (c->size)
            step_through(c, region, want3);
#endif
    }
    printf("faults claimed: %lu of %ld\n", claimed, faults);
    if ((long)claimed != faults) {
        printf("FAIL the handler claimed %lu faults, not %ld\n", claimed, faults);
        failed++;
    }
    printf("%ld passed, %ld failed\n", passed, failed);
    return failed ? 1 : 0;
}
