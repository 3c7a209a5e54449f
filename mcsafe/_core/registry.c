/* registry.c: validated exception tables, published for the signal handler.
 *
 * register() never reads a byte it has not proved to be there, and never
 * publishes memory it does not own:
 *
 *  1. The table's bytes must lie inside one loaded, readable PT_LOAD segment of
 *     the object around them (dl_iterate_phdr), checked before the first read.
 *     A table that is not in memory at all (`extable build --add-section`) is
 *     read from the file by registry.py, after it proved the file to be the
 *     loaded object, and handed over as bytes with an address inside that
 *     object.
 *  2. The bytes are copied into a private mapping (with mcsafe's own copy once
 *     its table is published, so even a page unmapped under us is a refusal,
 *     not a crash), validated there (magic, version, machine, bounds, sorted,
 *     non-overlapping, every address inside an executable segment of the
 *     object, every descriptor sane and safe), made read-only with mprotect,
 *     and only then published. A later write to the module's own table
 *     changes nothing the handler reads.
 *
 * A table that fails is never published, so a damaged table can make mcsafe
 * claim nothing, but never claim wrongly.
 *
 * Each registration has an owner count: register() adds an owner (a second
 * register of the same table is idempotent but counted), unregister() drops
 * one, and the table goes when the last owner does. mcsafe's own table is
 * pinned: it is never removed. Each owner also holds the object loaded (a
 * dlopen reference, as a module reference is taken in the kernel): a dlclose
 * by whoever loaded it leaves it mapped while a table of it is published, so
 * the handler never searches a table of code that is gone, nor claims a fault
 * of another object loaded at the same addresses.
 *
 * Publication is read-copy-update without the reclaim: writers (serialised by
 * a mutex that is never held across I/O, and re-initialised in a forked child)
 * build a new immutable array and swap one atomic pointer; the handler loads
 * that pointer once and never waits. Old arrays, and the copies of tables no
 * longer published, are retired, and freed by a later writer that sees no
 * handler inside a lookup (mcsafe_readers, counted around the search and the
 * fixup): a handler that entered after the swap can only have loaded the new
 * pointer.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <link.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "mcsafe_core.h"
#include "context.h"

#define MAX_SEGMENTS 16

struct registry {
    size_t n;
    struct registry *retired;       /* the one this replaced, until reclaimed */
    struct mcsafe_module mods[];
};

/* A copy no longer published, unmapped once no handler can be reading it. */
struct dropped {
    struct dropped *next;
    void *copy;
    size_t mapped;
};

atomic_long mcsafe_readers;
static struct dropped *dropped;     /* under writer_lock */

static _Atomic(struct registry *) current;
static pthread_mutex_t writer_lock = PTHREAD_MUTEX_INITIALIZER;

extern const unsigned char __start_extable_table[] __attribute__((visibility("hidden")));
extern const unsigned char __stop_extable_table[] __attribute__((visibility("hidden")));

const void *mcsafe_own_table(size_t *size)
{
    /* Read through the linker's symbols, never through the const array
     * itself: the compiler could fold reads of an all-zero const object. */
    *size = (size_t)(__stop_extable_table - __start_extable_table);
    return __start_extable_table;
}

static int fail(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -1;
}

/* dl_iterate_phdr holds the dynamic linker's lock, which glibc (2.36 here) does
 * not reset in a forked child: a fork while one of our walks runs on another
 * thread (a C API caller, without the GIL) would leave every later walk in the
 * child waiting forever. So our walks take phdr_lock, and fork() waits for the
 * one under way (short: no I/O) unless this very thread is inside it (a
 * handler forking on top of it). A walk by anyone else (C++ unwinding, dlopen)
 * during a fork can still leave the child's linker lock held: glibc's to fix. */
static pthread_mutex_t phdr_lock = PTHREAD_MUTEX_INITIALIZER;
static atomic_long phdr_owner;
static int fork_waited;

static int walk_objects(int (*callback)(struct dl_phdr_info *, size_t, void *), void *data)
{
    pthread_mutex_lock(&phdr_lock);
    atomic_store(&phdr_owner, syscall(SYS_gettid));
    int rc = dl_iterate_phdr(callback, data);
    atomic_store(&phdr_owner, 0);
    pthread_mutex_unlock(&phdr_lock);
    return rc;
}

static void before_fork(void)
{
    fork_waited = atomic_load(&phdr_owner) != syscall(SYS_gettid)
                  && pthread_mutex_lock(&phdr_lock) == 0;
}

static void after_fork_in_parent(void)
{
    if (fork_waited)
        pthread_mutex_unlock(&phdr_lock);
}

static void reset_in_child(void)
{
    /* The forking thread is not inside a lookup (it is not in a handler with
     * every signal blocked): any count left is other threads', gone here. */
    atomic_store(&mcsafe_readers, 0);
    pthread_mutex_init(&writer_lock, NULL);
    pthread_mutex_init(&phdr_lock, NULL);
    atomic_store(&phdr_owner, 0);
}

__attribute__((constructor)) static void registry_init(void)
{
    pthread_atfork(before_fork, after_fork_in_parent, reset_in_child);
}

static int own_published;

/* Copy n bytes that were proved to lie in a loaded segment; 0 if a page faulted.
 * Once mcsafe's own table is published and its handler installed, the copy is
 * mcsafe's own, so a page that vanished since (a file truncated under a loaded
 * object, a munmap) is a refusal, not a crash. `safe` says whether to use it. */
static int read_loaded(void *dst, const void *src, size_t n, int safe, uintptr_t *fault)
{
    struct mcsafe_fault rec;
    if (!safe) {
        memcpy(dst, src, n);
        return 1;
    }
    if (mcsafe_copy(dst, src, n, &rec) == n)
        return 1;
    *fault = rec.addr;
    return 0;
}

static int can_read_safely(void)
{
    return own_published && mcsafe_handler_active();
}

#define MAX_PHDRS 64

/* The object's program headers, read through read_loaded: a file truncated
 * under a loaded object takes its program headers with it. -1 if unreadable. */
static int copy_phdrs(const struct dl_phdr_info *info, ElfW(Phdr) *out, int safe)
{
    uintptr_t fault;
    if (info->dlpi_phnum > MAX_PHDRS
        || !read_loaded(out, info->dlpi_phdr, info->dlpi_phnum * sizeof *out, safe, &fault))
        return -1;
    return info->dlpi_phnum;
}

/* The PT_LOAD segments of the loaded object that contains `addr`. */
struct segments {
    uintptr_t addr;
    int safe;                       /* read program headers with mcsafe's copy */
    int found;
    uintptr_t bias;
    size_t n;
    uintptr_t lo[MAX_SEGMENTS], hi[MAX_SEGMENTS];
    uint32_t flags[MAX_SEGMENTS];
};

static int find_object(struct dl_phdr_info *info, size_t size, void *data)
{
    struct segments *s = data;
    ElfW(Phdr) phdrs[MAX_PHDRS];
    int phnum = copy_phdrs(info, phdrs, s->safe);
    (void)size;
    for (int i = 0; i < phnum; i++) {
        const ElfW(Phdr) *ph = &phdrs[i];
        uintptr_t lo = info->dlpi_addr + ph->p_vaddr;
        if (ph->p_type != PT_LOAD || s->addr < lo || s->addr - lo >= ph->p_memsz)
            continue;
        s->found = 1;
        s->bias = info->dlpi_addr;
        for (int j = 0; j < phnum && s->n < MAX_SEGMENTS; j++) {
            const ElfW(Phdr) *x = &phdrs[j];
            if (x->p_type == PT_LOAD) {
                s->lo[s->n] = info->dlpi_addr + x->p_vaddr;
                s->hi[s->n] = s->lo[s->n] + x->p_memsz;
                s->flags[s->n] = x->p_flags;
                s->n++;
            }
        }
        return 1;
    }
    return 0;
}

/* The executable segment holding addr, or -1. */
static int segment_of(const struct segments *s, uintptr_t addr)
{
    for (size_t i = 0; i < s->n; i++)
        if ((s->flags[i] & PF_X) && addr >= s->lo[i] && addr < s->hi[i])
            return (int)i;
    return -1;
}

/* Whether [addr, addr + size) lies inside one readable segment. */
static int readable_span(const struct segments *s, uintptr_t addr, size_t size)
{
    if (addr + size < addr)
        return 0;
    for (size_t i = 0; i < s->n; i++)
        if ((s->flags[i] & PF_R) && addr >= s->lo[i] && addr + size <= s->hi[i])
            return 1;
    return 0;
}

#define MAX_TABLE_BYTES (64u << 20)

static const char *reg_name(uint8_t reg, char *buf, size_t len)
{
#if MCSAFE_ARCH_MACHINE == 62
    static const char *const names[] = {"rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi"};
    if (reg < 8)
        return names[reg];
    snprintf(buf, len, "r%u", reg);
#else
    snprintf(buf, len, "x%u", reg);
#endif
    return buf;
}

/* The rules a descriptor must follow to be safe, not merely well-formed, as
 * extable/compiler.py's _unsafe() (docs/FORMAT.md, "Safety rules"): the
 * handler writes the fault record through `rec` and an errno entry's immediate
 * into `reg`; neither may be the stack pointer, nor a register the handler
 * reads for the same fault (a short_copy's count, src and dst; an errno's rec,
 * read after reg is set). A short_copy must name the buffer(s) it copies, or
 * it would claim every fault at its PC, and its count is not the stack
 * pointer. */
static int check_desc(const struct extable_desc *d, uint32_t i, uint32_t strings_size,
                      char *err, size_t errlen)
{
    char rb[8];
    if (d->kind < EXTABLE_KIND_FIXUP || d->kind > EXTABLE_KIND_UNWIND)
        return fail(err, errlen, "descriptor %u has unknown kind %u", i, d->kind);
    if (d->side > EXTABLE_SIDE_BOTH)
        return fail(err, errlen, "descriptor %u has unknown side %u", i, d->side);
    const uint8_t regs[] = {d->reg, d->src_reg, d->dst_reg, d->rec_reg};
    for (size_t r = 0; r < sizeof regs; r++)
        if (regs[r] != EXTABLE_NOREG && regs[r] >= MCSAFE_ARCH_NREGS)
            return fail(err, errlen, "descriptor %u names register %u", i, regs[r]);
    if (d->kind != EXTABLE_KIND_FIXUP && d->reg == EXTABLE_NOREG)
        return fail(err, errlen, "descriptor %u needs a register", i);
    if (d->rec_reg == MCSAFE_ARCH_SP)
        return fail(err, errlen, "descriptor %u: rec register %s is the stack pointer (the "
                    "handler would write over the interrupted stack)", i,
                    reg_name(d->rec_reg, rb, sizeof rb));
    if ((d->kind == EXTABLE_KIND_ERRNO || d->kind == EXTABLE_KIND_UNWIND)
        && d->reg == MCSAFE_ARCH_SP)
        return fail(err, errlen, "descriptor %u: %s register %s is the stack pointer", i,
                    d->kind == EXTABLE_KIND_ERRNO ? "errno" : "unwind's return",
                    reg_name(d->reg, rb, sizeof rb));
    if (d->kind == EXTABLE_KIND_UNWIND && d->rec_reg != EXTABLE_NOREG)
        return fail(err, errlen, "descriptor %u: unwind has a fault record register, but the "
                    "function it returns from is gone", i);
    if (d->kind == EXTABLE_KIND_SHORT_COPY && d->reg == MCSAFE_ARCH_SP)
        return fail(err, errlen, "descriptor %u: short_copy count register %s is the stack "
                    "pointer (a stack address as a byte count would claim faults far past "
                    "the buffers)", i, reg_name(d->reg, rb, sizeof rb));
    if (d->kind == EXTABLE_KIND_SHORT_COPY && d->src_reg == EXTABLE_NOREG
        && d->dst_reg == EXTABLE_NOREG)
        return fail(err, errlen, "descriptor %u: short_copy names neither a src nor a dst "
                    "register (it would claim every fault at its PC)", i);
    if (d->rec_reg != EXTABLE_NOREG && d->kind == EXTABLE_KIND_SHORT_COPY) {
        static const struct { const char *role, *why; } read[] = {
            {"count", "at an address that is a byte count"},
            {"src", "through the source pointer that faulted"},
            {"dst", "over the destination the copy reports as copied"},
        };
        const uint8_t used[] = {d->reg, d->src_reg, d->dst_reg};
        for (size_t r = 0; r < sizeof used; r++)
            if (used[r] == d->rec_reg)
                return fail(err, errlen, "descriptor %u: rec register %s is also the %s "
                            "register (the handler would write the fault record %s)", i,
                            reg_name(d->rec_reg, rb, sizeof rb), read[r].role, read[r].why);
    }
    if (d->rec_reg != EXTABLE_NOREG && d->kind == EXTABLE_KIND_ERRNO && d->reg == d->rec_reg)
        return fail(err, errlen, "descriptor %u: rec register %s is also the errno register "
                    "(the handler sets it to imm, then writes the fault record through it)",
                    i, reg_name(d->reg, rb, sizeof rb));
    if (d->name_off >= strings_size && strings_size)
        return fail(err, errlen, "descriptor %u name is out of range", i);
    return 0;
}

/* The handler kind of an entry: its descriptor's, or its classic word's type. */
static unsigned entry_kind(const struct extable_entry *e, const struct extable_desc *d)
{
    return e->data & EXTABLE_DATA_EXTENDED ? d[EXTABLE_DATA_INDEX(e->data)].kind
                                           : EXTABLE_DATA_TYPE(e->data);
}

/* The entry of the sorted table e[0..n) covering off, or n. */
static uint32_t covering(const struct extable_entry *e, uint32_t n, uint32_t off)
{
    uint32_t lo = 0, hi = n;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (e[mid].start <= off)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo && off < e[lo - 1].end ? lo - 1 : n;
}

/* No landing pad lies inside a covered range (docs/FORMAT.md): a fault after a
 * pad inside its own range resumes before the faulting instruction and faults
 * again, forever; one inside another entry's range is recovered again in turn.
 * The entries are already proved sorted and non-overlapping. */
static int check_pads(const struct extable_entry *e, const struct extable_desc *d, uint32_t n,
                      char *err, size_t errlen)
{
    for (uint32_t i = 0; i < n; i++) {
        if (entry_kind(&e[i], d) == EXTABLE_KIND_UNWIND)
            continue;                    /* no landing pad: it returns to its caller */
        uint32_t j = covering(e, n, e[i].fixup);
        if (j == i)
            return fail(err, errlen, "entry %u landing pad %#x lies inside the range it "
                        "covers (%#x..%#x): a fault there would repeat forever", i,
                        e[i].fixup, e[i].start, e[i].end);
        if (j < n)
            return fail(err, errlen, "entry %u landing pad %#x lies inside entry %u "
                        "(%#x..%#x): a landing pad must not be covered, or a fault could "
                        "repeat forever", i, e[i].fixup, j, e[j].start, e[j].end);
    }
    return 0;
}

#if MCSAFE_ARCH_MACHINE == 62
#define UNWIND_SLOTS EXTABLE_UNWIND_SLOTS_X86_64
#define CFA_REGS 16                      /* rax..r15 (rsp is 4) */
#else
#define UNWIND_SLOTS EXTABLE_UNWIND_SLOTS_AARCH64
#define CFA_REGS 32                      /* x0..x30, and sp as 31 */
#endif
#define ROW_SIZE ((6 + 2 * UNWIND_SLOTS + 3) / 4 * 4)

/* The rules unwind.c relies on (docs/FORMAT.md, "Unwind rows"): a version-2
 * table's unwind rows lie inside it; their sub-range starts increase strictly,
 * each inside an unwind entry, and every unwind entry has one at its start (so
 * the row in effect at a PC is that entry's); every unwind entry has fixup 0;
 * every row names a CFA register that exists with an offset that is not
 * negative, slots saved at negative multiples of 8 (or not saved) and, on
 * x86-64, the return address saved. A table with unwind entries must carry
 * rows. */
static int check_unwind(const void *table, size_t size, const struct extable_entry *e,
                        const struct extable_desc *d, struct mcsafe_module *m, char *err,
                        size_t errlen)
{
    const struct extable_header *h = table;
    uint32_t unwinding = 0;
    for (uint32_t i = 0; i < h->nentries; i++) {
        if (entry_kind(&e[i], d) != EXTABLE_KIND_UNWIND)
            continue;
        if (e[i].fixup)
            return fail(err, errlen, "entry %u is an unwind entry with a landing pad %#x", i,
                        e[i].fixup);
        unwinding++;
    }
    if (h->version < 2)
        return unwinding ? fail(err, errlen, "the table has unwind entries but no unwind "
                                "rows (version 1)") : 0;
    if (size < sizeof *h + sizeof(struct extable_unwind_header))
        return fail(err, errlen, "table is truncated: no room for its unwind header");
    const struct extable_unwind_header *u = (const void *)(h + 1);
    if (u->row_size != ROW_SIZE)
        return fail(err, errlen, "unwind rows are %u bytes, %u on this machine", u->row_size,
                    (unsigned)ROW_SIZE);
    if ((uint64_t)u->ips_off + 4ull * u->nunwind > size
        || (uint64_t)u->idx_off + 4ull * u->nunwind > size
        || (uint64_t)u->rows_off + (uint64_t)u->row_size * u->nrows > size
        || u->ips_off % 4 || u->idx_off % 4 || u->rows_off % 4)
        return fail(err, errlen, "unwind rows are truncated: counts and offsets exceed %zu "
                    "bytes", size);
    const uint32_t *ips = (const void *)((const char *)table + u->ips_off);
    const uint32_t *idx = (const void *)((const char *)table + u->idx_off);
    const unsigned char *rows = (const unsigned char *)table + u->rows_off;
    for (uint32_t k = 0; k < u->nunwind; k++) {
        if (k && ips[k] <= ips[k - 1])
            return fail(err, errlen, "unwind rows %u and %u are not in increasing order",
                        k - 1, k);
        uint32_t j = covering(e, h->nentries, ips[k]);
        if (j == h->nentries || entry_kind(&e[j], d) != EXTABLE_KIND_UNWIND)
            return fail(err, errlen, "unwind row %u at %#x is not inside an unwind entry", k,
                        ips[k]);
        if (idx[k] >= u->nrows)
            return fail(err, errlen, "unwind sub-range %u names row %u of %u", k, idx[k],
                        u->nrows);
    }
    for (uint32_t i = 0, k = 0; i < h->nentries; i++) {
        if (entry_kind(&e[i], d) != EXTABLE_KIND_UNWIND)
            continue;
        while (k < u->nunwind && ips[k] < e[i].start)
            k++;
        if (k == u->nunwind || ips[k] != e[i].start)
            return fail(err, errlen, "unwind entry %u has no row at its start %#x", i,
                        e[i].start);
    }
    for (uint32_t r = 0; r < u->nrows; r++) {
        const struct extable_unwind_row *row = (const void *)(rows + (size_t)r * u->row_size);
        if (row->cfa_reg >= CFA_REGS || row->cfa_off < 0 || row->flags)
            return fail(err, errlen, "unwind row %u: bad CFA rule (register %u, offset %d, "
                        "flags %#x)", r, row->cfa_reg, row->cfa_off, row->flags);
        for (int k = 0; k < UNWIND_SLOTS; k++)
            if (row->save[k] > 0 || row->save[k] % 8)
                return fail(err, errlen, "unwind row %u: slot %d saved at CFA%+d, not a "
                            "negative multiple of 8", r, k, row->save[k]);
#if MCSAFE_ARCH_MACHINE == 62
        if (!row->save[UNWIND_SLOTS - 1])
            return fail(err, errlen, "unwind row %u does not save the return address", r);
#endif
    }
    m->unwind_ips = ips;
    m->unwind_idx = idx;
    m->unwind_rows = rows;
    m->nunwind = u->nunwind;
    m->nrows = u->nrows;
    m->row_size = u->row_size;
    return 0;
}

/* Every check the compiler makes, on a private copy of the table, for an
 * object loaded at `base` with segments `s`. */
static int validate(const void *table, size_t size, uintptr_t base, const struct segments *s,
                    struct mcsafe_module *m, char *err, size_t errlen)
{
    const struct extable_header *h = table;
    if ((uint64_t)h->entries_off + 16ull * h->nentries > size
        || (uint64_t)h->descs_off + 16ull * h->ndescs > size
        || (uint64_t)h->strings_off + h->strings_size > size
        || h->entries_off % 4 || h->descs_off % 4)
        return fail(err, errlen, "table is truncated: counts and offsets exceed %zu bytes",
                    size);

    const struct extable_entry *e = (const void *)((const char *)table + h->entries_off);
    const struct extable_desc *d = (const void *)((const char *)table + h->descs_off);
    for (uint32_t i = 0; i < h->ndescs; i++)
        if (check_desc(&d[i], i, h->strings_size, err, errlen))
            return -1;
    for (uint32_t i = 0; i < h->nentries; i++) {
        if (e[i].start >= e[i].end)
            return fail(err, errlen, "entry %u is empty or reversed", i);
        if (i && e[i].start < e[i - 1].end)
            return fail(err, errlen, "entries %u and %u are %s", i - 1, i,
                        e[i].start < e[i - 1].start ? "unsorted" : "overlapping");
        int seg = segment_of(s, base + e[i].start);
        if (seg < 0 || base + e[i].end > s->hi[seg])
            return fail(err, errlen, "entry %u (%#x..%#x) is outside the module's code", i,
                        e[i].start, e[i].end);
        uint32_t data = e[i].data;
        if ((data & EXTABLE_DATA_EXTENDED) && EXTABLE_DATA_INDEX(data) >= h->ndescs)
            return fail(err, errlen, "entry %u names descriptor %u of %u", i,
                        EXTABLE_DATA_INDEX(data), h->ndescs);
        if (entry_kind(&e[i], d) != EXTABLE_KIND_UNWIND && segment_of(s, base + e[i].fixup) < 0)
            return fail(err, errlen, "entry %u landing pad %#x is outside the module's code",
                        i, e[i].fixup);
        if (data & EXTABLE_DATA_EXTENDED) {
            /* checked above */
        } else if (EXTABLE_DATA_TYPE(data) < EXTABLE_KIND_FIXUP
                   || EXTABLE_DATA_TYPE(data) > EXTABLE_KIND_UNWIND) {
            return fail(err, errlen, "entry %u has unknown classic type %u", i,
                        EXTABLE_DATA_TYPE(data));
        } else if (EXTABLE_DATA_TYPE(data) == EXTABLE_KIND_SHORT_COPY) {
            return fail(err, errlen, "entry %u: a classic short_copy word names no buffer "
                        "(it would claim every fault at its PC)", i);
        } else if ((EXTABLE_DATA_TYPE(data) == EXTABLE_KIND_ERRNO
                    || EXTABLE_DATA_TYPE(data) == EXTABLE_KIND_UNWIND)
                   && EXTABLE_DATA_REG(data) == MCSAFE_ARCH_SP) {
            return fail(err, errlen, "entry %u: %s register is the stack pointer", i,
                        EXTABLE_DATA_TYPE(data) == EXTABLE_KIND_ERRNO ? "errno"
                                                                       : "unwind's return");
        }
    }
    if (check_pads(e, d, h->nentries, err, errlen) || check_unwind(table, size, e, d, m, err,
                                                                    errlen))
        return -1;
    m->base = base;
    m->lo = h->nentries ? base + e[0].start : 0;
    m->hi = h->nentries ? base + e[h->nentries - 1].end : 0;
    m->entries = e;
    m->descs = d;
    m->nentries = h->nentries;
    m->ndescs = h->ndescs;
    return 0;
}

static size_t mapped_size(size_t size)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    return (size + page - 1) / page * page;
}

/* A private, page-aligned copy of [src, src + size), already proved to lie in
 * one readable segment. Once mcsafe's own table is published the copy is
 * mcsafe's own, so a page that vanished since is a short count, not a crash. */
static void *private_copy(const void *src, size_t size, size_t *mapped, char *err,
                          size_t errlen)
{
    size_t len = mapped_size(size);
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        fail(err, errlen, "cannot map %zu bytes for the table's copy", len);
        return NULL;
    }
    uintptr_t fault = 0;
    if (!read_loaded(p, src, size, can_read_safely(), &fault)) {
        munmap(p, len);
        fail(err, errlen, "table at %p faulted at %#lx while being read", src,
             (unsigned long)fault);
        return NULL;
    }
    *mapped = len;
    return p;
}

/* Under writer_lock. Swap in `next`; then, if no handler is inside a lookup,
 * none can hold anything retired (one that enters from now on loads `next`):
 * free the retired arrays and unmap the dropped copies. Sequentially
 * consistent, paired with mcsafe_readers_enter(). */
static void publish(struct registry *next)
{
    next->retired = atomic_load_explicit(&current, memory_order_relaxed);
    atomic_store_explicit(&current, next, memory_order_seq_cst);
    if (atomic_load_explicit(&mcsafe_readers, memory_order_seq_cst) != 0)
        return;                               /* a later writer reclaims them */
    /* Detached before they are freed: a child forked meanwhile (the lock is
     * re-initialised there) then leaks the rest, but never frees it twice. */
    struct registry *r = next->retired, *older;
    struct dropped *d = dropped, *after;
    next->retired = NULL;
    dropped = NULL;
    for (; r; r = older) {
        older = r->retired;
        free(r);
    }
    for (; d; d = after) {
        after = d->next;
        munmap(d->copy, d->mapped);
        free(d);
    }
}

/* Hold the object around addr loaded for one registration: a dlopen
 * reference (RTLD_NOLOAD, in the object's own namespace, found by the name it
 * was loaded under, and proved to be that very object). *held is NULL for the
 * main program, which is never unloaded, and for an address in no object,
 * which the caller refuses. 0, or -1 with the reason in err. */
static int hold_object(uintptr_t addr, void **held, char *err, size_t errlen)
{
    Dl_info info;
    struct link_map *map = NULL, *got = NULL;
    Lmid_t ns = LM_ID_BASE;
    *held = NULL;
    if (!dladdr1((void *)addr, &info, (void **)&map, RTLD_DL_LINKMAP) || !map
        || !map->l_name || !*map->l_name)
        return 0;                        /* in no object (refused later), or the program */
    if (dlinfo(map, RTLD_DI_LMID, &ns) != 0)   /* glibc: a link map is its handle */
        ns = LM_ID_BASE;
    void *h = dlmopen(ns, map->l_name, RTLD_LAZY | RTLD_NOLOAD);
    if (h && dlinfo(h, RTLD_DI_LINKMAP, &got) == 0 && got == map) {
        *held = h;
        return 0;
    }
    if (h)
        dlclose(h);
    return fail(err, errlen, "%s: cannot hold the object loaded while its table is published "
                "(dlopen by that name finds %s)", map->l_name, h ? "another object" : "none");
}

static void release_object(void *held)
{
    if (held)
        dlclose(held);
}

/* Validate a private copy, seal it and publish it under `key`; a second
 * registration of an equal table under the same key adds an owner. Consumes
 * the copy. */
static int publish_copy(const void *key, void *copy, size_t size, size_t mapped,
                        uintptr_t base, const struct segments *s, const char *name, int pinned,
                        void *held, char *err, size_t errlen)
{
    struct mcsafe_module m = {0};
    if (validate(copy, size, base, s, &m, err, errlen) || mprotect(copy, mapped, PROT_READ)) {
        if (!*err)
            fail(err, errlen, "cannot make the table's copy read-only");
        munmap(copy, mapped);
        return -1;
    }
    snprintf(m.name, sizeof m.name, "%s", name ? name : "");
    m.table = key;
    m.copy = copy;
    m.size = size;
    m.owners = 1;
    m.pinned = pinned;
    m.held = held;

    pthread_mutex_lock(&writer_lock);
    struct registry *old = atomic_load_explicit(&current, memory_order_relaxed);
    size_t n = old ? old->n : 0;
    for (size_t i = 0; i < n; i++) {
        struct mcsafe_module *have = &old->mods[i];
        if (have->table != key)
            continue;
        int same = have->size == size && memcmp(have->copy, copy, size) == 0;
        if (same)
            have->owners++;              /* never read by the handler */
        pthread_mutex_unlock(&writer_lock);
        munmap(copy, mapped);
        return same ? 0 : fail(err, errlen, "a different table is already registered at %p: "
                               "unregister it first", key);
    }
    struct registry *next = malloc(sizeof *next + (n + 1) * sizeof next->mods[0]);
    if (!next) {
        pthread_mutex_unlock(&writer_lock);
        munmap(copy, mapped);
        return fail(err, errlen, "out of memory");
    }
    next->n = n + 1;
    if (n)
        memcpy(next->mods, old->mods, n * sizeof next->mods[0]);
    next->mods[n] = m;
    publish(next);
    pthread_mutex_unlock(&writer_lock);
    return 0;
}

/* Magic, version, machine and whether the table says it lies in a loaded
 * section (as it must, or must not, for `loaded`); -1 with the reason in err. */
static int check_header(const struct extable_header *h, int loaded, char *err, size_t errlen)
{
    if (memcmp(h->magic, "EXTABLE", 8) != 0)
        return fail(err, errlen, "no exception table (bad magic): was extable build run on "
                    "this module?");
    if (h->version != 1 && h->version != 2)
        return fail(err, errlen, "table version %u is not supported", h->version);
    if (h->machine != MCSAFE_ARCH_MACHINE)
        return fail(err, errlen, "table is for machine %u, this is %u", h->machine,
                    MCSAFE_ARCH_MACHINE);
    if (loaded && !(h->flags & EXTABLE_TABLE_LOADED))
        return fail(err, errlen, "table is not in a loaded section");
    if (!loaded && (h->flags & EXTABLE_TABLE_LOADED))
        return fail(err, errlen, "table says it is loaded, but its section is not");
    return 0;
}

static int register_loaded(const void *table, size_t size, const char *name, int pinned,
                           void *held, char *err, size_t errlen)
{
    *err = 0;
    if (!table || size < sizeof(struct extable_header) || size > MAX_TABLE_BYTES)
        return fail(err, errlen, "table size %zu is not between %zu and %u bytes", size,
                    sizeof(struct extable_header), MAX_TABLE_BYTES);
    struct segments s = {.addr = (uintptr_t)table, .safe = can_read_safely()};
    walk_objects(find_object, &s);
    if (!s.found)
        return fail(err, errlen, "table at %p is not inside a loaded object", table);
    if (!readable_span(&s, (uintptr_t)table, size))
        return fail(err, errlen, "table at %p (%zu bytes) is not inside one loaded, readable "
                    "segment of its object", table, size);
    size_t mapped;
    void *copy = private_copy(table, size, &mapped, err, errlen);
    if (!copy)
        return -1;
    const struct extable_header *h = copy;
    uintptr_t base = (uintptr_t)table - (uintptr_t)h->self_vaddr;
    if (check_header(h, 1, err, errlen) == 0 && base != s.bias)
        fail(err, errlen, "table says its module is loaded at %#lx, but it is at %#lx",
             (unsigned long)base, (unsigned long)s.bias);
    if (*err) {
        munmap(copy, mapped);
        return -1;
    }
    return publish_copy(table, copy, size, mapped, base, &s, name, pinned, held, err, errlen);
}

/* One registration of a loaded table, holding its object loaded. */
static int register_held(const void *table, size_t size, const char *name, int pinned,
                         char *err, size_t errlen)
{
    void *held;
    *err = 0;
    if (hold_object((uintptr_t)table, &held, err, errlen))
        return -1;
    int rc = register_loaded(table, size, name, pinned, held, err, errlen);
    if (rc)
        release_object(held);
    return rc;
}

int mcsafe_register(const void *table, size_t size, const char *name, char *err,
                    size_t errlen)
{
    return register_held(table, size, name, 0, err, errlen);
}

int mcsafe_register_own(char *err, size_t errlen)
{
    size_t size;
    const void *table = mcsafe_own_table(&size);
    int rc = register_held(table, size, "mcsafe._mcsafe", 1, err, errlen);
    own_published = rc == 0;
    return rc;
}

static int register_file_table(const void *bytes, size_t size, uintptr_t anchor,
                               const char *name, void *held, char *err, size_t errlen)
{
    if (size < sizeof(struct extable_header) || size > MAX_TABLE_BYTES)
        return fail(err, errlen, "table size %zu is not between %zu and %u bytes", size,
                    sizeof(struct extable_header), MAX_TABLE_BYTES);
    struct segments s = {.addr = anchor, .safe = can_read_safely()};
    walk_objects(find_object, &s);
    if (!s.found)
        return fail(err, errlen, "no loaded object at %#lx", (unsigned long)anchor);
    size_t mapped;
    void *copy = private_copy(bytes, size, &mapped, err, errlen);
    if (!copy)
        return -1;
    const struct extable_header *h = copy;
    if (check_header(h, 0, err, errlen)) {
        munmap(copy, mapped);
        return -1;
    }
    return publish_copy((const void *)anchor, copy, size, mapped, s.bias, &s, name, 0, held,
                        err, errlen);
}

int mcsafe_register_file_table(const void *bytes, size_t size, uintptr_t anchor,
                               const char *name, char *err, size_t errlen)
{
    void *held;
    *err = 0;
    if (hold_object(anchor, &held, err, errlen))
        return -1;
    int rc = register_file_table(bytes, size, anchor, name, held, err, errlen);
    if (rc)
        release_object(held);
    return rc;
}

int mcsafe_unregister(const void *table)
{
    pthread_mutex_lock(&writer_lock);
    struct registry *old = atomic_load_explicit(&current, memory_order_relaxed);
    size_t n = old ? old->n : 0, at = n;
    for (size_t i = 0; i < n; i++)
        if (old->mods[i].table == table)
            at = i;
    if (at == n || (old->mods[at].pinned && old->mods[at].owners <= 1)) {
        pthread_mutex_unlock(&writer_lock);
        return -1;                                     /* not registered (by anyone but us) */
    }
    void *held = old->mods[at].held;
    if (--old->mods[at].owners > 0) {
        pthread_mutex_unlock(&writer_lock);
        release_object(held);
        return 0;
    }
    struct registry *next = malloc(sizeof *next + (n ? n : 1) * sizeof next->mods[0]);
    struct dropped *gone = malloc(sizeof *gone);
    if (!next || !gone) {
        free(next);
        free(gone);
        old->mods[at].owners++;
        pthread_mutex_unlock(&writer_lock);
        return -1;
    }
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (i != at)
            next->mods[k++] = old->mods[i];
    next->n = k;
    gone->copy = (void *)old->mods[at].copy;
    gone->mapped = mapped_size(old->mods[at].size);
    gone->next = dropped;
    dropped = gone;
    publish(next);
    pthread_mutex_unlock(&writer_lock);
    release_object(held);
    return 0;
}

size_t mcsafe_published(void)
{
    mcsafe_readers_enter();
    struct registry *r = atomic_load_explicit(&current, memory_order_seq_cst);
    size_t n = r ? r->n : 0;
    mcsafe_readers_leave();
    return n;
}

/* Async-signal-safe: one atomic load, then a binary search for the last entry
 * starting at or before pc (as the kernel's lib/extable.c search_extable).
 * Only between mcsafe_readers_enter() and mcsafe_readers_leave(). */
const struct extable_entry *mcsafe_lookup(uintptr_t pc, const struct mcsafe_module **mod)
{
    const struct registry *r = atomic_load_explicit(&current, memory_order_seq_cst);
    if (!r)
        return NULL;
    for (size_t i = 0; i < r->n; i++) {
        const struct mcsafe_module *m = &r->mods[i];
        if (pc < m->lo || pc >= m->hi)
            continue;
        uint32_t off = (uint32_t)(pc - m->base);
        size_t lo = 0, hi = m->nentries;
        while (lo < hi) {
            size_t mid = lo + (hi - lo) / 2;
            if (m->entries[mid].start <= off)
                lo = mid + 1;
            else
                hi = mid;
        }
        if (lo && off < m->entries[lo - 1].end) {
            *mod = m;
            return &m->entries[lo - 1];
        }
    }
    return NULL;
}

/* The loaded objects, for registry.py to find the one a path names and prove
 * the file is it. The build-id is read from the object's PT_NOTE in memory, once
 * the note is proved to lie in one of its readable segments. */
static int collect_object(struct dl_phdr_info *info, size_t size, void *data)
{
    struct mcsafe_objects *all = data;
    uintptr_t fault;
    (void)size;
    if (all->n == all->cap) {
        size_t cap = all->cap ? 2 * all->cap : 64;
        struct mcsafe_object_info *more = realloc(all->list, cap * sizeof *more);
        if (!more)
            return 1;
        all->list = more;
        all->cap = cap;
    }
    struct mcsafe_object_info *o = &all->list[all->n];
    memset(o, 0, sizeof *o);
    ElfW(Phdr) phdrs[MAX_PHDRS];
    int phnum = copy_phdrs(info, phdrs, all->safe);
    struct segments s = {0};
    uintptr_t lowest = UINTPTR_MAX;
    for (int i = 0; i < phnum && s.n < MAX_SEGMENTS; i++) {
        const ElfW(Phdr) *ph = &phdrs[i];
        if (ph->p_type != PT_LOAD)
            continue;
        s.lo[s.n] = info->dlpi_addr + ph->p_vaddr;
        s.hi[s.n] = s.lo[s.n] + ph->p_memsz;
        s.flags[s.n++] = ph->p_flags;
        if (s.lo[s.n - 1] < lowest)
            lowest = s.lo[s.n - 1];
    }
    o->bias = info->dlpi_addr;
    o->anchor = s.n ? lowest : 0;
    o->name = strdup(info->dlpi_name ? info->dlpi_name : "");
    o->phdrs_size = phnum > 0 ? (size_t)phnum * sizeof(ElfW(Phdr)) : 0;   /* 0: unreadable */
    o->phdrs = malloc(o->phdrs_size ? o->phdrs_size : 1);
    if (!o->name || !o->phdrs) {
        free(o->name);
        free(o->phdrs);
        return 1;
    }
    memcpy(o->phdrs, phdrs, o->phdrs_size);
    for (int i = 0; i < phnum; i++) {
        const ElfW(Phdr) *ph = &phdrs[i];
        uintptr_t at = info->dlpi_addr + ph->p_vaddr;
        unsigned char notes[4096];
        if (ph->p_type != PT_NOTE || ph->p_memsz > sizeof notes
            || !readable_span(&s, at, ph->p_memsz)
            || !read_loaded(notes, (const void *)at, ph->p_memsz, all->safe, &fault))
            continue;
        const unsigned char *p = notes, *end = p + ph->p_memsz;
        while (end - p >= 12) {
            uint32_t namesz, descsz, type;
            memcpy(&namesz, p, 4);
            memcpy(&descsz, p + 4, 4);
            memcpy(&type, p + 8, 4);
            size_t name_len = (namesz + 3u) & ~3u, desc_len = (descsz + 3u) & ~3u;
            if (name_len > (size_t)(end - p - 12) || desc_len > (size_t)(end - p - 12) - name_len)
                break;
            if (type == 3 && namesz == 4 && memcmp(p + 12, "GNU", 4) == 0
                && descsz <= sizeof o->build_id) {
                memcpy(o->build_id, p + 12 + name_len, descsz);
                o->build_id_size = descsz;
            }
            p += 12 + name_len + desc_len;
        }
    }
    all->n++;
    return 0;
}

int mcsafe_loaded_objects(struct mcsafe_objects *out)
{
    memset(out, 0, sizeof *out);
    out->safe = can_read_safely();
    return walk_objects(collect_object, out) ? -1 : 0;
}

void mcsafe_free_objects(struct mcsafe_objects *all)
{
    for (size_t i = 0; i < all->n; i++) {
        free(all->list[i].name);
        free(all->list[i].phdrs);
    }
    free(all->list);
    memset(all, 0, sizeof *all);
}
