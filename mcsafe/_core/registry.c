/* registry.c: validated exception tables, published for the signal handler.
 *
 * A table is checked before anyone can search it (magic, version, machine,
 * bounds, sorted, non-overlapping, every address inside an executable segment
 * of the object it was loaded with, every descriptor sane). A table that fails
 * is never published, so a damaged table can make mcsafe claim nothing, but
 * never claim wrongly.
 *
 * Publication is read-copy-update without the reclaim: writers (register and
 * unregister, from Python with the GIL, serialised by a mutex) build a new
 * immutable array and swap one atomic pointer; the handler loads that pointer
 * once and never waits. Old arrays are retired to a list and never freed, as a
 * handler running on another thread may still be reading one; they cost one
 * small allocation per registration.
 */
#define _GNU_SOURCE
#include <link.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "mcsafe_core.h"
#include "context.h"

#define MAX_SEGMENTS 16

struct registry {
    size_t n;
    struct registry *retired;       /* the one this replaced (kept, never freed) */
    struct mcsafe_module mods[];
};

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

/* The executable PT_LOAD ranges of the object that contains `addr`. */
struct segments {
    uintptr_t addr;
    int found;
    uintptr_t bias;
    size_t n;
    uintptr_t lo[MAX_SEGMENTS], hi[MAX_SEGMENTS];
    char path[256];
};

static int find_object(struct dl_phdr_info *info, size_t size, void *data)
{
    struct segments *s = data;
    (void)size;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        uintptr_t lo = info->dlpi_addr + ph->p_vaddr;
        if (ph->p_type != PT_LOAD || s->addr < lo || s->addr >= lo + ph->p_memsz)
            continue;
        s->found = 1;
        s->bias = info->dlpi_addr;
        snprintf(s->path, sizeof s->path, "%s", info->dlpi_name ? info->dlpi_name : "");
        for (int j = 0; j < info->dlpi_phnum && s->n < MAX_SEGMENTS; j++) {
            const ElfW(Phdr) *x = &info->dlpi_phdr[j];
            if (x->p_type == PT_LOAD && (x->p_flags & PF_X)) {
                s->lo[s->n] = info->dlpi_addr + x->p_vaddr;
                s->hi[s->n] = s->lo[s->n] + x->p_memsz;
                s->n++;
            }
        }
        return 1;
    }
    return 0;
}

static int segment_of(const struct segments *s, uintptr_t addr)
{
    for (size_t i = 0; i < s->n; i++)
        if (addr >= s->lo[i] && addr < s->hi[i])
            return (int)i;
    return -1;
}

static int check_desc(const struct extable_desc *d, uint32_t i, uint32_t strings_size,
                      char *err, size_t errlen)
{
    if (d->kind < EXTABLE_KIND_FIXUP || d->kind > EXTABLE_KIND_ERRNO)
        return fail(err, errlen, "descriptor %u has unknown kind %u", i, d->kind);
    if (d->side > EXTABLE_SIDE_BOTH)
        return fail(err, errlen, "descriptor %u has unknown side %u", i, d->side);
    const uint8_t regs[] = {d->reg, d->src_reg, d->dst_reg, d->rec_reg};
    for (size_t r = 0; r < sizeof regs; r++)
        if (regs[r] != EXTABLE_NOREG && regs[r] >= MCSAFE_ARCH_NREGS)
            return fail(err, errlen, "descriptor %u names register %u", i, regs[r]);
    if (d->kind != EXTABLE_KIND_FIXUP && d->reg == EXTABLE_NOREG)
        return fail(err, errlen, "descriptor %u needs a register", i);
    if (d->name_off >= strings_size && strings_size)
        return fail(err, errlen, "descriptor %u name is out of range", i);
    return 0;
}

/* Every check the compiler makes, on the table as it is loaded in memory. */
static int validate(const void *table, size_t size, struct mcsafe_module *m,
                    char *err, size_t errlen)
{
    const struct extable_header *h = table;
    if (size < sizeof *h || memcmp(h->magic, "EXTABLE", 8) != 0)
        return fail(err, errlen, "no exception table (bad magic): was extable build run "
                    "on this module?");
    if (h->version != 1)
        return fail(err, errlen, "table version %u is not supported", h->version);
    if (h->machine != MCSAFE_ARCH_MACHINE)
        return fail(err, errlen, "table is for machine %u, this is %u", h->machine,
                    MCSAFE_ARCH_MACHINE);
    if (!(h->flags & EXTABLE_TABLE_LOADED))
        return fail(err, errlen, "table is not in a loaded section");
    if ((uint64_t)h->entries_off + 16ull * h->nentries > size
        || (uint64_t)h->descs_off + 16ull * h->ndescs > size
        || (uint64_t)h->strings_off + h->strings_size > size
        || h->entries_off % 4 || h->descs_off % 4)
        return fail(err, errlen, "table is truncated: counts and offsets exceed %zu bytes",
                    size);

    struct segments s = {.addr = (uintptr_t)table};
    dl_iterate_phdr(find_object, &s);
    if (!s.found)
        return fail(err, errlen, "table at %p is not inside a loaded object", table);
    uintptr_t base = (uintptr_t)table - (uintptr_t)h->self_vaddr;
    if (base != s.bias)
        return fail(err, errlen, "table says its module is loaded at %#lx, but it is at %#lx",
                    (unsigned long)base, (unsigned long)s.bias);

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
        int seg = segment_of(&s, base + e[i].start);
        if (seg < 0 || base + e[i].end > s.hi[seg])
            return fail(err, errlen, "entry %u (%#x..%#x) is outside the module's code", i,
                        e[i].start, e[i].end);
        if (segment_of(&s, base + e[i].fixup) < 0)
            return fail(err, errlen, "entry %u landing pad %#x is outside the module's code",
                        i, e[i].fixup);
        uint32_t data = e[i].data;
        if (data & EXTABLE_DATA_EXTENDED) {
            if (EXTABLE_DATA_INDEX(data) >= h->ndescs)
                return fail(err, errlen, "entry %u names descriptor %u of %u", i,
                            EXTABLE_DATA_INDEX(data), h->ndescs);
        } else if (EXTABLE_DATA_TYPE(data) < EXTABLE_KIND_FIXUP
                   || EXTABLE_DATA_TYPE(data) > EXTABLE_KIND_ERRNO) {
            return fail(err, errlen, "entry %u has unknown classic type %u", i,
                        EXTABLE_DATA_TYPE(data));
        }
    }
    m->base = base;
    m->lo = h->nentries ? base + e[0].start : 0;
    m->hi = h->nentries ? base + e[h->nentries - 1].end : 0;
    m->entries = e;
    m->descs = d;
    m->nentries = h->nentries;
    m->ndescs = h->ndescs;
    m->table = table;
    return 0;
}

static void publish(struct registry *next)
{
    struct registry *old = atomic_load_explicit(&current, memory_order_relaxed);
    next->retired = old;
    atomic_store_explicit(&current, next, memory_order_release);
}

int mcsafe_register(const void *table, size_t size, const char *name, char *err,
                    size_t errlen)
{
    struct mcsafe_module m = {0};
    if (validate(table, size, &m, err, errlen))
        return -1;
    snprintf(m.name, sizeof m.name, "%s", name ? name : "");

    pthread_mutex_lock(&writer_lock);
    struct registry *old = atomic_load_explicit(&current, memory_order_relaxed);
    size_t n = old ? old->n : 0;
    for (size_t i = 0; i < n; i++) {
        if (old->mods[i].table == table) {            /* already published: idempotent */
            pthread_mutex_unlock(&writer_lock);
            return 0;
        }
    }
    struct registry *next = malloc(sizeof *next + (n + 1) * sizeof next->mods[0]);
    if (!next) {
        pthread_mutex_unlock(&writer_lock);
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

int mcsafe_unregister(const void *table)
{
    pthread_mutex_lock(&writer_lock);
    struct registry *old = atomic_load_explicit(&current, memory_order_relaxed);
    size_t n = old ? old->n : 0, k = 0;
    struct registry *next = malloc(sizeof *next + (n ? n : 1) * sizeof next->mods[0]);
    if (!next) {
        pthread_mutex_unlock(&writer_lock);
        return -1;
    }
    for (size_t i = 0; i < n; i++)
        if (old->mods[i].table != table)
            next->mods[k++] = old->mods[i];
    next->n = k;
    if (k == n) {
        free(next);
        pthread_mutex_unlock(&writer_lock);
        return -1;                                     /* was not registered */
    }
    publish(next);
    pthread_mutex_unlock(&writer_lock);
    return 0;
}

size_t mcsafe_published(void)
{
    struct registry *r = atomic_load_explicit(&current, memory_order_acquire);
    return r ? r->n : 0;
}

/* Async-signal-safe: one atomic load, then a binary search for the last entry
 * starting at or before pc (as the kernel's lib/extable.c search_extable). */
const struct extable_entry *mcsafe_lookup(uintptr_t pc, const struct mcsafe_module **mod)
{
    const struct registry *r = atomic_load_explicit(&current, memory_order_acquire);
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

struct base_query {
    dev_t dev;
    ino_t ino;
    int found;
    uintptr_t base;
};

static int match_file(struct dl_phdr_info *info, size_t size, void *data)
{
    struct base_query *q = data;
    struct stat st;
    (void)size;
    if (!info->dlpi_name || !info->dlpi_name[0] || stat(info->dlpi_name, &st) != 0)
        return 0;
    if (st.st_dev != q->dev || st.st_ino != q->ino)
        return 0;
    q->found = 1;
    q->base = info->dlpi_addr;
    return 1;
}

int mcsafe_object_base(const char *path, uintptr_t *base)
{
    struct stat st;
    if (stat(path, &st) != 0)
        return -1;
    struct base_query q = {.dev = st.st_dev, .ino = st.st_ino};
    dl_iterate_phdr(match_file, &q);
    if (!q.found)
        return -1;
    *base = q.base;
    return 0;
}
