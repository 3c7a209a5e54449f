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
 *   mcsafe_copy_avx2:  128-byte groups of AVX2 loads then stores, for copies
 *                      above L2 size, where AMD's rep movsb falls behind
 *                      (glibc's rep_movsb_stop_threshold); and _nt, with
 *                      non-temporal stores, above 3/4 of L3 (glibc's
 *                      non_temporal_threshold).
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

/* 128 bytes an iteration: four 32-byte loads, then four stores (regular or
 * non-temporal); the rest goes to the word path of mcsafe_copy_small, and a
 * fault to its tail, after vzeroupper (and sfence, so the non-temporal stores
 * are ordered before the tail rewrites any of them). */
#define VEC_LOOP(fn, store, fence)                                              \
    MCSAFE_ASM_FUNC(fn)                                                         \
    "    mov %rcx, %r8\n"                                                       \
    "    mov %rdx, %rcx\n"                                                      \
    "    xor %edx, %edx\n"                                                      \
    "    cmp $128, %rcx\n"                                                      \
    "    jb 2f\n"                                                               \
    ".L" fn "_ld:\n"                                                            \
    "    vmovdqu (%rsi), %ymm0\n"                                               \
    "    vmovdqu 32(%rsi), %ymm1\n"                                             \
    "    vmovdqu 64(%rsi), %ymm2\n"                                             \
    "    vmovdqu 96(%rsi), %ymm3\n"                                             \
    ".L" fn "_st:\n"                                                            \
    "    " store " %ymm0, (%rdi)\n"                                             \
    "    " store " %ymm1, 32(%rdi)\n"                                           \
    "    " store " %ymm2, 64(%rdi)\n"                                           \
    "    " store " %ymm3, 96(%rdi)\n"                                           \
    ".L" fn "_end:\n"                                                           \
    "    add $128, %rsi\n"                                                      \
    "    add $128, %rdi\n"                                                      \
    "    sub $128, %rcx\n"                                                      \
    "    cmp $128, %rcx\n"                                                      \
    "    jae .L" fn "_ld\n"                                                     \
    "2:  vzeroupper\n"                                                          \
    "    " fence "\n"                                                           \
    "    jmp .Lwords\n"                                                         \
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

size_t mcsafe_copy_avx2(void *dst, const void *src, size_t n, struct mcsafe_fault *rec);
size_t mcsafe_copy_avx2_nt(void *dst, const void *src, size_t n, struct mcsafe_fault *rec);

#define VECTOR_COPY (1u << 20)

static int have_avx2;
static size_t nt_threshold = SIZE_MAX;

void mcsafe_arch_init(void)
{
    __builtin_cpu_init();
    have_avx2 = __builtin_cpu_supports("avx2");
    long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
    nt_threshold = l3 > 0 ? (size_t)l3 / 4 * 3 : (size_t)32 << 20;
}

static size_t copy_nt(void *dst, const void *src, size_t n, struct mcsafe_fault *rec)
{
    size_t head = (size_t)(-(uintptr_t)dst & 31);       /* vmovntdq needs 32-byte alignment */
    if (head > n)
        head = n;
    size_t left = mcsafe_copy_small(dst, src, head, rec);
    if (left)
        return left + (n - head);
    return mcsafe_copy_avx2_nt((char *)dst + head, (const char *)src + head, n - head, rec);
}

size_t mcsafe_copy_large(void *dst, const void *src, size_t n, struct mcsafe_fault *rec)
{
    if (n < VECTOR_COPY || !have_avx2)
        return mcsafe_copy_bulk(dst, src, n, rec);
    if (n < nt_threshold)
        return mcsafe_copy_avx2(dst, src, n, rec);
    return copy_nt(dst, src, n, rec);
}

const char *const mcsafe_path_names[] = {"small", "bulk", "vector", "vector_nt", NULL};

size_t mcsafe_copy_path(int path, void *dst, const void *src, size_t n,
                        struct mcsafe_fault *rec)
{
    switch (path) {
    case 0: return mcsafe_copy_small(dst, src, n, rec);
    case 1: return mcsafe_copy_bulk(dst, src, n, rec);
    case 2: return have_avx2 ? mcsafe_copy_avx2(dst, src, n, rec) : mcsafe_copy_bulk(dst, src, n, rec);
    default: return have_avx2 ? copy_nt(dst, src, n, rec) : mcsafe_copy_bulk(dst, src, n, rec);
    }
}
