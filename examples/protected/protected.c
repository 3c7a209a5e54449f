/* A module with its own protected routines, recovered through its own table.
 *
 *   cc -O2 -shared -fPIC -I$(extable --include-dir) protected.c -o protected.so
 *   extable build protected.so --in-place
 *   python -c "import mcsafe; mcsafe.register('protected.so')"
 *
 * See docs/EXTENDING.md.
 */
#include <errno.h>
#include <stddef.h>

#include "extable.h"

EXTABLE_RESERVE(512);

/* The directives around each routine: a global function with a size, so that
 * `extable dump` can name addresses as symbol+offset. */
#define FUNC(name) "    .globl " name "\n    .type " name ", %function\n" name ":\n"
#define END(name)  "    .size " name ", .-" name "\n"

/* long probe_read(const unsigned char *p): the byte at p, or -EFAULT if
 * reading it faults. The load is one classic `errno` entry: on a fault the
 * runtime sets the return register (rax / x0, register 0 on both) to the
 * entry's immediate (-EFAULT) and resumes at 2:.
 *
 * size_t sum_bytes(const unsigned char *p, size_t n, size_t *left): adds n
 * bytes; on a fault stops and stores the bytes not read in *left. The loop's
 * load is an extended `short_copy` entry naming the count register and the
 * source cursor, so the runtime claims a fault only inside [src, src + count). */
#if defined(__x86_64__)
__asm__(EXTABLE_ASM_MACROS
        "    .text\n"
        FUNC("probe_read")
        "    xor %eax, %eax\n"
        "1:  movzbl (%rdi), %eax\n"
        "2:  ret\n"
        END("probe_read")
        /* classic data word: type 3 (errno), reg 0 (rax), imm -14 (-EFAULT) */
        "    extable_site 1b, 2b, 2b, data=0xfff20003\n"
        FUNC("sum_bytes")
        "    xor %eax, %eax\n"
        "    test %rsi, %rsi\n"
        "    jz 5f\n"
        "3:  movzbl (%rdi), %ecx\n"
        "4:  add %rcx, %rax\n"
        "    inc %rdi\n"
        "    dec %rsi\n"
        "    jnz 3b\n"
        "5:  mov %rsi, (%rdx)\n"
        "    ret\n"
        END("sum_bytes")
        /* count in rsi (6), source cursor in rdi (7) */
        "    extable_site 3b, 4b, 5b, kind=2, flags=1, side=1, reg=6, src=7, name=sum_load\n");
#elif defined(__aarch64__)
__asm__(EXTABLE_ASM_MACROS
        "    .text\n"
        FUNC("probe_read")
        "    mov x1, x0\n"
        "    mov x0, #0\n"
        "1:  ldrb w0, [x1]\n"
        "2:  ret\n"
        END("probe_read")
        /* classic data word: type 3 (errno), reg 0 (x0), imm -14 (-EFAULT) */
        "    extable_site 1b, 2b, 2b, data=0xfff20003\n"
        FUNC("sum_bytes")
        "    mov x3, x0\n"
        "    mov x0, #0\n"
        "    cbz x1, 5f\n"
        "3:  ldrb w4, [x3]\n"
        "4:  add x0, x0, x4\n"
        "    add x3, x3, #1\n"
        "    subs x1, x1, #1\n"
        "    b.ne 3b\n"
        "5:  str x1, [x2]\n"
        "    ret\n"
        END("sum_bytes")
        /* count in x1, source cursor in x3 */
        "    extable_site 3b, 4b, 5b, kind=2, flags=1, side=1, reg=1, src=3, name=sum_load\n");
#else
#error "protected.c has routines for x86-64 and aarch64"
#endif
