/* arm64: the caller's registers from an unwind row (unwind.c), as AAPCS64
 * defines them: x19-x29 and x30 (the link register, which holds the return
 * address) callee-saved, and the low 64 bits of v8-v15 (d8-d15), which live in
 * the signal frame's FP/SIMD record (and, when the frame carries live SVE
 * registers, in the low bits of z8-z15 too: sigreturn restores from those). */
#ifndef MCSAFE_ARCH_UNWIND_H
#define MCSAFE_ARCH_UNWIND_H

#include <string.h>

#include "context.h"

#define MCSAFE_UNWIND_SLOTS   20         /* x19..x29, x30, d8..d15 */
#define MCSAFE_UNWIND_RA      11         /* x30 */
#define MCSAFE_UNWIND_D8      12
#define MCSAFE_UNWIND_REDZONE 0          /* AAPCS64 has none: below sp is the kernel's */

#define MCSAFE_FPSIMD_MAGIC   0x46508001u
#define MCSAFE_SVE_MAGIC      0x53564501u
#define MCSAFE_EXTRA_MAGIC    0x45585401u

/* The interrupted stack pointer. */
static inline uintptr_t arch_unwind_sp(const ucontext_t *uc)
{
    return (uintptr_t)uc->uc_mcontext.sp;
}

/* The record with `magic` in the signal frame (uc_mcontext.__reserved, and the
 * extra space an EXTRA record points to), and its size; NULL if absent. */
static inline unsigned char *arch_frame_record(ucontext_t *uc, uint32_t magic, uint32_t *size)
{
    unsigned char *p = (unsigned char *)uc->uc_mcontext.__reserved;
    unsigned char *end = p + sizeof uc->uc_mcontext.__reserved;
    for (int area = 0; area < 2; area++) {
        unsigned char *extra = NULL;
        uint32_t extra_size = 0;
        while (p + 8 <= end) {
            uint32_t m, n;
            memcpy(&m, p, 4);
            memcpy(&n, p + 4, 4);
            if (m == 0 || n < 8 || n > (size_t)(end - p))
                break;
            if (m == magic) {
                *size = n;
                return p;
            }
            if (m == MCSAFE_EXTRA_MAGIC && n >= 20) {
                uint64_t datap;
                memcpy(&datap, p + 8, 8);
                memcpy(&extra_size, p + 16, 4);
                extra = (unsigned char *)(uintptr_t)datap;
            }
            p += n;
        }
        if (!extra)
            break;
        p = extra;
        end = extra + extra_size;
    }
    return NULL;
}

/* Write the caller's state: every saved slot, SP = cfa, PC = the return
 * address (x30's saved value, or x30 itself while it is unsaved), `reg` =
 * value. 0, with the context untouched, if a d-register must be restored and
 * the frame has no FP/SIMD record to hold it. */
static inline int arch_unwind(ucontext_t *uc, const int16_t *save, const uint64_t *val,
                              uintptr_t cfa, unsigned reg, int32_t value)
{
    unsigned char *fp = NULL, *sve = NULL;
    uint32_t fp_size = 0, sve_size = 0;
    int any_d = 0;
    for (int k = MCSAFE_UNWIND_D8; k < MCSAFE_UNWIND_SLOTS; k++)
        any_d |= save[k] != 0;
    if (any_d) {
        fp = arch_frame_record(uc, MCSAFE_FPSIMD_MAGIC, &fp_size);
        if (!fp || fp_size < 16 + 32 * 16)
            return 0;
        sve = arch_frame_record(uc, MCSAFE_SVE_MAGIC, &sve_size);
    }
    /* struct sve_context: head (8), u16 vl, flags, reserved[2]; the Z registers follow
     * at offset 16, vl bytes each, when the record is larger than that header. */
    uint16_t vl = 0;
    if (sve && sve_size > 16) {
        memcpy(&vl, sve + 8, 2);
        if (vl == 0 || vl % 16 || 16 + 16u * vl > sve_size)
            return 0;
    }
    uintptr_t ra = save[MCSAFE_UNWIND_RA] ? val[MCSAFE_UNWIND_RA] : uc->uc_mcontext.regs[30];
    for (int k = 0; k < MCSAFE_UNWIND_D8; k++)
        if (save[k])
            uc->uc_mcontext.regs[19 + k] = val[k];
    for (int k = MCSAFE_UNWIND_D8; k < MCSAFE_UNWIND_SLOTS; k++) {
        if (!save[k])
            continue;
        int v = 8 + k - MCSAFE_UNWIND_D8;
        memcpy(fp + 16 + 16 * v, &val[k], 8);             /* the low half of v8..v15 */
        if (vl)
            memcpy(sve + 16 + (size_t)vl * v, &val[k], 8);
    }
    uc->uc_mcontext.sp = cfa;
    uc->uc_mcontext.pc = ra;
    uc->uc_mcontext.regs[reg] = (uint64_t)(int64_t)value;
    return 1;
}

#endif
