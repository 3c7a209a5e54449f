/*
 * extable._fast: the rows of `extable symbols` formatted in C, and symbol
 * names cut from a string table.
 *
 * Why C: the listing of a file whose .symtab dominates (a debug vmlinux, 100k
 * functions) is one short line per function, and Python spends about 1.4 us
 * on each (cutting the name out of the string table, then `%` formatting),
 * twice what readelf spends on the whole row. Here the symbol and string
 * tables are read in place and each row is written straight into the output
 * buffer: a hex and decimal conversion and a copy of the name. `build` needs
 * the function symbols as Python lists (rules match their names, numpy takes
 * their addresses): functions() reads them in one pass, and strings() cuts
 * out any other names.
 *
 * This is an accelerator, not a second implementation of the rules: it takes
 * the tables extable/elf.py located and checked, the version names it read,
 * and produces exactly the bytes extable/symbols.py produces for the same
 * file (tests/test_extable_fast.py compares the two over system libraries,
 * kernel images and generated tables). Whatever needs a decision it does not
 * make -- a name offset out of range or unterminated, an end address past
 * 2^64, a name that is not UTF-8 in JSON -- it declines, returning None, and
 * the Python code handles the file and reports what is wrong with it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

#define SYM_SIZE 24
#define STT_FUNC 2
#define STT_GNU_IFUNC 10
#define VERSYM_HIDDEN 0x8000
#define VER_NDX_GLOBAL 1

static const char hexdigits[] = "0123456789abcdef";

static inline uint16_t le16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static inline uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline uint64_t le64(const uint8_t *p) { return le32(p) | (uint64_t)le32(p + 4) << 32; }

/* -- the output buffer: a bytearray grown as rows are added -------------------------- */

typedef struct {
    PyObject *array;         /* the bytearray; its size is the capacity */
    char *start, *at, *end;
} Out;

static int out_init(Out *o, Py_ssize_t capacity)
{
    o->array = PyByteArray_FromStringAndSize(NULL, capacity);
    if (!o->array)
        return -1;
    o->start = o->at = PyByteArray_AS_STRING(o->array);
    o->end = o->start + capacity;
    return 0;
}

/* Room for n more bytes. */
static int out_reserve(Out *o, Py_ssize_t n)
{
    if (o->end - o->at >= n)
        return 0;
    Py_ssize_t used = o->at - o->start;
    Py_ssize_t capacity = (o->end - o->start) * 2;
    if (capacity < used + n)
        capacity = used + n;
    if (PyByteArray_Resize(o->array, capacity) < 0)
        return -1;
    o->start = PyByteArray_AS_STRING(o->array);
    o->at = o->start + used;
    o->end = o->start + capacity;
    return 0;
}

static PyObject *out_finish(Out *o)
{
    if (PyByteArray_Resize(o->array, o->at - o->start) < 0) {
        Py_CLEAR(o->array);
        return NULL;
    }
    return o->array;
}

static inline char *put(char *at, const char *s, size_t n)
{
    memcpy(at, s, n);
    return at + n;
}
#define PUT_LITERAL(at, s) put((at), (s), sizeof(s) - 1)

/* "%016x" */
static inline char *put_hex16(char *at, uint64_t v)
{
    for (int i = 15; i >= 0; i--, v >>= 4)
        at[i] = hexdigits[v & 15];
    return at + 16;
}

/* "%#x" */
static char *put_hex(char *at, uint64_t v)
{
    char digits[16];
    int n = 0;
    do {
        digits[n++] = hexdigits[v & 15];
        v >>= 4;
    } while (v);
    *at++ = '0';
    *at++ = 'x';
    while (n)
        *at++ = digits[--n];
    return at;
}

/* "00" "01" ... "99": decimal digits two at a time. */
static char digit_pairs[200];

/* "%*d": right-aligned in width columns (width 0: as it is). */
static char *put_dec(char *at, uint64_t v, int width)
{
    char digits[20], *p = digits + sizeof digits;
    while (v >= 100) {
        p -= 2;
        memcpy(p, digit_pairs + 2 * (v % 100), 2);
        v /= 100;
    }
    if (v >= 10) {
        p -= 2;
        memcpy(p, digit_pairs + 2 * v, 2);
    } else {
        *--p = (char)('0' + v);
    }
    int n = (int)(digits + sizeof digits - p);
    for (int pad = width - n; pad > 0; pad--)
        *at++ = ' ';
    return put(at, p, (size_t)n);
}

/* -- JSON strings, as json.encoder.encode_basestring_ascii writes them ---------------- */

/* Length of the valid UTF-8 sequence at s (Python's strict decoder: no overlong
 * forms, no surrogates, nothing past U+10FFFF), storing its code point; 0 if invalid. */
static int utf8_char(const uint8_t *s, const uint8_t *end, uint32_t *cp)
{
    uint8_t c = s[0];
    int n;
    uint8_t lo = 0x80, hi = 0xBF;           /* the second byte's range */
    if (c >= 0xC2 && c <= 0xDF) {
        n = 2;
        *cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        *cp = c & 0x0F;
        if (c == 0xE0)
            lo = 0xA0;
        else if (c == 0xED)
            hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        *cp = c & 0x07;
        if (c == 0xF0)
            lo = 0x90;
        else if (c == 0xF4)
            hi = 0x8F;
    } else {
        return 0;
    }
    if (end - s < n || s[1] < lo || s[1] > hi)
        return 0;
    for (int i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        *cp = *cp << 6 | (s[i] & 0x3F);
    }
    return n;
}

static inline char *put_u16_escape(char *at, uint32_t u)
{
    *at++ = '\\';
    *at++ = 'u';
    *at++ = hexdigits[u >> 12 & 15];
    *at++ = hexdigits[u >> 8 & 15];
    *at++ = hexdigits[u >> 4 & 15];
    *at++ = hexdigits[u & 15];
    return at;
}

/* Bytes that stand for themselves in a JSON string of ASCII characters. */
static uint8_t json_plain[256];

/* Whether 8 bytes all stand for themselves: none below 0x20, above 0x7E, '"' or '\\'
 * (exact tests for a byte below n, n <= 128, and above n, from "Bit Twiddling Hacks"). */
static inline int json_plain8(const uint8_t *s)
{
    const uint64_t ones = 0x0101010101010101ULL, high = 0x8080808080808080ULL;
    uint64_t x;
    memcpy(&x, s, 8);
#define HAS_BELOW(x, n) (((x) - ones * (n)) & ~(x) & high)
#define HAS_ABOVE(x, n) ((((x) + ones * (127 - (n))) | (x)) & high)
    return !(HAS_BELOW(x, 0x20) | HAS_ABOVE(x, 0x7E) | HAS_BELOW(x ^ (ones * '"'), 1)
             | HAS_BELOW(x ^ (ones * '\\'), 1));
#undef HAS_BELOW
#undef HAS_ABOVE
}

static void init_tables(void)
{
    for (int c = 0x20; c < 0x7F; c++)
        json_plain[c] = c != '"' && c != '\\';
    for (int i = 0; i < 100; i++) {
        digit_pairs[2 * i] = (char)('0' + i / 10);
        digit_pairs[2 * i + 1] = (char)('0' + i % 10);
    }
}

/* s as the inside of a JSON string of ASCII characters; NULL if s is not valid UTF-8.
 * Needs room for 6 * n bytes (a byte becomes at most a six-byte escape). */
static char *put_json_chars(char *at, const uint8_t *s, size_t n)
{
    const uint8_t *end = s + n;
    while (s < end) {
        const uint8_t *run = s;             /* plain bytes are copied a run at a time */
        while (end - s >= 8 && json_plain8(s))
            s += 8;
        while (s < end && json_plain[*s])
            s++;
        at = put(at, (const char *)run, (size_t)(s - run));
        if (s == end)
            break;
        uint8_t c = *s;
        if (c < 0x80) {
            const char *short_form = NULL;
            switch (c) {
            case '"': short_form = "\\\""; break;
            case '\\': short_form = "\\\\"; break;
            case '\n': short_form = "\\n"; break;
            case '\r': short_form = "\\r"; break;
            case '\t': short_form = "\\t"; break;
            case '\b': short_form = "\\b"; break;
            case '\f': short_form = "\\f"; break;
            }
            at = short_form ? put(at, short_form, 2) : put_u16_escape(at, c);
            s++;
            continue;
        }
        uint32_t cp;
        int len = utf8_char(s, end, &cp);
        if (!len)
            return NULL;
        if (cp >= 0x10000) {                  /* a surrogate pair */
            cp -= 0x10000;
            at = put_u16_escape(at, 0xD800 | cp >> 10);
            at = put_u16_escape(at, 0xDC00 | (cp & 0x3FF));
        } else {
            at = put_u16_escape(at, cp);
        }
        s += len;
    }
    return at;
}

/* s quoted as a JSON string; NULL if it is not valid UTF-8. Room: 2 + 6 * n bytes. */
static char *put_json_string(char *at, const uint8_t *s, size_t n)
{
    *at++ = '"';
    if (!(at = put_json_chars(at, s, n)))
        return NULL;
    *at++ = '"';
    return at;
}

/* -- the listing --------------------------------------------------------------------- */

typedef struct {
    const uint8_t *bytes;
    Py_ssize_t len;
} Bytes;

/* A function's name, version and section, as one row shows them. */
typedef struct {
    Bytes name;          /* the name in the string table */
    Bytes version;       /* .bytes NULL: unversioned */
    int hidden;          /* a non-default version (name@VERSION) */
    Bytes suffix;        /* .dynsym: "@" or "@@" and then the version follow the name, as
                            readelf shows it; else .bytes NULL */
    Bytes section;       /* ET_REL: the section the start is an offset into */
    char section_index[16];
} Row;

typedef struct {
    Bytes symtab, strtab, versym;
    PyObject *vernames;          /* tuple: version index -> bytes or None */
    PyObject *sections;          /* tuple of bytes (ET_REL), or None */
    int json, split_versions;
} Listing;

/* Bytes of a bytes object held by a tuple, or .bytes NULL for None/out of range. */
static Bytes tuple_bytes(PyObject *tuple, Py_ssize_t i)
{
    Bytes b = {NULL, 0};
    if (tuple && i >= 0 && i < PyTuple_GET_SIZE(tuple)) {
        PyObject *item = PyTuple_GET_ITEM(tuple, i);
        if (PyBytes_Check(item)) {
            b.bytes = (const uint8_t *)PyBytes_AS_STRING(item);
            b.len = PyBytes_GET_SIZE(item);
        }
    }
    return b;
}

/* The row of symbol i; 0 on success, -1 to decline (a bad name offset). */
static int describe(const Listing *L, Py_ssize_t i, const uint8_t *sym, Row *r)
{
    uint32_t offset = le32(sym);
    if (offset >= (uint64_t)L->strtab.len)
        return -1;
    const uint8_t *name = L->strtab.bytes + offset;
    const uint8_t *nul = memchr(name, 0, (size_t)(L->strtab.len - offset));
    if (!nul)
        return -1;
    r->name = (Bytes){name, nul - name};
    r->version = r->suffix = r->section = (Bytes){NULL, 0};
    r->hidden = 0;

    if (L->versym.bytes && 2 * i + 2 <= L->versym.len) {
        /* .dynsym: the version is .gnu.version's entry, named by .gnu.version_d. */
        uint16_t v = le16(L->versym.bytes + 2 * i);
        uint16_t ndx = v & (uint16_t)~VERSYM_HIDDEN;
        Bytes version = ndx > VER_NDX_GLOBAL ? tuple_bytes(L->vernames, ndx) : (Bytes){NULL, 0};
        if (version.bytes) {
            r->version = version;
            r->hidden = (v & VERSYM_HIDDEN) != 0;
            r->suffix = (Bytes){(const uint8_t *)(r->hidden ? "@" : "@@"), r->hidden ? 1 : 2};
        }
    } else if (L->split_versions && L->json) {
        /* .symtab: the linker wrote the version into the name (memcpy@@GLIBC_2.14), which
         * is shown as it is; JSON's version and default fields come from its first '@'. */
        const uint8_t *at = memchr(r->name.bytes, '@', (size_t)r->name.len);
        if (at) {
            const uint8_t *version = at + 1;
            r->hidden = !(version < nul && *version == '@');
            if (!r->hidden)
                version++;
            r->version = (Bytes){version, nul - version};
        }
    }

    if (L->sections) {
        uint16_t shndx = le16(sym + 6);
        r->section = tuple_bytes(L->sections, shndx);
        if (!r->section.bytes) {
            int n = snprintf(r->section_index, sizeof r->section_index, "[%u]", shndx);
            r->section = (Bytes){(const uint8_t *)r->section_index, n};
        }
    }
    return 0;
}

/* One text row: "0x%016x 0x%016x %8d %s" (ET_REL: "%s+%#x %8d %s"), " (ifunc)". */
static char *put_text_row(char *at, const Row *r, uint64_t start, uint64_t size, int ifunc)
{
    if (r->section.bytes) {
        at = put(at, (const char *)r->section.bytes, r->section.len);
        *at++ = '+';
        at = put_hex(at, start);
    } else {
        *at++ = '0';
        *at++ = 'x';
        at = put_hex16(at, start);
        *at++ = ' ';
        *at++ = '0';
        *at++ = 'x';
        at = put_hex16(at, start + size);
    }
    *at++ = ' ';
    at = put_dec(at, size, 8);
    *at++ = ' ';
    at = put(at, (const char *)r->name.bytes, r->name.len);
    if (r->suffix.bytes) {
        at = put(at, (const char *)r->suffix.bytes, r->suffix.len);
        at = put(at, (const char *)r->version.bytes, r->version.len);
    }
    if (ifunc)
        at = PUT_LITERAL(at, " (ifunc)");
    *at++ = '\n';
    return at;
}

/* One JSON row, without the separator after it; NULL if a string is not UTF-8. */
static char *put_json_row(char *at, const Row *r, uint64_t start, uint64_t size, int ifunc)
{
    at = PUT_LITERAL(at, "{\"name\":\"");
    if (!(at = put_json_chars(at, r->name.bytes, r->name.len)))
        return NULL;
    if (r->suffix.bytes) {
        at = put(at, (const char *)r->suffix.bytes, r->suffix.len);
        if (!(at = put_json_chars(at, r->version.bytes, r->version.len)))
            return NULL;
    }
    *at++ = '"';
    at = PUT_LITERAL(at, ",\"start\":");
    at = put_dec(at, start, 0);
    at = PUT_LITERAL(at, ",\"end\":");
    at = put_dec(at, start + size, 0);
    at = PUT_LITERAL(at, ",\"size\":");
    at = put_dec(at, size, 0);
    at = ifunc ? PUT_LITERAL(at, ",\"type\":\"ifunc\"") : PUT_LITERAL(at, ",\"type\":\"func\"");
    at = PUT_LITERAL(at, ",\"version\":");
    if (r->version.bytes) {
        if (!(at = put_json_string(at, r->version.bytes, r->version.len)))
            return NULL;
    } else {
        at = PUT_LITERAL(at, "null");
    }
    at = (r->version.bytes && !r->hidden) ? PUT_LITERAL(at, ",\"default\":true")
                                          : PUT_LITERAL(at, ",\"default\":false");
    if (r->section.bytes) {
        at = PUT_LITERAL(at, ",\"section\":");
        if (!(at = put_json_string(at, r->section.bytes, r->section.len)))
            return NULL;
    }
    *at++ = '}';
    return at;
}

/* Every row; returns the number of functions, or -1 with an exception set, or -2 to
 * decline. */
static Py_ssize_t put_rows(const Listing *L, Out *out)
{
    Py_ssize_t count = 0, nsyms = L->symtab.len / SYM_SIZE;
    const uint8_t *table = L->symtab.bytes;
    if (L->json) {
        if (out_reserve(out, 1) < 0)
            return -1;
        *out->at++ = '[';
    }
    for (Py_ssize_t i = 0; i < nsyms; i++) {
        const uint8_t *sym = table + i * SYM_SIZE;
        int type = sym[4] & 0xF;
        if (type != STT_FUNC && type != STT_GNU_IFUNC)
            continue;
        uint64_t start = le64(sym + 8), size = le64(sym + 16);
        if (le16(sym + 6) == 0 || size == 0)      /* undefined, or no size: no range */
            continue;
        if (start + size < start)                 /* an end Python would print past 2^64 */
            return -2;
        Row r;
        if (describe(L, i, sym, &r) < 0)
            return -2;
        /* Numbers and punctuation take under 200 bytes; a string byte at most 6 (the
         * version is written twice in JSON: after the name, and on its own). */
        Py_ssize_t strings = r.name.len + 2 * r.version.len + r.section.len;
        if (out_reserve(out, 200 + (L->json ? 6 : 1) * strings) < 0)
            return -1;
        int ifunc = type == STT_GNU_IFUNC;
        if (L->json) {
            if (count)
                out->at = PUT_LITERAL(out->at, ",\n");
            if (!(out->at = put_json_row(out->at, &r, start, size, ifunc)))
                return -2;
        } else {
            out->at = put_text_row(out->at, &r, start, size, ifunc);
        }
        count++;
    }
    if (L->json) {
        if (out_reserve(out, 2) < 0)
            return -1;
        out->at = PUT_LITERAL(out->at, "]\n");
    }
    return count;
}

PyDoc_STRVAR(listing_doc,
"listing(symtab, strtab, versym, vernames, sections, json, split_versions)\n"
"--\n\n"
"The rows of ``extable symbols`` for a symbol table, as (count, bytearray), or None\n"
"when the table needs extable.symbols' own handling.\n\n"
"symtab and strtab are the tables' bytes; versym the .gnu.version bytes of a .dynsym\n"
"(or None), vernames a tuple mapping version indices to names (bytes or None);\n"
"sections a tuple of section names (bytes) for a relocatable file, else None;\n"
"split_versions: JSON splits .symtab names at their first '@' into name and version.\n"
"Text rows follow the header line; JSON is the whole array.");

static PyObject *listing(PyObject *self, PyObject *args)
{
    Py_buffer symtab, strtab, versym = {0};
    PyObject *versym_obj, *vernames, *sections;
    int json, split_versions;
    if (!PyArg_ParseTuple(args, "y*y*OO!Opp:listing", &symtab, &strtab, &versym_obj,
                          &PyTuple_Type, &vernames, &sections, &json, &split_versions))
        return NULL;
    PyObject *result = NULL;
    if (versym_obj != Py_None && PyObject_GetBuffer(versym_obj, &versym, PyBUF_SIMPLE) < 0)
        goto done;
    if (sections != Py_None && !PyTuple_Check(sections)) {
        PyErr_SetString(PyExc_TypeError, "sections must be a tuple or None");
        goto done;
    }
    Listing L = {
        .symtab = {symtab.buf, symtab.len},
        .strtab = {strtab.buf, strtab.len},
        .versym = {versym.buf, versym.buf ? versym.len : 0},
        .vernames = vernames,
        .sections = sections == Py_None ? NULL : sections,
        .json = json,
        .split_versions = split_versions,
    };
    /* A text row is about 70 bytes and its name; JSON's twice that. Start near the final
     * size (what is reserved and not written is never touched, so costs no memory). */
    Out out;
    if (out_init(&out, symtab.len / SYM_SIZE * (json ? 160 : 80) + strtab.len + 64) < 0)
        goto done;
    Py_ssize_t count = put_rows(&L, &out);
    if (count == -2) {
        Py_CLEAR(out.array);
        result = Py_NewRef(Py_None);
    } else if (count >= 0 && out_finish(&out)) {
        result = Py_BuildValue("nN", count, out.array);
    } else {
        Py_XDECREF(out.array);
    }
done:
    PyBuffer_Release(&symtab);
    PyBuffer_Release(&strtab);
    if (versym.buf)
        PyBuffer_Release(&versym);
    return result;
}

PyDoc_STRVAR(strings_doc,
"strings(strtab, offsets)\n"
"--\n\n"
"The NUL-terminated strings at the given offsets of a string table, as str (bytes that\n"
"are not UTF-8 as lone surrogates, Python's surrogateescape), or None if an offset is\n"
"out of range or its string has no terminator.");

static PyObject *strings(PyObject *self, PyObject *args)
{
    Py_buffer table;
    PyObject *offsets;
    if (!PyArg_ParseTuple(args, "y*O!:strings", &table, &PyList_Type, &offsets))
        return NULL;
    Py_ssize_t count = PyList_GET_SIZE(offsets);
    PyObject *out = PyList_New(count);
    for (Py_ssize_t i = 0; out && i < count; i++) {
        size_t offset = PyLong_AsSize_t(PyList_GET_ITEM(offsets, i));
        if (offset == (size_t)-1 && PyErr_Occurred()) {
            Py_CLEAR(out);
            break;
        }
        const char *name = (const char *)table.buf + offset;
        const char *nul = offset < (size_t)table.len
                              ? memchr(name, 0, (size_t)table.len - offset) : NULL;
        if (!nul) {
            Py_SETREF(out, Py_NewRef(Py_None));
            break;
        }
        PyObject *str = PyUnicode_DecodeUTF8(name, nul - name, "surrogateescape");
        if (!str) {
            Py_CLEAR(out);
            break;
        }
        PyList_SET_ITEM(out, i, str);
    }
    PyBuffer_Release(&table);
    return out;
}

PyDoc_STRVAR(functions_doc,
"functions(symtab, strtab)\n"
"--\n\n"
"The defined function symbols of nonzero size (STT_FUNC, STT_GNU_IFUNC), in table order,\n"
"as (keep, names, shndx, value, size, ifunc): keep has one byte per symbol, 1 for those\n"
"listed; names are str as strings() makes them. None if a name does not resolve.");

static PyObject *functions(PyObject *self, PyObject *args)
{
    Py_buffer symtab, strtab;
    if (!PyArg_ParseTuple(args, "y*y*:functions", &symtab, &strtab))
        return NULL;
    Py_ssize_t nsyms = symtab.len / SYM_SIZE;
    const uint8_t *table = symtab.buf, *strings = strtab.buf;
    PyObject *keep = PyBytes_FromStringAndSize(NULL, nsyms);
    PyObject *columns[5] = {PyList_New(0), PyList_New(0), PyList_New(0), PyList_New(0),
                            PyList_New(0)};           /* names, shndx, value, size, ifunc */
    PyObject *result = NULL;
    if (!keep || !columns[0] || !columns[1] || !columns[2] || !columns[3] || !columns[4])
        goto done;
    char *kept = PyBytes_AS_STRING(keep);
    for (Py_ssize_t i = 0; i < nsyms; i++) {
        const uint8_t *sym = table + i * SYM_SIZE;
        int type = sym[4] & 0xF;
        uint16_t shndx = le16(sym + 6);
        uint64_t size = le64(sym + 16);
        kept[i] = (type == STT_FUNC || type == STT_GNU_IFUNC) && shndx && size;
        if (!kept[i])
            continue;
        uint32_t offset = le32(sym);
        const uint8_t *nul = offset < (uint64_t)strtab.len
                                 ? memchr(strings + offset, 0, (size_t)(strtab.len - offset))
                                 : NULL;
        if (!nul) {
            result = Py_NewRef(Py_None);
            goto done;
        }
        PyObject *row[5] = {
            PyUnicode_DecodeUTF8((const char *)strings + offset, nul - (strings + offset),
                                 "surrogateescape"),
            PyLong_FromUnsignedLong(shndx),
            PyLong_FromUnsignedLongLong(le64(sym + 8)),
            PyLong_FromUnsignedLongLong(size),
            Py_NewRef(type == STT_GNU_IFUNC ? Py_True : Py_False),
        };
        int failed = 0;
        for (int c = 0; c < 5; c++) {
            failed |= !row[c] || PyList_Append(columns[c], row[c]) < 0;
            Py_XDECREF(row[c]);
        }
        if (failed)
            goto done;
    }
    result = PyTuple_Pack(6, keep, columns[0], columns[1], columns[2], columns[3],
                          columns[4]);
done:
    Py_XDECREF(keep);
    for (int c = 0; c < 5; c++)
        Py_XDECREF(columns[c]);
    PyBuffer_Release(&symtab);
    PyBuffer_Release(&strtab);
    return result;
}

static PyMethodDef methods[] = {
    {"functions", functions, METH_VARARGS, functions_doc},
    {"listing", listing, METH_VARARGS, listing_doc},
    {"strings", strings, METH_VARARGS, strings_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "extable._fast",
    .m_doc = "The rows of `extable symbols` formatted in C, and symbol names (see "
             "extable/symbols.py, extable/elf.py).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__fast(void)
{
    init_tables();
    return PyModule_Create(&module);
}
