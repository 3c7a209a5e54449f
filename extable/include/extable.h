/* extable.h: mark fault sites and reserve the exception table, for extable(1).
 *
 * A module that wants its faults recovered does two things with this header:
 *
 *   1. EXTABLE_RESERVE(bytes);   at file scope, once: the space `extable build`
 *      fills with the compiled table. It lives in the loaded, read-only section
 *      "extable_table", so the linker defines __start_extable_table and
 *      __stop_extable_table and the runtime needs no file access.
 *
 *   2. In assembly (top-level asm or inline asm), after EXTABLE_ASM_MACROS:
 *
 *        1:  rep movsb
 *        2:
 *            extable_site 1b, 2b, .Lfault, kind=EXTABLE_KIND_SHORT_COPY, ...
 *
 *      Each extable_site writes one 64-byte record into the section
 *      "extable_sites": [start, end) and the landing pad as self-relative
 *      32-bit offsets (resolved by the static linker, so no dynamic relocation),
 *      and the handler descriptor. `extable build` reads the records, sorts and
 *      checks them, and writes the table. docs/FORMAT.md has every byte.
 *
 * The structs below are the table's binary format, for runtimes written in C.
 */
#ifndef EXTABLE_H
#define EXTABLE_H

/* Handler kinds (descriptor `kind`, or the type byte of a classic data word). */
#define EXTABLE_KIND_FIXUP       1   /* resume at the landing pad */
#define EXTABLE_KIND_SHORT_COPY  2   /* resume at the pad; `reg` holds bytes remaining */
#define EXTABLE_KIND_ERRNO       3   /* resume at the pad with `reg` = imm (-errno) */
#define EXTABLE_KIND_UNWIND      4   /* return to the caller with `reg` = imm: no pad, the
                                        caller's frame from the table's unwind rows */

#define EXTABLE_SIDE_NONE  0
#define EXTABLE_SIDE_SRC   1
#define EXTABLE_SIDE_DST   2
#define EXTABLE_SIDE_BOTH  3

#define EXTABLE_FLAG_MC_SAFE  0x01
#define EXTABLE_NOREG         0xff
#define EXTABLE_DATA_EXTENDED 0x00008000u   /* bits 16-31 index a descriptor */
#define EXTABLE_TABLE_LOADED  0x1u

/* Registers, numbered in instruction-encoding order (as Linux's EX_DATA_REG). */
#define EXTABLE_REG_RAX 0
#define EXTABLE_REG_RCX 1
#define EXTABLE_REG_RDX 2
#define EXTABLE_REG_RBX 3
#define EXTABLE_REG_RSP 4
#define EXTABLE_REG_RBP 5
#define EXTABLE_REG_RSI 6
#define EXTABLE_REG_RDI 7
#define EXTABLE_REG_R8  8
#define EXTABLE_REG_R9  9
#define EXTABLE_REG_R10 10
#define EXTABLE_REG_R11 11
/* aarch64: x0..x30 are simply 0..30. */

#define EXTABLE_TABLE_SECTION "extable_table"
#define EXTABLE_SITES_SECTION "extable_sites"

#ifndef __ASSEMBLER__
#include <stdint.h>

/* Reserve `nbytes` for the table (48 + 16 per entry + 16 per descriptor + names). */
#define EXTABLE_RESERVE(nbytes)                                                 \
    static const unsigned char extable_reserved_[(nbytes)]                      \
        __attribute__((section(EXTABLE_TABLE_SECTION), used, aligned(8)))

struct extable_header {
    char     magic[8];          /* "EXTABLE\0" */
    uint16_t version;           /* 1, or 2 with unwind rows (struct extable_unwind_header) */
    uint16_t machine;           /* e_machine: 62 x86-64, 183 aarch64 */
    uint32_t flags;             /* EXTABLE_TABLE_LOADED */
    uint32_t nentries;
    uint32_t ndescs;
    uint32_t entries_off;       /* from the header */
    uint32_t descs_off;
    uint32_t strings_off;
    uint32_t strings_size;
    uint64_t self_vaddr;        /* link-time address of this header (if LOADED) */
};

/* Version 2 only: right after the header, where the unwind rows are. For each
 * sub-range of an `unwind` entry with one call-frame rule, ips[] holds its start
 * (sorted, relative to the load base like every address) and idx[] the row it
 * uses; rows are deduplicated, row_size bytes each (docs/FORMAT.md). */
struct extable_unwind_header {
    uint32_t nunwind;           /* sub-ranges: entries of ips[] and idx[] */
    uint32_t nrows;
    uint32_t ips_off;           /* from the header, like the other offsets */
    uint32_t idx_off;
    uint32_t rows_off;
    uint32_t row_size;          /* 20 on x86-64, 48 on aarch64 */
};

/* One unwind row: where the caller's frame is. The CFA (the stack pointer the
 * caller had before the call) is cfa_reg + cfa_off; save[k] is where slot k was
 * saved, as an offset from the CFA (a negative multiple of 8), or 0 when it was
 * not saved (still in its register). Slots: x86-64 rbx rbp r12 r13 r14 r15 and
 * the return address; aarch64 x19..x29, x30 (the return address), d8..d15. */
#define EXTABLE_UNWIND_SLOTS_X86_64  7
#define EXTABLE_UNWIND_SLOTS_AARCH64 20
struct extable_unwind_row {
    int32_t  cfa_off;
    uint8_t  cfa_reg;           /* register number as above; aarch64 sp is 31 */
    uint8_t  flags;             /* 0 */
    int16_t  save[];            /* the machine's slots, then padding to row_size */
};

/* Addresses are relative to the load base: base = (uintptr_t)header - self_vaddr. */
struct extable_entry {
    uint32_t start;             /* first byte covered */
    uint32_t end;               /* one past the last */
    uint32_t fixup;             /* landing pad */
    uint32_t data;              /* classic word, or EXTENDED with a descriptor index */
};

struct extable_desc {
    uint8_t  kind;
    uint8_t  flags;
    uint8_t  side;
    uint8_t  reg;               /* bytes remaining / errno target */
    uint8_t  src_reg;           /* current source address */
    uint8_t  dst_reg;           /* current destination address */
    uint8_t  rec_reg;           /* pointer to the caller's fault record */
    uint8_t  pad;
    int32_t  imm;
    uint32_t name_off;          /* into the names */
};

/* Classic data word fields (Linux arch/x86/include/asm/extable_fixup_types.h). */
#define EXTABLE_DATA_TYPE(d)  ((d) & 0xff)
#define EXTABLE_DATA_REG(d)   (((d) >> 8) & 0xf)
#define EXTABLE_DATA_FLAGS(d) (((d) >> 12) & 0xf)
#define EXTABLE_DATA_IMM(d)   ((int32_t)(d) >> 16)
#define EXTABLE_DATA_INDEX(d) ((uint32_t)(d) >> 16)

#define EXTABLE_STR_(x) #x
#define EXTABLE_STR(x) EXTABLE_STR_(x)

/* Defines the assembler macro `extable_site` once per assembly file. Put it
 * before the first use in any asm statement: it is guarded, so repeating it
 * is harmless.
 *
 *   extable_site start, end, landing, kind=0, flags=0, side=0, reg=0xff,
 *                src=0xff, dst=0xff, rec=0xff, imm=0, name=, data=0
 *
 * kind=0 makes a classic entry whose data word is `data`. `name` is at most
 * 31 characters, unquoted. */
#define EXTABLE_ASM_MACROS                                                      \
    ".ifndef .Lextable_macros_defined\n"                                        \
    ".set .Lextable_macros_defined, 1\n"                                        \
    ".macro extable_site start:req, end:req, landing:req, kind=0, flags=0, "    \
    "side=0, reg=0xff, src=0xff, dst=0xff, rec=0xff, imm=0, name=, data=0\n"    \
    ".pushsection " EXTABLE_SITES_SECTION ", \"a\"\n"                           \
    ".balign 8\n"                                                               \
    ".Lextable_rec\\@:\n"                                                       \
    ".long (\\start) - .\n"                                                     \
    ".long (\\end) - .\n"                                                       \
    ".long (\\landing) - .\n"                                                   \
    ".long \\data\n"                                                            \
    ".byte \\kind, \\flags, \\side, \\reg, \\src, \\dst, \\rec, 0\n"            \
    ".long \\imm\n"                                                             \
    ".long 0x31535458\n"                                                        \
    ".ascii \"\\name\"\n"                                                       \
    ".if (. - .Lextable_rec\\@) > 63\n"                                         \
    ".error \"extable_site: name longer than 31 characters\"\n"                 \
    ".endif\n"                                                                  \
    ".fill 64 - (. - .Lextable_rec\\@), 1, 0\n"                                 \
    ".popsection\n"                                                             \
    ".endm\n"                                                                   \
    ".endif\n"

#endif /* !__ASSEMBLER__ */
#endif /* EXTABLE_H */
