"""What the tests expect of the build and of this machine, written down once and
decided without the code under test: the extension's named table sites and copy
paths, and which fault injection methods this machine offers (from the kernel's
version and configuration, not from trying mcsafe). A regression that drops a
site, a path or a method then fails a test instead of shrinking what is tested."""

from __future__ import annotations

import os
from pathlib import Path

SMALL_SITES = frozenset({"group_load", "group_store", "word_load", "word_store", "byte_load",
                         "byte_store"})
#: The extension's table by machine: its copy sites' descriptor names, the
#: registers (count, src, dst, record) every copy descriptor names; the scan's
#: sites (loads only), whose descriptors name the same but no dst.
SITES = {
    "x86_64": (SMALL_SITES | {"rep_movsb", "wide_load", "wide_store", "mcsafe_copy_avx2_load",
                              "mcsafe_copy_avx2_store", "mcsafe_copy_avx2_nt_load",
                              "mcsafe_copy_avx2_nt_store"}, ("rcx", "rsi", "rdi", "r8"),
               {"mcsafe_scan_avx2_load", "mcsafe_scan_sse2_load", "scan_word_load",
                "scan_byte_load"}),
    "aarch64": (SMALL_SITES | {"bulk_load", "bulk_store"}, ("x2", "x1", "x0", "x3"),
                {"scan_group_load", "scan_word_load", "scan_byte_load"}),
}


def sites(dump: dict) -> list[str]:
    """The sites of an `extable dump --json` of the extension: its entries'
    descriptor names, sorted (one entry a site, so a site twice shows twice)."""
    return sorted(e["descriptor"]["name"] for e in dump["entries"])


def expected_sites(machine: str) -> list[str]:
    """The sites the extension built for machine must have, sorted as sites()."""
    return sorted(SITES[machine][0] | SITES[machine][2])


#: The copy paths each machine's extension has (mcsafe._mcsafe.copy_paths()).
COPY_PATHS = {"x86_64": ("small", "bulk", "vector", "vector_nt"), "aarch64": ("small", "bulk")}
#: The scan's paths (mcsafe._mcsafe.SCAN_PATHS).
SCAN_PATHS = {"x86_64": ("sse2", "avx2"), "aarch64": ("ldp",)}

#: The emulator the tests run under, if any: tests/test_emulated_extension.py
#: sets it for what it runs under qemu-user.
EMULATOR_VARIABLE = "MCSAFE_TEST_EMULATOR"
VM = Path("/proc/sys/vm")


def _capable(bit: int) -> bool:
    """Whether this process has the capability (CAP_SYS_PTRACE 19, CAP_SYS_ADMIN 21)."""
    with open("/proc/self/status") as f:
        effective = next(line for line in f if line.startswith("CapEff:")).split()[1]
    return bool(int(effective, 16) >> bit & 1)


def _kernel_at_least(major: int, minor: int) -> bool:
    release = os.uname().release.split("-")[0].split(".")
    return (int(release[0]), int(release[1])) >= (major, minor)


def injection_methods(emulator: str | None = None) -> dict[str, str | None]:
    """mcsafe.inject's methods -> None where the method must work here, else a
    phrase the reason inject.available() gives must contain.

    Native: mprotect and truncate work everywhere; uffd needs userfaultfd
    (CONFIG_USERFAULTFD: /proc/sys/vm/unprivileged_userfaultfd exists), UFFDIO_POISON
    (Linux 6.6) and CAP_SYS_PTRACE or vm.unprivileged_userfaultfd = 1; madvise needs
    CONFIG_MEMORY_FAILURE (/proc/sys/vm/memory_failure_early_kill exists) and
    CAP_SYS_ADMIN.
    Under qemu-user: qemu implements no userfaultfd system call (ENOSYS), and takes
    madvise as a hint, returning 0 without poisoning anything, so the page reads."""
    if emulator == "qemu-user":
        return {"uffd": "Function not implemented", "mprotect": None, "truncate": None,
                "madvise": "a plain read does not fault on"}
    assert emulator is None, f"no expectations for emulator {emulator!r}"
    if not (VM / "unprivileged_userfaultfd").exists():
        uffd: str | None = "userfaultfd() failed"
    elif not _kernel_at_least(6, 6):
        uffd = "needs Linux 6.6+"
    elif not _capable(19) and (VM / "unprivileged_userfaultfd").read_text().strip() != "1":
        uffd = "userfaultfd() failed"
    else:
        uffd = None
    if not (VM / "memory_failure_early_kill").exists():
        madvise: str | None = "EINVAL: the kernel has no CONFIG_MEMORY_FAILURE"
    elif not _capable(21):
        madvise = "EPERM: it needs CAP_SYS_ADMIN"
    else:
        madvise = None
    return {"uffd": uffd, "mprotect": None, "truncate": None, "madvise": madvise}


def uffd_poison_code(emulator: str | None = None) -> int | None:
    """The si_code a read of a UFFDIO_POISON page raises here: BUS_MCEERR_AR (4)
    with CONFIG_MEMORY_FAILURE, else BUS_ADRERR (2); None where uffd is unavailable."""
    if injection_methods(emulator)["uffd"] is not None:
        return None
    return 4 if (VM / "memory_failure_early_kill").exists() else 2


def emulator() -> str | None:
    """The emulator these tests run under (None: natively)."""
    return os.environ.get(EMULATOR_VARIABLE) or None
