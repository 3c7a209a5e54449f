/* arm64 copy routines. Every load and store that may fault is covered by an
 * extable_site record; `extable build` turns the records into the table that
 * the signal handler searches. Both routines return the bytes NOT copied.
 *
 *   mcsafe_copy_bulk:  64-byte groups: two ldp of q-register pairs, then two
 *                      stp; the rest goes to the word path.
 *   mcsafe_copy_small: 32-byte groups (two ldp of x pairs, then two stp), then
 *                      8-byte words, then bytes.
 *
 * Exactness, as on x86-64 (see arch/x86_64/copy.c): a group or word fault
 * resumes at .Lfault_tail with x1/x0 at the start of the faulting group and x2
 * the bytes remaining from there; the handler has checked that the fault
 * address lies in [cursor, cursor + x2) and stored it and the side in the
 * record (x3). The tail copies the bytes before the fault address one at a
 * time and stops. A store that faults writes nothing to the faulting page;
 * bytes it or an earlier store of the group wrote before the fault address are
 * rewritten by the tail with the same values.
 *
 * Register use: x0 dst cursor, x1 src cursor, x2 bytes remaining, x3 the fault
 * record, x5 bytes beyond the fault that stay uncopied, x6-x9 and q0-q3 data.
 */
#include <stdint.h>

#include "mcsafe_core.h"

EXTABLE_RESERVE(2048);

#define SITE(a, b, pad, side, name)                                             \
    "    extable_site " a ", " b ", " pad ", kind=" EXTABLE_STR(EXTABLE_KIND_SHORT_COPY) \
    ", flags=" EXTABLE_STR(EXTABLE_FLAG_MC_SAFE) ", side=" EXTABLE_STR(side)    \
    ", reg=2, src=1, dst=0, rec=3, name=" name "\n"

__asm__(
    EXTABLE_ASM_MACROS
    "    .text\n"
    MCSAFE_ASM_FUNC("mcsafe_copy_bulk")
    "    mov x5, #0\n"
    "    cmp x2, #64\n"
    "    b.lo .Lwords\n"
    ".Lbulk_ld:\n"
    "    ldp q0, q1, [x1]\n"
    "    ldp q2, q3, [x1, #32]\n"
    ".Lbulk_st:\n"
    "    stp q0, q1, [x0]\n"
    "    stp q2, q3, [x0, #32]\n"
    ".Lbulk_end:\n"
    "    add x1, x1, #64\n"
    "    add x0, x0, #64\n"
    "    sub x2, x2, #64\n"
    "    cmp x2, #64\n"
    "    b.hs .Lbulk_ld\n"
    "    b .Lwords\n"
    "    .size mcsafe_copy_bulk, .-mcsafe_copy_bulk\n"
    SITE(".Lbulk_ld", ".Lbulk_st", ".Lfault_tail", EXTABLE_SIDE_SRC, "bulk_load")
    SITE(".Lbulk_st", ".Lbulk_end", ".Lfault_tail", EXTABLE_SIDE_DST, "bulk_store")

    MCSAFE_ASM_FUNC("mcsafe_copy_small")
    "    mov x5, #0\n"
    "    cmp x2, #32\n"
    "    b.lo .Lwords\n"
    ".Lgroup_ld:\n"
    "    ldp x6, x7, [x1]\n"
    "    ldp x8, x9, [x1, #16]\n"
    ".Lgroup_st:\n"
    "    stp x6, x7, [x0]\n"
    "    stp x8, x9, [x0, #16]\n"
    ".Lgroup_end:\n"
    "    add x1, x1, #32\n"
    "    add x0, x0, #32\n"
    "    sub x2, x2, #32\n"
    "    cmp x2, #32\n"
    "    b.hs .Lgroup_ld\n"
    ".Lwords:\n"
    "    cmp x2, #8\n"
    "    b.lo .Lbytes\n"
    ".Lword_ld:\n"
    "    ldr x6, [x1]\n"
    ".Lword_st:\n"
    "    str x6, [x0]\n"
    ".Lword_end:\n"
    "    add x1, x1, #8\n"
    "    add x0, x0, #8\n"
    "    sub x2, x2, #8\n"
    "    b .Lwords\n"
    ".Lbytes:\n"
    "    cbz x2, .Ldone\n"
    ".Lbyte_ld:\n"
    "    ldrb w6, [x1]\n"
    ".Lbyte_st:\n"
    "    strb w6, [x0]\n"
    ".Lbyte_end:\n"
    "    add x1, x1, #1\n"
    "    add x0, x0, #1\n"
    "    subs x2, x2, #1\n"
    "    b.ne .Lbyte_ld\n"
    ".Ldone:\n"
    "    mov x0, x5\n"
    "    ret\n"
    ".Lbyte_fault:\n"
    "    add x0, x2, x5\n"
    "    ret\n"
    /* A group or word fault: copy the bytes before the fault address, then stop. */
    ".Lfault_tail:\n"
    "    ldr x6, [x3, #" EXTABLE_STR(MCSAFE_FAULT_ADDR) "]\n"
    "    ldr w7, [x3, #" EXTABLE_STR(MCSAFE_FAULT_SIDE) "]\n"
    "    cmp w7, #" EXTABLE_STR(EXTABLE_SIDE_SRC) "\n"
    "    b.ne 1f\n"
    "    sub x6, x6, x1\n"
    "    b 2f\n"
    "1:  sub x6, x6, x0\n"
    "2:  sub x5, x2, x6\n"
    "    mov x2, x6\n"
    "    b .Lbytes\n"
    "    .size mcsafe_copy_small, .-mcsafe_copy_small\n"
    MCSAFE_SMALL_COPY_SITES(SITE)
);

/* The scan: every byte of the source loaded, nothing stored (see
 * arch/x86_64/copy.c). 64-byte groups of two ldp of q-register pairs, then
 * 8-byte words, then bytes; a group or word fault resumes at .Lscan_tail, which
 * loads the bytes before the fault address one at a time and stops, as the
 * copy's tail does. The sites name no destination register.
 *
 * Register use: x1 cursor, x2 bytes remaining, x3 the fault record, x5 bytes
 * beyond the fault that stay unread; the C arguments (src, n, rec) move there
 * first. Returns the bytes NOT read. */
#define SCAN_SITE(a, b, pad, name)                                              \
    "    extable_site " a ", " b ", " pad ", kind=" EXTABLE_STR(EXTABLE_KIND_SHORT_COPY) \
    ", flags=" EXTABLE_STR(EXTABLE_FLAG_MC_SAFE) ", side=" EXTABLE_STR(EXTABLE_SIDE_SRC) \
    ", reg=2, src=1, rec=3, name=" name "\n"

__asm__(
    "    .text\n"
    MCSAFE_ASM_FUNC("mcsafe_scan_all")
    "    mov x3, x2\n"
    "    mov x2, x1\n"
    "    mov x1, x0\n"
    "    mov x5, #0\n"
    "    cmp x2, #64\n"
    "    b.lo .Lscan_words\n"
    ".Lscan_group_ld:\n"
    "    ldp q0, q1, [x1]\n"
    "    ldp q2, q3, [x1, #32]\n"
    ".Lscan_group_end:\n"
    "    add x1, x1, #64\n"
    "    sub x2, x2, #64\n"
    "    cmp x2, #64\n"
    "    b.hs .Lscan_group_ld\n"
    ".Lscan_words:\n"
    "    cmp x2, #8\n"
    "    b.lo .Lscan_bytes\n"
    ".Lscan_word_ld:\n"
    "    ldr x6, [x1]\n"
    ".Lscan_word_end:\n"
    "    add x1, x1, #8\n"
    "    sub x2, x2, #8\n"
    "    b .Lscan_words\n"
    ".Lscan_bytes:\n"
    "    cbz x2, .Lscan_done\n"
    ".Lscan_byte_ld:\n"
    "    ldrb w6, [x1]\n"
    ".Lscan_byte_end:\n"
    "    add x1, x1, #1\n"
    "    subs x2, x2, #1\n"
    "    b.ne .Lscan_byte_ld\n"
    ".Lscan_done:\n"
    "    mov x0, x5\n"
    "    ret\n"
    ".Lscan_byte_fault:\n"
    "    add x0, x2, x5\n"
    "    ret\n"
    ".Lscan_tail:\n"
    "    ldr x6, [x3, #" EXTABLE_STR(MCSAFE_FAULT_ADDR) "]\n"
    "    sub x6, x6, x1\n"
    "    sub x5, x2, x6\n"
    "    mov x2, x6\n"
    "    b .Lscan_bytes\n"
    "    .size mcsafe_scan_all, .-mcsafe_scan_all\n"
    SCAN_SITE(".Lscan_group_ld", ".Lscan_group_end", ".Lscan_tail", "scan_group_load")
    MCSAFE_SCAN_WORD_SITES(SCAN_SITE)
);

const char *const mcsafe_scan_path_names[] = {"ldp", NULL};

size_t mcsafe_scan_path(int path, const void *src, size_t n, struct mcsafe_fault *rec)
{
    (void)path;
    return mcsafe_scan_all(src, n, rec);
}

/* rep movsb's counterpart here is the ldp/stp loop of mcsafe_copy_bulk at every
 * size from MCSAFE_SMALL_COPY on. */
static const struct mcsafe_copy_plan plan = {.bulk_stop = SIZE_MAX, .nt_threshold = SIZE_MAX};
const char *const mcsafe_feature_names[] = {NULL};
const char *const mcsafe_path_names[] = {"small", "bulk", NULL};

void mcsafe_arch_init(void)
{
}

const struct mcsafe_copy_plan *mcsafe_plan(void)
{
    return &plan;
}

int mcsafe_copy_choice(size_t n)
{
    return n >= MCSAFE_SMALL_COPY;
}

size_t mcsafe_copy_large(void *dst, const void *src, size_t n, struct mcsafe_fault *rec)
{
    return mcsafe_copy_bulk(dst, src, n, rec);
}

size_t mcsafe_copy_path(int path, void *dst, const void *src, size_t n,
                        struct mcsafe_fault *rec)
{
    return path == 0 ? mcsafe_copy_small(dst, src, n, rec) : mcsafe_copy_bulk(dst, src, n, rec);
}
