/* x86-64 copy routines. Every load and store that may fault is covered by an
 * extable_site record; `extable build` turns the records into the table that
 * the signal handler searches. Both routines return the bytes NOT copied.
 *
 *   mcsafe_copy_bulk:  one `rep movsb`. On a fault %rcx is the exact number
 *                      of bytes remaining (as in the kernel's
 *                      copy_mc_enhanced_fast_string).
 *   mcsafe_copy_small: 64-byte groups of SSE loads then stores, a 32-byte
 *                      group (four loads, then four stores), 8-byte words,
 *                      then bytes.
 *   mcsafe_copy_avx2:  256-byte groups of AVX2 loads then stores; and _nt,
 *                      with non-temporal stores.
 *
 * Which one a copy takes is chosen at init from CPUID and the cache sizes, as
 * glibc's memmove chooses (sysdeps/x86/dl-cacheinfo.h, glibc 2.38 and later);
 * see mcsafe_arch_init.
 *
 * Exactness. Every word fault resumes at .Lfault_tail with %rsi/%rdi at the
 * start of the faulting group and %rcx the bytes remaining from there. The
 * handler has stored the fault address and side in the record (%r8) after
 * checking that the address lies in [cursor, cursor + %rcx). The tail copies
 * the bytes before the fault address one at a time and stops: so the count is
 * the offset of the first byte that could not be accessed, whatever granule
 * the CPU faulted on, and nothing at or past it is written (a faulting store
 * writes nothing; earlier stores of the group are rewritten with the same
 * bytes). If one of those bytes faults too, the byte loop's own entry stops
 * the copy there: the result is still exact, as in copy_mc_fragile.
 *
 * Register use: %rdi dst cursor, %rsi src cursor, %rcx bytes remaining,
 * %rdx bytes beyond the fault that stay uncopied, %r8 the fault record.
 */
#include <cpuid.h>
#include <stdint.h>
#include <unistd.h>

#include "mcsafe_core.h"

/* The table `extable build` writes; 48 + 16 per entry + 16 per descriptor. */
EXTABLE_RESERVE(2048);

#define SITE(a, b, pad, side, name)                                             \
    "    extable_site " a ", " b ", " pad ", kind=" EXTABLE_STR(EXTABLE_KIND_SHORT_COPY) \
    ", flags=" EXTABLE_STR(EXTABLE_FLAG_MC_SAFE) ", side=" EXTABLE_STR(side)    \
    ", reg=" EXTABLE_STR(EXTABLE_REG_RCX) ", src=" EXTABLE_STR(EXTABLE_REG_RSI) \
    ", dst=" EXTABLE_STR(EXTABLE_REG_RDI) ", rec=" EXTABLE_STR(EXTABLE_REG_R8)  \
    ", name=" name "\n"

/* 256 bytes an iteration: eight 32-byte loads, then eight stores (regular or
 * non-temporal); the rest goes to the word path of mcsafe_copy_small, and a
 * fault to its tail, after vzeroupper (and sfence, so the non-temporal stores
 * are ordered before the tail rewrites any of them). Eight loads in flight
 * rather than four: measured on an Intel Xeon (Sapphire Rapids class, KVM),
 * the non-temporal loop copied 256 MiB at glibc's speed with eight and 25-30%
 * slower with four. */
#define VEC_LOOP(fn, store, fence)                                              \
    MCSAFE_ASM_FUNC(fn)                                                         \
    "    mov %rcx, %r8\n"                                                       \
    "    mov %rdx, %rcx\n"                                                      \
    "    xor %edx, %edx\n"                                                      \
    "    cmp $256, %rcx\n"                                                      \
    "    jb 2f\n"                                                               \
    ".L" fn "_ld:\n"                                                            \
    "    vmovdqu (%rsi), %ymm0\n"                                               \
    "    vmovdqu 32(%rsi), %ymm1\n"                                             \
    "    vmovdqu 64(%rsi), %ymm2\n"                                             \
    "    vmovdqu 96(%rsi), %ymm3\n"                                             \
    "    vmovdqu 128(%rsi), %ymm4\n"                                            \
    "    vmovdqu 160(%rsi), %ymm5\n"                                            \
    "    vmovdqu 192(%rsi), %ymm6\n"                                            \
    "    vmovdqu 224(%rsi), %ymm7\n"                                            \
    ".L" fn "_st:\n"                                                            \
    "    " store " %ymm0, (%rdi)\n"                                             \
    "    " store " %ymm1, 32(%rdi)\n"                                           \
    "    " store " %ymm2, 64(%rdi)\n"                                           \
    "    " store " %ymm3, 96(%rdi)\n"                                           \
    "    " store " %ymm4, 128(%rdi)\n"                                          \
    "    " store " %ymm5, 160(%rdi)\n"                                          \
    "    " store " %ymm6, 192(%rdi)\n"                                          \
    "    " store " %ymm7, 224(%rdi)\n"                                          \
    ".L" fn "_end:\n"                                                           \
    "    add $256, %rsi\n"                                                      \
    "    add $256, %rdi\n"                                                      \
    "    sub $256, %rcx\n"                                                      \
    "    cmp $256, %rcx\n"                                                      \
    "    jae .L" fn "_ld\n"                                                     \
    "2:  vzeroupper\n"                                                          \
    "    " fence "\n"                                                           \
    "    jmp .Lwide\n"                                                          \
    ".L" fn "_fault:\n"                                                         \
    "    vzeroupper\n"                                                          \
    "    " fence "\n"                                                           \
    "    jmp .Lfault_tail\n"                                                    \
    "    .size " fn ", .-" fn "\n"                                              \
    SITE(".L" fn "_ld", ".L" fn "_st", ".L" fn "_fault", EXTABLE_SIDE_SRC, fn "_load") \
    SITE(".L" fn "_st", ".L" fn "_end", ".L" fn "_fault", EXTABLE_SIDE_DST, fn "_store")


__asm__(
    EXTABLE_ASM_MACROS
    "    .text\n"
    MCSAFE_ASM_FUNC("mcsafe_copy_bulk")
    "    mov %rcx, %r8\n"
    "    mov %rdx, %rcx\n"
    "    xor %edx, %edx\n"
    ".Lrep:\n"
    "    rep movsb\n"
    ".Lrep_end:\n"
    "    xor %eax, %eax\n"
    "    ret\n"
    "    .size mcsafe_copy_bulk, .-mcsafe_copy_bulk\n"
    SITE(".Lrep", ".Lrep_end", ".Lfault_tail", EXTABLE_SIDE_BOTH, "rep_movsb")

    MCSAFE_ASM_FUNC("mcsafe_copy_small")
    "    mov %rcx, %r8\n"
    "    mov %rdx, %rcx\n"
    "    xor %edx, %edx\n"
    ".Lwide:\n"
    "    cmp $64, %rcx\n"
    "    jb .Lgroups\n"
    ".Lwide_ld:\n"
    "    movdqu (%rsi), %xmm0\n"
    "    movdqu 16(%rsi), %xmm1\n"
    "    movdqu 32(%rsi), %xmm2\n"
    "    movdqu 48(%rsi), %xmm3\n"
    ".Lwide_st:\n"
    "    movdqu %xmm0, (%rdi)\n"
    "    movdqu %xmm1, 16(%rdi)\n"
    "    movdqu %xmm2, 32(%rdi)\n"
    "    movdqu %xmm3, 48(%rdi)\n"
    ".Lwide_end:\n"
    "    add $64, %rsi\n"
    "    add $64, %rdi\n"
    "    sub $64, %rcx\n"
    "    cmp $64, %rcx\n"
    "    jae .Lwide_ld\n"
    ".Lgroups:\n"
    "    cmp $32, %rcx\n"
    "    jb .Lwords\n"
    ".Lgroup:\n"
    ".Lgroup_ld:\n"
    "    mov (%rsi), %rax\n"
    "    mov 8(%rsi), %r9\n"
    "    mov 16(%rsi), %r10\n"
    "    mov 24(%rsi), %r11\n"
    ".Lgroup_st:\n"
    "    mov %rax, (%rdi)\n"
    "    mov %r9, 8(%rdi)\n"
    "    mov %r10, 16(%rdi)\n"
    "    mov %r11, 24(%rdi)\n"
    ".Lgroup_end:\n"
    "    add $32, %rsi\n"
    "    add $32, %rdi\n"
    "    sub $32, %rcx\n"
    "    cmp $32, %rcx\n"
    "    jae .Lgroup\n"
    ".Lwords:\n"
    "    cmp $8, %rcx\n"
    "    jb .Lbytes\n"
    ".Lword_ld:\n"
    "    mov (%rsi), %rax\n"
    ".Lword_st:\n"
    "    mov %rax, (%rdi)\n"
    ".Lword_end:\n"
    "    add $8, %rsi\n"
    "    add $8, %rdi\n"
    "    sub $8, %rcx\n"
    "    jmp .Lwords\n"
    ".Lbytes:\n"
    "    test %rcx, %rcx\n"
    "    jz .Ldone\n"
    ".Lbyte_ld:\n"
    "    movzbl (%rsi), %eax\n"
    ".Lbyte_st:\n"
    "    mov %al, (%rdi)\n"
    ".Lbyte_end:\n"
    "    inc %rsi\n"
    "    inc %rdi\n"
    "    dec %rcx\n"
    "    jnz .Lbyte_ld\n"
    ".Ldone:\n"
    "    mov %rdx, %rax\n"
    "    ret\n"
    ".Lbyte_fault:\n"
    "    lea (%rcx,%rdx), %rax\n"
    "    ret\n"
    /* A word or rep fault: copy the bytes before the fault address, then stop. */
    ".Lfault_tail:\n"
    "    mov " EXTABLE_STR(MCSAFE_FAULT_ADDR) "(%r8), %rax\n"
    "    cmpl $" EXTABLE_STR(EXTABLE_SIDE_SRC) ", " EXTABLE_STR(MCSAFE_FAULT_SIDE) "(%r8)\n"
    "    jne 1f\n"
    "    sub %rsi, %rax\n"
    "    jmp 2f\n"
    "1:  sub %rdi, %rax\n"
    "2:  mov %rcx, %rdx\n"
    "    sub %rax, %rdx\n"
    "    mov %rax, %rcx\n"
    "    jmp .Lbytes\n"
    "    .size mcsafe_copy_small, .-mcsafe_copy_small\n"

    VEC_LOOP("mcsafe_copy_avx2", "vmovdqu", "nop")
    VEC_LOOP("mcsafe_copy_avx2_nt", "vmovntdq", "sfence")
    SITE(".Lwide_ld", ".Lwide_st", ".Lfault_tail", EXTABLE_SIDE_SRC, "wide_load")
    SITE(".Lwide_st", ".Lwide_end", ".Lfault_tail", EXTABLE_SIDE_DST, "wide_store")
    MCSAFE_SMALL_COPY_SITES(SITE)
);

/* The scan: every byte of the source loaded, nothing stored (a reader that only
 * needs to know which bytes can be read has no destination to write, and a copy
 * through a sink spends as much on its stores as on its loads).
 *
 *   mcsafe_scan_sse2:  128-byte groups of eight 16-byte loads;
 *   mcsafe_scan_avx2:  256-byte groups of eight 32-byte loads;
 *   then 8-byte words, then bytes (the word path of mcsafe_scan_sse2).
 *
 * Exactness as in the copy: a group or word fault resumes at .Lscan_tail with
 * %rsi at the start of the faulting group and %rcx the bytes remaining from
 * there; the handler has checked the fault address lies in [%rsi, %rsi + %rcx)
 * and stored it in the record (%r8). The tail loads the bytes before it one at
 * a time and stops; a byte fault stops the scan where it is. The sites name no
 * destination register: the handler claims only faults on the source.
 *
 * Each group first prefetches the lines a page ahead: the CPU's own prefetcher
 * stops at the page's end, and over 1 GiB of page cache (4 KiB pages) the AVX2
 * loop took 88.5 against 93.9 ms of CPU with it (medians of 9 interleaved
 * rounds, load 4). A prefetch never faults, and whatever it fetches (past the
 * buffer, a bad page) is no more consumed than what the CPU's prefetcher
 * fetches on its own: only the loads are covered.
 *
 * Register use: %rsi cursor, %rcx bytes remaining, %rdx bytes beyond the fault
 * that stay unread, %r8 the fault record; the C arguments (src, n, rec) move
 * there first. Returns the bytes NOT read. */
#define SCAN_SITE(a, b, pad, name)                                              \
    "    extable_site " a ", " b ", " pad ", kind=" EXTABLE_STR(EXTABLE_KIND_SHORT_COPY) \
    ", flags=" EXTABLE_STR(EXTABLE_FLAG_MC_SAFE) ", side=" EXTABLE_STR(EXTABLE_SIDE_SRC) \
    ", reg=" EXTABLE_STR(EXTABLE_REG_RCX) ", src=" EXTABLE_STR(EXTABLE_REG_RSI) \
    ", rec=" EXTABLE_STR(EXTABLE_REG_R8) ", name=" name "\n"

#define SCAN_ENTER                                                              \
    "    mov %rdx, %r8\n"                                                       \
    "    mov %rsi, %rcx\n"                                                      \
    "    mov %rdi, %rsi\n"                                                      \
    "    xor %edx, %edx\n"

#define SCAN_LOOP(fn, ld, r, w, leave, prefetch)                                \
    ".L" fn "_top:\n"                                                           \
    prefetch                                                                    \
    ".L" fn "_ld:\n"                                                            \
    "    " ld " (%rsi), %" r "0\n"                                              \
    "    " ld " " #w "*1(%rsi), %" r "1\n"                                      \
    "    " ld " " #w "*2(%rsi), %" r "2\n"                                      \
    "    " ld " " #w "*3(%rsi), %" r "3\n"                                      \
    "    " ld " " #w "*4(%rsi), %" r "4\n"                                      \
    "    " ld " " #w "*5(%rsi), %" r "5\n"                                      \
    "    " ld " " #w "*6(%rsi), %" r "6\n"                                      \
    "    " ld " " #w "*7(%rsi), %" r "7\n"                                      \
    ".L" fn "_end:\n"                                                           \
    "    add $" #w "*8, %rsi\n"                                                 \
    "    sub $" #w "*8, %rcx\n"                                                 \
    "    cmp $" #w "*8, %rcx\n"                                                 \
    "    jae .L" fn "_top\n"                                                    \
    leave                                                                       \
    "    jmp .Lscan_words\n"                                                    \
    ".L" fn "_fault:\n"                                                         \
    leave                                                                       \
    "    jmp .Lscan_tail\n"                                                     \
    SCAN_SITE(".L" fn "_ld", ".L" fn "_end", ".L" fn "_fault", fn "_load")

__asm__(
    "    .text\n"
    MCSAFE_ASM_FUNC("mcsafe_scan_avx2")
    SCAN_ENTER
    "    cmp $256, %rcx\n"
    "    jb .Lscan_words\n"
    SCAN_LOOP("mcsafe_scan_avx2", "vmovdqu", "ymm", 32, "    vzeroupper\n",
              "    prefetcht0 4096(%rsi)\n    prefetcht0 4160(%rsi)\n"
              "    prefetcht0 4224(%rsi)\n    prefetcht0 4288(%rsi)\n")
    "    .size mcsafe_scan_avx2, .-mcsafe_scan_avx2\n"

    MCSAFE_ASM_FUNC("mcsafe_scan_sse2")
    SCAN_ENTER
    "    cmp $128, %rcx\n"
    "    jb .Lscan_words\n"
    SCAN_LOOP("mcsafe_scan_sse2", "movdqu", "xmm", 16, "",
              "    prefetcht0 4096(%rsi)\n    prefetcht0 4160(%rsi)\n")
    ".Lscan_words:\n"
    "    cmp $8, %rcx\n"
    "    jb .Lscan_bytes\n"
    ".Lscan_word_ld:\n"
    "    mov (%rsi), %rax\n"
    ".Lscan_word_end:\n"
    "    add $8, %rsi\n"
    "    sub $8, %rcx\n"
    "    jmp .Lscan_words\n"
    ".Lscan_bytes:\n"
    "    test %rcx, %rcx\n"
    "    jz .Lscan_done\n"
    ".Lscan_byte_ld:\n"
    "    movzbl (%rsi), %eax\n"
    ".Lscan_byte_end:\n"
    "    inc %rsi\n"
    "    dec %rcx\n"
    "    jnz .Lscan_byte_ld\n"
    ".Lscan_done:\n"
    "    mov %rdx, %rax\n"
    "    ret\n"
    ".Lscan_byte_fault:\n"
    "    lea (%rcx,%rdx), %rax\n"
    "    ret\n"
    /* A group or word fault: load the bytes before the fault address, then stop. */
    ".Lscan_tail:\n"
    "    mov " EXTABLE_STR(MCSAFE_FAULT_ADDR) "(%r8), %rax\n"
    "    sub %rsi, %rax\n"
    "    mov %rcx, %rdx\n"
    "    sub %rax, %rdx\n"
    "    mov %rax, %rcx\n"
    "    jmp .Lscan_bytes\n"
    "    .size mcsafe_scan_sse2, .-mcsafe_scan_sse2\n"
    MCSAFE_SCAN_WORD_SITES(SCAN_SITE)
);

size_t mcsafe_scan_avx2(const void *src, size_t n, struct mcsafe_fault *rec);
size_t mcsafe_scan_sse2(const void *src, size_t n, struct mcsafe_fault *rec);

size_t mcsafe_copy_avx2(void *dst, const void *src, size_t n, struct mcsafe_fault *rec);
size_t mcsafe_copy_avx2_nt(void *dst, const void *src, size_t n, struct mcsafe_fault *rec);

enum { PATH_SMALL, PATH_BULK, PATH_VECTOR, PATH_VECTOR_NT };
const char *const mcsafe_path_names[] = {"small", "bulk", "vector", "vector_nt", NULL};

/* Copies of MCSAFE_SMALL_COPY bytes up to bulk_stop take rep movsb, then the
 * AVX2 loop up to nt_threshold, then the non-temporal one. The defaults are
 * for a CPU without AVX2: rep movsb for everything. */
static int have_avx2;
static struct mcsafe_copy_plan plan = {.bulk_stop = SIZE_MAX, .nt_threshold = SIZE_MAX};
enum { AVX2, ERMS, FSRM, AMD };
const char *const mcsafe_feature_names[] = {"avx2", "erms", "fsrm", "amd", NULL};

/* glibc's choice, measured on an AMD EPYC and an Intel Xeon (Sapphire Rapids
 * class) under KVM (benchmarks/test_copy.py):
 * - Non-temporal stores from a quarter of L3 (glibc's non_temporal_threshold):
 *   a copy that large evicts most of what the cache held anyway, and skipping
 *   the read-for-ownership of every destination line wins. On the Xeon a
 *   256 MiB copy takes 30 ms with them against 48 ms with rep movsb.
 * - Below that, rep movsb where the CPU says it is fast (ERMS), except on AMD
 *   above L2 size, where it falls behind an AVX2 loop (glibc's
 *   rep_movsb_stop_threshold). On the Xeon rep movsb ties glibc's memcpy from
 *   2 KiB to 64 MiB while the AVX2 loop is 10-15% slower from 1 MiB.
 * - Without ERMS, the AVX2 loop from MCSAFE_SMALL_COPY on, as glibc uses its
 *   vector loops. */
void mcsafe_arch_init(void)
{
    unsigned eax, ebx, ecx, edx;
    __builtin_cpu_init();
    /* AVX2 usable: the CPU has it and the kernel saves the ymm registers */
    plan.features |= (unsigned)!!__builtin_cpu_supports("avx2") << AVX2;
    if (__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx))
        plan.features |= ((ebx >> 9) & 1) << ERMS | ((edx >> 4) & 1) << FSRM;
    plan.features |= (unsigned)!!__builtin_cpu_is("amd") << AMD;
    long l2 = sysconf(_SC_LEVEL2_CACHE_SIZE), l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
    plan.l2 = l2 > 0 ? (size_t)l2 : 0;
    plan.l3 = l3 > 0 ? (size_t)l3 : 0;
    have_avx2 = plan.features >> AVX2 & 1;
    if (!have_avx2)
        return;
    /* Unknown cache sizes (some hypervisors hide them): a 32 MiB L3, 1 MiB L2. */
    plan.nt_threshold = (plan.l3 ? plan.l3 : (size_t)32 << 20) / 4;
    if (!(plan.features >> ERMS & 1))
        plan.bulk_stop = 0;
    else if (plan.features >> AMD & 1)
        plan.bulk_stop = plan.l2 ? plan.l2 : (size_t)1 << 20;
    else
        plan.bulk_stop = plan.nt_threshold;
    if (plan.bulk_stop > plan.nt_threshold)
        plan.bulk_stop = plan.nt_threshold;
}

const struct mcsafe_copy_plan *mcsafe_plan(void)
{
    return &plan;
}

int mcsafe_copy_choice(size_t n)
{
    if (n < MCSAFE_SMALL_COPY)
        return PATH_SMALL;
    if (n < plan.bulk_stop)
        return PATH_BULK;
    return n < plan.nt_threshold ? PATH_VECTOR : PATH_VECTOR_NT;
}

/* vmovntdq needs 32-byte alignment; a whole 64-byte line per group of stores
 * lets each write-combining buffer go out full. */
static size_t copy_nt(void *dst, const void *src, size_t n, struct mcsafe_fault *rec)
{
    size_t head = (size_t)(-(uintptr_t)dst & 63);
    if (head > n)
        head = n;
    size_t left = mcsafe_copy_small(dst, src, head, rec);
    if (left)
        return left + (n - head);
    return mcsafe_copy_avx2_nt((char *)dst + head, (const char *)src + head, n - head, rec);
}

size_t mcsafe_copy_path(int path, void *dst, const void *src, size_t n,
                        struct mcsafe_fault *rec)
{
    switch (path) {
    case PATH_SMALL:
        return mcsafe_copy_small(dst, src, n, rec);
    case PATH_BULK:
        return mcsafe_copy_bulk(dst, src, n, rec);
    case PATH_VECTOR:
        return have_avx2 ? mcsafe_copy_avx2(dst, src, n, rec) : mcsafe_copy_bulk(dst, src, n, rec);
    default:
        return have_avx2 ? copy_nt(dst, src, n, rec) : mcsafe_copy_bulk(dst, src, n, rec);
    }
}

size_t mcsafe_copy_large(void *dst, const void *src, size_t n, struct mcsafe_fault *rec)
{
    return mcsafe_copy_path(mcsafe_copy_choice(n), dst, src, n, rec);
}

/* The scan takes the AVX2 loop where the CPU has it. Measured on an Intel Xeon
 * under KVM, 1 GiB in all: from a 1 MiB buffer (L2) 8.8 ms, against 16 ms for
 * the SSE2 loop and 16 ms for the copy through a 16 KiB sink; from 64 MiB (L3)
 * and 1 GiB (memory) every loop runs at the memory's speed (37 and 85 ms). */
const char *const mcsafe_scan_path_names[] = {"sse2", "avx2", NULL};

size_t mcsafe_scan_path(int path, const void *src, size_t n, struct mcsafe_fault *rec)
{
    return path == 1 && have_avx2 ? mcsafe_scan_avx2(src, n, rec) : mcsafe_scan_sse2(src, n, rec);
}

size_t mcsafe_scan_all(const void *src, size_t n, struct mcsafe_fault *rec)
{
    return mcsafe_scan_path(1, src, n, rec);
}
