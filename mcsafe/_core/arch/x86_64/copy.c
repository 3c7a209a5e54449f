/* x86-64 copy routines. Every load and store that may fault is covered by an
 * extable_site record; `extable build` turns the records into the table that
 * the signal handler searches. Both routines return the bytes NOT copied.
 *
 *   mcsafe_copy_bulk:  one `rep movsb`. On a fault %rcx is the exact number
 *                      of bytes remaining (as in the kernel's
 *                      copy_mc_enhanced_fast_string).
 *   mcsafe_copy_small: 32-byte groups (four loads, then four stores), then
 *                      8-byte words, then bytes.
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
#include "mcsafe_core.h"

/* The table `extable build` writes; 48 + 16 per entry + 16 per descriptor. */
EXTABLE_RESERVE(2048);

#define SITE(a, b, pad, side, name)                                             \
    "    extable_site " a ", " b ", " pad ", kind=" EXTABLE_STR(EXTABLE_KIND_SHORT_COPY) \
    ", flags=" EXTABLE_STR(EXTABLE_FLAG_MC_SAFE) ", side=" EXTABLE_STR(side)    \
    ", reg=" EXTABLE_STR(EXTABLE_REG_RCX) ", src=" EXTABLE_STR(EXTABLE_REG_RSI) \
    ", dst=" EXTABLE_STR(EXTABLE_REG_RDI) ", rec=" EXTABLE_STR(EXTABLE_REG_R8)  \
    ", name=" name "\n"

__asm__(
    EXTABLE_ASM_MACROS
    "    .text\n"
    "    .p2align 4\n"
    "    .globl mcsafe_copy_bulk\n"
    "    .hidden mcsafe_copy_bulk\n"
    "    .type mcsafe_copy_bulk, @function\n"
    "mcsafe_copy_bulk:\n"
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

    "    .p2align 4\n"
    "    .globl mcsafe_copy_small\n"
    "    .hidden mcsafe_copy_small\n"
    "    .type mcsafe_copy_small, @function\n"
    "mcsafe_copy_small:\n"
    "    mov %rcx, %r8\n"
    "    mov %rdx, %rcx\n"
    "    xor %edx, %edx\n"
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
    SITE(".Lgroup_ld", ".Lgroup_st", ".Lfault_tail", EXTABLE_SIDE_SRC, "group_load")
    SITE(".Lgroup_st", ".Lgroup_end", ".Lfault_tail", EXTABLE_SIDE_DST, "group_store")
    SITE(".Lword_ld", ".Lword_st", ".Lfault_tail", EXTABLE_SIDE_SRC, "word_load")
    SITE(".Lword_st", ".Lword_end", ".Lfault_tail", EXTABLE_SIDE_DST, "word_store")
    SITE(".Lbyte_ld", ".Lbyte_st", ".Lbyte_fault", EXTABLE_SIDE_SRC, "byte_load")
    SITE(".Lbyte_st", ".Lbyte_end", ".Lbyte_fault", EXTABLE_SIDE_DST, "byte_store")
);
