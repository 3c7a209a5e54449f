/* unwind.c: the `unwind` handler kind. A fault anywhere in a covered function
 * returns from that function to its caller, as if it had returned a value:
 * the return register holds the value (-EFAULT by default), the stack pointer
 * is the caller's, and every callee-saved register the function saved holds
 * the caller's value again.
 *
 * Rules, on top of handler.c's (this runs in the signal handler):
 *
 *  1. Nothing is interpreted here. The compiler turned the function's
 *     call-frame information into rows at build time (docs/FORMAT.md, "Unwind
 *     rows"; extable/cfi.py) and registry.c validated them: one binary search
 *     finds the row in effect at the PC, which says where the CFA (the
 *     caller's stack pointer) is, as a register plus an offset, and where each
 *     slot (a callee-saved register, the return address) was saved, as an
 *     offset from the CFA. Then a few loads. No DWARF, no libgcc unwinder, no
 *     malloc, no lock.
 *  2. Loads come only from the interrupted function's own frame: every slot
 *     lies in [sp - red zone, cfa), 8-byte aligned, with cfa >= sp. A row says
 *     "saved" only after the function's own save instruction ran, so each slot
 *     was written by that thread moments before, on its own stack: it is
 *     mapped. The one way such a load can fault is a poisoned stack page; the
 *     fault is then blocked (rule 6 of handler.c) and the kernel kills the
 *     process with it, as the function's own epilogue would have had it
 *     returned. (A fault-safe read, process_vm_readv, costs 0.8 us for one
 *     slot and 6.7 us for twenty here: more than the signal round trip
 *     itself.)
 *  3. All or nothing: every slot is read before the context changes, and a
 *     row that does not hold (a CFA below the stack pointer, a slot outside
 *     the frame) leaves the context untouched and the fault unclaimed: it is
 *     forwarded as if mcsafe had never seen it.
 *  4. The table is trusted to be right, as the compiler's call-frame
 *     information is by every unwinder: the rows describe what the compiler
 *     said the code does (GCC and Clang emit it for every instruction on
 *     x86-64 and arm64 Linux). extable build refuses what a row cannot say.
 */
#define _GNU_SOURCE
#include <stdint.h>

#include "mcsafe_core.h"
#include "unwind.h"

/* The row in effect at off, in the sub-ranges of entry e; NULL if none. */
static const int16_t *row_at(const struct mcsafe_module *m, const struct extable_entry *e,
                             uint32_t off, int32_t *cfa_off, unsigned *cfa_reg)
{
    size_t lo = 0, hi = m->nunwind;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (m->unwind_ips[mid] <= off)
            lo = mid + 1;
        else
            hi = mid;
    }
    /* registry.c proved a row starts at every unwind entry's start */
    if (!lo || m->unwind_ips[lo - 1] < e->start)
        return NULL;
    const struct extable_unwind_row *row =
        (const void *)(m->unwind_rows + (size_t)m->unwind_idx[lo - 1] * m->row_size);
    *cfa_off = row->cfa_off;
    *cfa_reg = row->cfa_reg;
    return row->save;
}

int mcsafe_unwind(const struct mcsafe_module *m, const struct extable_entry *e, unsigned reg,
                  int32_t value, void *ucontext)
{
    ucontext_t *uc = ucontext;
    int32_t cfa_off;
    unsigned cfa_reg;
    const int16_t *save = row_at(m, e, (uint32_t)(arch_pc(uc) - m->base), &cfa_off, &cfa_reg);
    if (!save)
        return 0;
    uintptr_t sp = arch_unwind_sp(uc);
    uintptr_t base = cfa_reg == MCSAFE_ARCH_SP ? sp : arch_reg(uc, cfa_reg);
    uintptr_t cfa = base + (uintptr_t)(uint32_t)cfa_off;        /* cfa_off >= 0: validated */
    if (cfa < base || cfa < sp || cfa % 8)
        return 0;
    uint64_t val[MCSAFE_UNWIND_SLOTS] = {0};
    for (int k = 0; k < MCSAFE_UNWIND_SLOTS; k++) {
        if (!save[k])
            continue;                    /* not saved: the register still holds it */
        uintptr_t at = cfa - (uintptr_t)(-(intptr_t)save[k]);   /* save < 0: validated */
        if (at > cfa || at + MCSAFE_UNWIND_REDZONE < sp || cfa - at < 8)
            return 0;
        val[k] = *(const volatile uint64_t *)at;
    }
    return arch_unwind(uc, save, val, cfa, reg, value);
}
