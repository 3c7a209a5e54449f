/* A C harness for the copy core and the handler, with no Python: built for
 * x86-64 and aarch64 from the project's own sources, its table compiled by
 * `extable build` from its own ELF. It injects faults (PROT_NONE, a file
 * truncated under a shared mapping, userfaultfd poison where available) and
 * checks exact counts, contents and untouched bytes over random cases.
 *
 *   harness CASES SEED      prints per-method counts and "N passed, N failed"
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "mcsafe_core.h"

#define PAGE 4096
#define MAXPAGES 24

enum method { PROTECT, TRUNCATE, UFFD, NMETHODS };
static const char *const method_names[] = {"mprotect", "truncate", "uffd"};

/* Linux 6.6 UAPI, spelled out (older headers lack UFFDIO_POISON). */
struct uffd_api { uint64_t api, features, ioctls; };
struct uffd_range { uint64_t start, len; };
struct uffd_register { struct uffd_range range; uint64_t mode, ioctls; };
struct uffd_poison { struct uffd_range range; uint64_t mode; int64_t updated; };
#define UFFD_IOWR(nr, size) ((3ul << 30) | ((unsigned long)(size) << 16) | (0xAAul << 8) | (nr))

static uint64_t rng_state;
static uint64_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static unsigned char pattern(size_t i) { return (unsigned char)((i * 7 + 3) % 251); }

struct region {
    unsigned char *p;
    size_t npages;
    int bad[MAXPAGES];
    int fd, uffd;
};

static int uffd_poison(struct region *r)
{
    long fd = syscall(__NR_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return -1;
    struct uffd_api api = {0xAA, (1u << 14) | (1u << 7), 0};
    struct uffd_register reg = {{(uintptr_t)r->p, r->npages * PAGE}, 1, 0};
    if (ioctl((int)fd, UFFD_IOWR(0x3F, sizeof api), &api) || ioctl((int)fd, UFFD_IOWR(0x00, sizeof reg), &reg)) {
        close((int)fd);
        return -1;
    }
    for (size_t i = 0; i < r->npages; i++) {
        struct uffd_poison po = {{(uintptr_t)r->p + i * PAGE, PAGE}, 0, 0};
        if (r->bad[i] && ioctl((int)fd, UFFD_IOWR(0x08, sizeof po), &po)) {
            close((int)fd);
            return -1;
        }
    }
    r->uffd = (int)fd;
    return 0;
}

/* Map npages with the bad pages faulting; -1 if the method is unavailable. */
static int make_region(struct region *r, enum method m)
{
    r->fd = r->uffd = -1;
    size_t size = r->npages * PAGE;
    if (m == TRUNCATE) {
        r->fd = memfd_create("harness", MFD_CLOEXEC);
        if (r->fd < 0 || ftruncate(r->fd, (off_t)size))
            return -1;
        r->p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, r->fd, 0);
    } else {
        r->p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    }
    if (r->p == MAP_FAILED)
        return -1;
    for (size_t i = 0; i < r->npages; i++)
        if (!r->bad[i])
            for (size_t j = 0; j < PAGE; j++)
                r->p[i * PAGE + j] = pattern(i * PAGE + j);
    if (m == PROTECT) {
        for (size_t i = 0; i < r->npages; i++)
            if (r->bad[i] && mprotect(r->p + i * PAGE, PAGE, PROT_NONE))
                return -1;
    } else if (m == TRUNCATE) {
        size_t first = r->npages;
        for (size_t i = 0; i < r->npages; i++)
            if (r->bad[i] && i < first)
                first = i;
        for (size_t i = first; i < r->npages; i++)
            r->bad[i] = 1;                  /* truncation cuts a suffix */
        if (ftruncate(r->fd, (off_t)(first * PAGE)))
            return -1;
    } else if (m == UFFD) {
        return uffd_poison(r);
    }
    return 0;
}

static void free_region(struct region *r)
{
    if (r->p && r->p != MAP_FAILED)
        munmap(r->p, r->npages * PAGE);
    if (r->fd >= 0)
        close(r->fd);
    if (r->uffd >= 0)
        close(r->uffd);
}

static size_t first_bad(const struct region *r, size_t off, size_t n)
{
    for (size_t i = off / PAGE; i < r->npages && i * PAGE < off + n; i++)
        if (r->bad[i])
            return (i * PAGE > off ? i * PAGE : off) - off;
    return n;
}

static size_t copy_with(int path, void *dst, const void *src, size_t n,
                        struct mcsafe_fault *rec)
{
    rec->side = 0;
    if (path < 0)
        return mcsafe_copy(dst, src, n, rec);
    return n - mcsafe_copy_path(path, dst, src, n, rec);
}

static int npaths(void)
{
    int n = 0;
    while (mcsafe_path_names[n])
        n++;
    return n;
}

/* One random case; 0 if it held, 1 if it failed, -1 if the method is unavailable. */
static int one_case(enum method m, long k)
{
    struct region r = {0};
    r.npages = 1 + rnd() % MAXPAGES;
    int nbad = (int)(rnd() % 4);
    for (int b = 0; b < nbad; b++)
        r.bad[rnd() % r.npages] = 1;
    if (make_region(&r, m)) {
        free_region(&r);
        return -1;
    }
    size_t size = r.npages * PAGE;
    size_t off = rnd() % 3 == 0 ? (rnd() % r.npages) * PAGE - (rnd() % 40) : rnd() % size;
    if (off > size)
        off = 0;
    size_t n = rnd() % 2 ? rnd() % (size - off + 1) : rnd() % 600;
    if (n > size - off)
        n = size - off;
    int path = (int)(rnd() % (npaths() + 1)) - 1;      /* -1: the dispatcher */
    int dst_side = (int)(rnd() % 2);
    size_t want = first_bad(&r, off, n);
    struct mcsafe_fault rec;
    int bad = 0;

    unsigned char *buf = malloc(n + 64);
    if (!dst_side) {
        memset(buf, 0xEE, n + 64);
        size_t got = copy_with(path, buf, r.p + off, n, &rec);
        bad |= got != want;
        for (size_t i = 0; i < got && i < n; i++)
            bad |= buf[i] != pattern(off + i);
        for (size_t i = got; i < n + 64; i++)
            bad |= buf[i] != 0xEE;
        if (want < n)
            bad |= rec.side != EXTABLE_SIDE_SRC || rec.addr != (uintptr_t)(r.p + off + want);
    } else {
        for (size_t i = 0; i < n; i++)
            buf[i] = (unsigned char)rnd();
        size_t got = copy_with(path, r.p + off, buf, n, &rec);
        bad |= got != want;
        for (size_t i = 0; i < r.npages; i++) {
            if (r.bad[i])
                continue;
            for (size_t j = i * PAGE; j < (i + 1) * PAGE; j++) {
                unsigned char expect = j >= off && j < off + got ? buf[j - off] : pattern(j);
                bad |= r.p[j] != expect;
            }
        }
        if (want < n)
            bad |= rec.side != EXTABLE_SIDE_DST || rec.addr != (uintptr_t)(r.p + off + want);
    }
    if (bad)
        fprintf(stderr, "FAIL case %ld: %s %s path %d pages %zu off %zu n %zu want %zu\n", k,
                method_names[m], dst_side ? "dst" : "src", path, r.npages, off, n, want);
    free(buf);
    free_region(&r);
    return bad;
}

int main(int argc, char **argv)
{
    long cases = argc > 1 ? atol(argv[1]) : 3000;
    rng_state = argc > 2 ? strtoull(argv[2], NULL, 0) : 0x9E3779B97F4A7C15ull;
    char err[256];
    size_t size;
    const void *table = mcsafe_own_table(&size);
    mcsafe_arch_init();
    if (mcsafe_register(table, size, "harness", err, sizeof err)) {
        fprintf(stderr, "harness: own table refused: %s\n", err);
        return 2;
    }
    if (mcsafe_install()) {
        perror("harness: sigaction");
        return 2;
    }
    long passed = 0, failed = 0, by_method[NMETHODS] = {0};
    int unavailable[NMETHODS] = {0};
    for (long k = 0; k < cases; k++) {
        enum method m = (enum method)(k % NMETHODS);
        if (unavailable[m])
            m = PROTECT;
        int rc = one_case(m, k);
        if (rc < 0) {
            unavailable[m] = 1;
            printf("%s: unavailable here (%s); its cases run with mprotect\n",
                   method_names[m], strerror(errno));
            rc = one_case(PROTECT, k);
            m = PROTECT;
        }
        by_method[m]++;
        if (rc)
            failed++;
        else
            passed++;
    }
    for (int m = 0; m < NMETHODS; m++)
        printf("%s: %ld cases\n", method_names[m], by_method[m]);
    printf("faults claimed: %lu\n", mcsafe_claimed_count());
    printf("%ld passed, %ld failed\n", passed, failed);
    return failed != 0;
}
