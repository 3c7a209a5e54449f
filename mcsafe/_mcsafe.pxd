# The nogil copy, for other Cython modules:
#
#     from mcsafe._mcsafe cimport copy_nogil, mcsafe_fault
#
#     cdef mcsafe_fault rec
#     cdef size_t done
#     with nogil:
#         done = copy_nogil(dst, src, n, &rec)   # bytes copied; rec.side != 0 on a fault
#
# Compile with include_dirs=mcsafe.get_include().

from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t, uintptr_t

cdef extern from "mcsafe_core.h" nogil:
    struct mcsafe_fault:
        uint64_t addr       # si_addr of the fault
        uint32_t side       # 0 no fault, 1 source, 2 destination
        int32_t signo
        int32_t code

cdef size_t copy_nogil(void *dst, const void *src, size_t n, mcsafe_fault *rec) noexcept nogil
