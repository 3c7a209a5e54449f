/* A plain C function, never annotated: no extable.h, no assembly, no
 * landing pad. `extable build --rule 'checksum=unwind'` makes a fault anywhere
 * in it return -EFAULT to its caller (docs/EXTENDING.md, "Protecting a plain C
 * function"). The table goes into a section added to the built library
 * (--add-section), so the source stays as it is:
 *
 *   cc -O2 -shared -fPIC checksum.c -o checksum.so
 *   extable build checksum.so --in-place --add-section --rule 'checksum=unwind'
 *   python examples/unwind/run.py checksum.so
 */
#include <stddef.h>
#include <stdint.h>

/* Adler-32 over caller-owned memory: returns the checksum, or -EFAULT (as a
 * negative int64) when the memory cannot be read. */
int64_t checksum(const unsigned char *p, size_t n)
{
    uint32_t a = 1, b = 0;
    for (size_t i = 0; i < n; i++) {
        a = (a + p[i]) % 65521;
        b = (b + a) % 65521;
    }
    return (int64_t)((b << 16) | a);
}
