/* mcsafe.h: the C API of mcsafe, for C extensions.
 *
 *     #include "mcsafe.h"          // include_dirs = mcsafe.get_include()
 *
 *     if (mcsafe_import() < 0) return NULL;       // in PyInit_, with the GIL
 *     struct mcsafe_fault rec;
 *     size_t done = mcsafe_api->copy(dst, src, n, &rec);        // nogil is fine
 *     mcsafe_api->register_table(table, size, "mymod", err, sizeof err);
 *
 *     // In a SIGBUS/SIGSEGV handler your runtime owns (version >= 2):
 *     if (mcsafe_api->version >= 2 && mcsafe_api->handle_fault(sig, info, uc))
 *         return;                                 // a copy's fault, resumed
 *
 * See docs/EXTENDING.md.
 */
#ifndef MCSAFE_H
#define MCSAFE_H

#include <Python.h>
#include <stddef.h>

#include "mcsafe_core.h"

/* Fields are only ever added at the end; `version` says which are there. */
struct mcsafe_c_api {
    int version;                          /* 2 */
    size_t (*copy)(void *dst, const void *src, size_t n, struct mcsafe_fault *rec);
    /* Each successful register_table must be matched by one unregister_table;
     * the table is searched, and its object held loaded, while anyone holds a
     * registration. */
    int (*register_table)(const void *table, size_t size, const char *name,
                          char *err, size_t errlen);
    int (*unregister_table)(const void *table);
    /* version 2: 1 if mcsafe claimed the fault and rewrote the context, else 0 */
    int (*handle_fault)(int sig, siginfo_t *info, void *ucontext);
};

static const struct mcsafe_c_api *mcsafe_api;

static inline int mcsafe_import(void)
{
    mcsafe_api = (const struct mcsafe_c_api *)PyCapsule_Import("mcsafe._mcsafe._C_API", 0);
    return mcsafe_api ? 0 : -1;
}

#endif /* MCSAFE_H */
