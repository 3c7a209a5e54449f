/* mcsafe.h: the C API of mcsafe, for C extensions.
 *
 *     #include "mcsafe.h"          // include_dirs = mcsafe.get_include()
 *
 *     if (mcsafe_import() < 0) return NULL;       // in PyInit_, with the GIL
 *     struct mcsafe_fault rec;
 *     size_t done = mcsafe_api->copy(dst, src, n, &rec);        // nogil is fine
 *     mcsafe_api->register_table(table, size, "mymod", err, sizeof err);
 *
 * See docs/EXTENDING.md.
 */
#ifndef MCSAFE_H
#define MCSAFE_H

#include <Python.h>
#include <stddef.h>

#include "mcsafe_core.h"

struct mcsafe_c_api {
    int version;                          /* 1 */
    size_t (*copy)(void *dst, const void *src, size_t n, struct mcsafe_fault *rec);
    int (*register_table)(const void *table, size_t size, const char *name,
                          char *err, size_t errlen);
    int (*unregister_table)(const void *table);
};

static const struct mcsafe_c_api *mcsafe_api;

static inline int mcsafe_import(void)
{
    mcsafe_api = (const struct mcsafe_c_api *)PyCapsule_Import("mcsafe._mcsafe._C_API", 0);
    return mcsafe_api ? 0 : -1;
}

#endif /* MCSAFE_H */
