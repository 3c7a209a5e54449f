/* mcsafe_core.h: the C core of mcsafe, shared by the copy routines, the
 * registry of published tables, the signal handler and the Cython layer.
 */
#ifndef MCSAFE_CORE_H
#define MCSAFE_CORE_H

#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "extable.h"

/* Where a fault happened, filled by the signal handler through the register a
 * descriptor names as `rec`. Lives on the caller's stack: one per copy, never
 * shared between threads. The copy routines read `addr` and `side` at their
 * landing pad, so the offsets are part of the assembly's contract. */
struct mcsafe_fault {
    uint64_t addr;      /* 0: si_addr */
    uint32_t side;      /* 8: EXTABLE_SIDE_SRC or EXTABLE_SIDE_DST; 0 = no fault */
    int32_t  signo;     /* 12: SIGBUS or SIGSEGV */
    int32_t  code;      /* 16: si_code */
    uint32_t pad;
};
#define MCSAFE_FAULT_ADDR 0
#define MCSAFE_FAULT_SIDE 8

/* Copies below this many bytes take the word path; larger ones the
 * architecture's choice (mcsafe_copy_large). Measured in benchmarks/
 * (test_small_copy_threshold): on AMD EPYC the SSE word path beats rep movsb
 * up to 1 KiB and loses from 2 KiB; on an Intel Xeon with FSRM (Sapphire
 * Rapids class) the two cross between 1 and 2 KiB too. */
#define MCSAFE_SMALL_COPY 1536

/* The start of an assembly routine in arch/<arch>/copy.c: aligned, global
 * but hidden (never exported from the extension), typed for the symbol table
 * (extable reads function sizes from it). */
#define MCSAFE_ASM_FUNC(name)                                                   \
    "    .p2align 4\n"                                                          \
    "    .globl " name "\n"                                                     \
    "    .hidden " name "\n"                                                    \
    "    .type " name ", %function\n"                                           \
    name ":\n"

/* The sites of the word path, the same labels on every architecture: each
 * group of loads guards the source, each group of stores the destination;
 * group and word faults finish in .Lfault_tail, byte faults in .Lbyte_fault.
 * SITE(start, end, landing, side, name) is the architecture's extable_site. */
#define MCSAFE_SMALL_COPY_SITES(SITE)                                           \
    SITE(".Lgroup_ld", ".Lgroup_st", ".Lfault_tail", EXTABLE_SIDE_SRC, "group_load")   \
    SITE(".Lgroup_st", ".Lgroup_end", ".Lfault_tail", EXTABLE_SIDE_DST, "group_store") \
    SITE(".Lword_ld", ".Lword_st", ".Lfault_tail", EXTABLE_SIDE_SRC, "word_load")      \
    SITE(".Lword_st", ".Lword_end", ".Lfault_tail", EXTABLE_SIDE_DST, "word_store")    \
    SITE(".Lbyte_ld", ".Lbyte_st", ".Lbyte_fault", EXTABLE_SIDE_SRC, "byte_load")      \
    SITE(".Lbyte_st", ".Lbyte_end", ".Lbyte_fault", EXTABLE_SIDE_DST, "byte_store")

/* The scan's word and byte sites, the same labels on every architecture: word
 * faults finish in .Lscan_tail, byte faults in .Lscan_byte_fault. SITE(start,
 * end, landing, name) is the architecture's scan site (source only). */
#define MCSAFE_SCAN_WORD_SITES(SITE)                                            \
    SITE(".Lscan_word_ld", ".Lscan_word_end", ".Lscan_tail", "scan_word_load")     \
    SITE(".Lscan_byte_ld", ".Lscan_byte_end", ".Lscan_byte_fault", "scan_byte_load")

/* The per-architecture routines (arch/<arch>/copy.c). All return the number
 * of bytes NOT copied, as the kernel's copy_mc_* do. */
void mcsafe_arch_init(void);             /* chooses the plan below; once, at import */
size_t mcsafe_copy_small(void *dst, const void *src, size_t n, struct mcsafe_fault *rec);
size_t mcsafe_copy_bulk(void *dst, const void *src, size_t n, struct mcsafe_fault *rec);
size_t mcsafe_copy_large(void *dst, const void *src, size_t n, struct mcsafe_fault *rec);
/* One path by index into mcsafe_path_names, for tests and benchmarks. */
extern const char *const mcsafe_path_names[];
size_t mcsafe_copy_path(int path, void *dst, const void *src, size_t n,
                        struct mcsafe_fault *rec);
/* What mcsafe_arch_init chose from the CPU: the path (index into
 * mcsafe_path_names) of a copy of n bytes, and why. Copies from
 * MCSAFE_SMALL_COPY up to bulk_stop take the bulk path, then the vector loop
 * up to nt_threshold, then the non-temporal one (SIZE_MAX: never). */
struct mcsafe_copy_plan {
    size_t bulk_stop, nt_threshold;
    size_t l2, l3;                        /* cache sizes, 0 if unknown */
    unsigned features;                    /* bit i: mcsafe_feature_names[i] */
};
extern const char *const mcsafe_feature_names[];
const struct mcsafe_copy_plan *mcsafe_plan(void);
int mcsafe_copy_choice(size_t n);

/* The copy: returns bytes copied; on a fault `rec` says where. */
static inline size_t mcsafe_copy(void *dst, const void *src, size_t n,
                                 struct mcsafe_fault *rec)
{
    rec->side = 0;
    if (n < MCSAFE_SMALL_COPY)
        return n - mcsafe_copy_small(dst, src, n, rec);
    return n - mcsafe_copy_large(dst, src, n, rec);
}

/* The scan (arch/<arch>/copy.c): loads every byte of [src, src + n) and stores
 * nothing; returns the bytes NOT read, with the copy's exactness (the count
 * stops at the first byte that could not be read; rec says where). */
size_t mcsafe_scan_all(const void *src, size_t n, struct mcsafe_fault *rec);
/* One scan path by index into mcsafe_scan_path_names, for tests and benchmarks. */
extern const char *const mcsafe_scan_path_names[];
size_t mcsafe_scan_path(int path, const void *src, size_t n, struct mcsafe_fault *rec);

/* The scan: returns the bytes readable before the first that faulted (n if
 * none); on a fault `rec` says where. */
static inline size_t mcsafe_scan(const void *src, size_t n, struct mcsafe_fault *rec)
{
    rec->side = 0;
    return n - mcsafe_scan_all(src, n, rec);
}

/* registry.c: validated tables, published for the handler. */
struct mcsafe_module {
    uintptr_t base;                       /* load bias */
    uintptr_t lo, hi;                     /* [lo, hi): every entry lies inside */
    const struct extable_entry *entries;
    const struct extable_desc *descs;
    uint32_t nentries, ndescs;
    const void *table;                    /* the key: the loaded header, or for a table
                                             read from the file, an address in its object */
    const void *copy;                     /* the private read-only copy the handler reads */
    size_t size;
    unsigned owners;                      /* registrations held; writers only */
    void *held;                           /* its object, held loaded (one dlopen
                                             reference per owner), or NULL */
    int pinned;                           /* mcsafe's own: never removed */
    char name[64];
    /* A version-2 table's unwind rows (docs/FORMAT.md), inside `copy`; 0 and NULL
     * otherwise. ips[] are sorted sub-range starts, idx[] their rows. */
    const uint32_t *unwind_ips, *unwind_idx;
    const unsigned char *unwind_rows;
    uint32_t nunwind, nrows, row_size;
};

/* unwind.c: for an `unwind` entry, rewrite the context to return from the
 * interrupted function to its caller with register `reg` = value; 0 (context
 * untouched) if the row does not hold. Async-signal-safe. */
int mcsafe_unwind(const struct mcsafe_module *m, const struct extable_entry *e, unsigned reg,
                  int32_t value, void *ucontext);

/* Proves [table, table + size) lies in one loaded, readable segment of the
 * object around it, copies it into private memory, validates the copy against
 * that object's executable segments, makes it read-only and publishes it (or
 * adds an owner to an equal table already published there). Returns 0, or -1
 * with a one-line reason in err. Not async-signal-safe (allocates). */
int mcsafe_register(const void *table, size_t size, const char *name,
                    char *err, size_t errlen);
/* The same for a table read from the file of a loaded object (a non-loaded
 * section), once the caller proved the file is that object; `anchor` is an
 * address inside it, and the registration's key. */
int mcsafe_register_file_table(const void *bytes, size_t size, uintptr_t anchor,
                               const char *name, char *err, size_t errlen);
/* mcsafe's own table, pinned. */
int mcsafe_register_own(char *err, size_t errlen);
/* Drops one owner of the table registered under `table`; 0, or -1 if nobody
 * (but mcsafe itself, for its own table) holds it. */
int mcsafe_unregister(const void *table);
/* Async-signal-safe: the entry covering pc, and its module, or NULL. Call it,
 * and use what it returns, only between mcsafe_readers_enter() and _leave():
 * writers free retired tables only while no reader is counted. */
const struct extable_entry *mcsafe_lookup(uintptr_t pc, const struct mcsafe_module **mod);
extern atomic_long mcsafe_readers;
static inline void mcsafe_readers_enter(void)
{
    atomic_fetch_add_explicit(&mcsafe_readers, 1, memory_order_seq_cst);
}
static inline void mcsafe_readers_leave(void)
{
    atomic_fetch_sub_explicit(&mcsafe_readers, 1, memory_order_release);
}
size_t mcsafe_published(void);

/* The loaded objects (dl_iterate_phdr), with their program headers and GNU
 * build-id as loaded, for proving that a file is one of them. */
struct mcsafe_object_info {
    char *name;
    uintptr_t bias, anchor;               /* load bias; lowest PT_LOAD address */
    unsigned char *phdrs;
    size_t phdrs_size;
    unsigned char build_id[64];
    size_t build_id_size;
};
struct mcsafe_objects {
    struct mcsafe_object_info *list;
    size_t n, cap;
    int safe;                             /* read through mcsafe's own copy */
};
int mcsafe_loaded_objects(struct mcsafe_objects *out);
void mcsafe_free_objects(struct mcsafe_objects *all);

/* The core's own table, from the reserved section. */
const void *mcsafe_own_table(size_t *size);

/* handler.c */
#define MCSAFE_AO_LOG 64
struct mcsafe_ao_record {
    uint64_t addr;
    int64_t sec, nsec;                    /* CLOCK_REALTIME */
    _Atomic unsigned long seq;            /* ticket + 1 once written */
};
/* Copies up to max of the newest records into out; total = notices ever seen. */
size_t mcsafe_ao_read(struct mcsafe_ao_record *out, size_t max, unsigned long *total);

/* Put mcsafe in front of the SIGSEGV and SIGBUS actions installed now, each
 * place in a chain its own generation (docs/HANDLER.md); idempotent. 0, or -1
 * with errno (ENOSPC: all MCSAFE_GENERATIONS of a signal are taken). */
#define MCSAFE_GENERATIONS 48
int mcsafe_install(void);
int mcsafe_generations_taken(int sig);    /* how many install() has taken for sig */
/* For a runtime that owns the SIGBUS/SIGSEGV handler: call it first from that
 * handler. 1 if the fault was a copy's and the context was rewritten to resume
 * it (return from the handler at once), 0 if it is not mcsafe's (handle it as
 * if mcsafe did not exist). Async-signal-safe; preserves errno; blocks every
 * signal while it looks the fault up. */
int mcsafe_handle_fault(int sig, siginfo_t *info, void *ucontext);
/* Whether one of mcsafe's entries is the installed action for sig; *handler
 * (if not NULL) gets the installed handler's address. */
int mcsafe_in_front(int sig, uintptr_t *handler);
int mcsafe_handler_active(void);          /* in front for both SIGBUS and SIGSEGV? */
/* Where a handler lives: its object's file name, the dynamic symbol exactly
 * at it (NULL if none: a static function) and its address in that file (less
 * the load bias); 0 if it lies in no loaded object. */
int mcsafe_handler_origin(uintptr_t address, const char **file, const char **symbol,
                          uintptr_t *vaddr);
unsigned long mcsafe_claimed_count(void); /* faults claimed so far, all threads */
/* Whether this thread blocks SIGBUS or SIGSEGV. The kernel then kills the
 * process on any such fault (it forces the default action on a blocked
 * synchronous fault): no copy can be recovered on this thread. One syscall. */
int mcsafe_faults_blocked(void);

#endif /* MCSAFE_CORE_H */
