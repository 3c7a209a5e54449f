/* Peers for the benchmarks, built by benchmarks/conftest.py with the system gcc.
 *
 *   bare_touch():        one load from a PROT_NONE page, recovered by a minimal
 *                        SIGSEGV handler that rewrites the PC: the floor for any
 *                        signal-based recovery.
 *   setjmp_copy():       memcpy guarded by sigsetjmp(env, 1), as C code commonly
 *                        does it: a syscall per call to save the signal mask.
 *   bare_loop(), call_loop(): n faults in a C loop, so that a ctypes call's own
 *                        cost (and its argument count) is spread over n faults.
 */
#define _GNU_SOURCE
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <ucontext.h>

extern char bare_fault_insn[], bare_fault_resume[];
#if defined(__x86_64__)
__asm__(".text\n"
        ".globl bare_touch\n"
        ".type bare_touch, %function\n"
        "bare_touch:\n"
        "bare_fault_insn:\n"
        "    movb (%rdi), %al\n"
        "bare_fault_resume:\n"
        "    ret\n"
        ".size bare_touch, .-bare_touch\n");
#define CONTEXT_PC(uc) (*(char **)&(uc)->uc_mcontext.gregs[REG_RIP])
#elif defined(__aarch64__)
__asm__(".text\n"
        ".globl bare_touch\n"
        ".type bare_touch, %function\n"
        "bare_touch:\n"
        "bare_fault_insn:\n"
        "    ldrb w1, [x0]\n"
        "bare_fault_resume:\n"
        "    ret\n"
        ".size bare_touch, .-bare_touch\n");
#define CONTEXT_PC(uc) (*(char **)&(uc)->uc_mcontext.pc)
#endif
void bare_touch(const void *p);

/* bare_touch(p) n times. */
void bare_loop(const void *p, long n)
{
    for (long i = 0; i < n; i++)
        bare_touch(p);
}

/* fn(p, len) n times; the last value. */
int64_t call_loop(int64_t (*fn)(const void *, size_t), const void *p, size_t len, long n)
{
    int64_t r = 0;
    for (long i = 0; i < n; i++)
        r = fn(p, len);
    return r;
}

static struct sigaction bare_prev;

static void bare_handler(int sig, siginfo_t *info, void *ctx)
{
    ucontext_t *uc = ctx;
    if (CONTEXT_PC(uc) == bare_fault_insn) {
        CONTEXT_PC(uc) = bare_fault_resume;
        return;
    }
    /* not ours: hand over (the benchmark never gets here) */
    if (bare_prev.sa_flags & SA_SIGINFO)
        bare_prev.sa_sigaction(sig, info, ctx);
}

static struct sigaction bare_installed;

/* Install the bare handler; returns 0. */
int bare_install(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = bare_handler;
    sa.sa_flags = SA_SIGINFO;
    return sigaction(SIGSEGV, &sa, &bare_prev);
}

int bare_uninstall(void)
{
    (void)bare_installed;
    return sigaction(SIGSEGV, &bare_prev, NULL);
}

static __thread sigjmp_buf *jump_to;

static void jmp_handler(int sig)
{
    (void)sig;
    if (jump_to)
        siglongjmp(*jump_to, 1);
}

static struct sigaction jmp_prev_segv, jmp_prev_bus;

int setjmp_install(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = jmp_handler;
    sa.sa_flags = SA_NODEFER;
    return sigaction(SIGSEGV, &sa, &jmp_prev_segv) | sigaction(SIGBUS, &sa, &jmp_prev_bus);
}

int setjmp_uninstall(void)
{
    return sigaction(SIGSEGV, &jmp_prev_segv, NULL) | sigaction(SIGBUS, &jmp_prev_bus, NULL);
}

/* Returns 0, or -1 if the copy faulted (no byte count: setjmp cannot know it). */
int setjmp_copy(void *dst, const void *src, size_t n)
{
    sigjmp_buf env;
    if (sigsetjmp(env, 1)) {
        jump_to = NULL;
        return -1;
    }
    jump_to = &env;
    memcpy(dst, src, n);
    jump_to = NULL;
    return 0;
}
