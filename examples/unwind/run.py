"""Call a protected plain C function on memory with a poisoned page.

    cc -O2 -shared -fPIC examples/unwind/checksum.c -o checksum.so
    extable build checksum.so --in-place --add-section --rule 'checksum=unwind'
    python examples/unwind/run.py checksum.so

Prints the checksum of a good page, then -14 (-EFAULT) for a range that runs
into a page poisoned with userfaultfd (a SIGBUS, as from a bad DIMM or a file
that failed underneath) or made PROT_NONE (a SIGSEGV) where poisoning is not
available: the function returned to its caller; nothing else happened.
"""

from __future__ import annotations

import ctypes
import sys
import zlib

import mcsafe
from mcsafe import inject


def main(path: str) -> int:
    lib = ctypes.CDLL(path)
    lib.checksum.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    lib.checksum.restype = ctypes.c_int64
    mcsafe.register(path)                       # the table in the file, proved and published
    method = "uffd" if inject.available()["uffd"] is None else "mprotect"
    with inject.region(method, 2, [1]) as r:    # page 1 is bad
        good = bytes(r.buffer[:inject.PAGE])
        print(f"checksum(page 0)      = {lib.checksum(r.address, inject.PAGE):#010x} "
              f"(zlib.adler32: {zlib.adler32(good):#010x})")
        before = mcsafe.claimed_faults()
        value = lib.checksum(r.address, 2 * inject.PAGE)
        recovered = mcsafe.claimed_faults() - before
        print(f"checksum(pages 0..1)  = {value} "
              f"(page 1 {'poisoned' if method == 'uffd' else 'PROT_NONE'}: -EFAULT)")
    print(f"faults recovered: {recovered}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "./checksum.so"))
