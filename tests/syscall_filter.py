"""A seccomp filter that makes the read(2) family fail for the calling thread, so a
test can prove that no read(2)/pread(2) served the bytes a call returned: in a
process that cannot read a file with them, a reader that still returns every
byte exactly got them elsewhere (for MappedFile: through the mapping).

Written by hand (a dozen BPF instructions through prctl) rather than with a
libseccomp binding: PyPI's are unmaintained or one person's builds, and
Debian's python3-seccomp serves only the system interpreter.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct

#: What a forbidden call fails with: a code no file read gives, so an error that
#: leaks out of the code under test names the filter.
REFUSED = errno.ENOTRECOVERABLE

# (AUDIT_ARCH_*, read, readv, pread64, preadv, preadv2) per machine
_MACHINES = {
    "x86_64": (0xC000003E, 0, 19, 17, 295, 327),
    "aarch64": (0xC00000B7, 63, 65, 67, 69, 286),
}

PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO = 0x7FFF0000, 0x00050000
# classic BPF: ld [k] (word, absolute), jeq #k, jgt #k, ret #k
LD, JEQ, JGT, RET = 0x20, 0x15, 0x25, 0x06
ARCH, NR = 4, 0                                     # offsets in struct seccomp_data


def _arg(i: int, high: bool = False) -> int:
    return 16 + 8 * i + (4 if high else 0)          # args[i], little-endian halves


def unavailable() -> str | None:
    """Why the filter cannot be used here, or None."""
    machine = os.uname().machine
    if machine not in _MACHINES:
        return f"no syscall numbers for {machine} in tests/syscall_filter.py"
    return None


def forbid_file_reads(fds: tuple[int, ...] = ()) -> None:
    """From now on, in the calling thread: pread64(2) of more than one byte,
    preadv(2) and preadv2(2) on any descriptor, and read(2) and readv(2) on `fds`,
    fail with REFUSED. One-byte pread64(2) is left alone: it is how MappedFile
    tells the end of a file from a bad page after a fault (the byte is not
    handed to anyone). Cannot be undone; use it in a child process."""
    arch, read, readv, pread64, preadv, preadv2 = _MACHINES[os.uname().machine]
    # (code, where to go if true, where if false, k): a label or None (the next one)
    prog: list[tuple[int, str | None, str | None, int] | str] = [
        (LD, None, None, ARCH),
        (JEQ, None, "allow", arch),                 # another ABI: not ours to judge
        (LD, None, None, NR),
        (JEQ, "deny", None, preadv),
        (JEQ, "deny", None, preadv2),
        (JEQ, "count", None, pread64),
        (JEQ, "fd", None, read),
        (JEQ, "fd", "allow", readv),
        "fd",
        (LD, None, None, _arg(0)),
        *[(JEQ, "deny", None, fd) for fd in fds],
        (RET, None, None, SECCOMP_RET_ALLOW),
        "count",                                    # pread64's count: more than 1?
        (LD, None, None, _arg(2, high=True)),
        (JEQ, None, "deny", 0),
        (LD, None, None, _arg(2)),
        (JGT, "deny", "allow", 1),
        "allow",
        (RET, None, None, SECCOMP_RET_ALLOW),
        "deny",
        (RET, None, None, SECCOMP_RET_ERRNO | REFUSED),
    ]
    code = _assemble(prog)
    buf = ctypes.create_string_buffer(code, len(code))

    class Fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = Fprog(len(code) // 8, ctypes.addressof(buf))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong,
                           ctypes.c_ulong]
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, None, 0, 0) != 0 or \
            libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0):
        err = ctypes.get_errno()
        raise OSError(err, f"seccomp filter refused: {os.strerror(err)}")


def _assemble(prog: list) -> bytes:
    """Classic BPF from instructions whose jumps name labels (strings in the list)."""
    at, n = {}, 0
    for item in prog:
        if isinstance(item, str):
            at[item] = n
        else:
            n += 1
    out, n = [], 0
    for item in prog:
        if isinstance(item, str):
            continue
        code, jt, jf, k = item
        n += 1
        out.append(struct.pack("=HBBI", code, at[jt] - n if jt else 0, at[jf] - n if jf else 0,
                               k))
    return b"".join(out)
