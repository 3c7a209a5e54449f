"""The probe: a private copy of the file's last page that any cut below it unmaps,
the fast path's proof that a copy ending before that page read only the file's
bytes."""

from __future__ import annotations

import ctypes
import mmap
import os

from .._mcsafe import _copy_or_report
from ._sys import MAP_FAILED, MAP_FIXED, PAGE, PROT_NONE, libc


class ProbePage:
    """One page of address space that holds, privately mapped, the file's last
    page with a random word of ours written over its start (a copy-on-write
    page: the file never sees it).

    Cutting a file to or below a page's start unmaps that page from every
    mapping of the file, private copies included (truncate_pagecache(): POSIX
    says such a page must fault), and only cutting does so. So while the word
    reads back as written, the file has not been cut to the page's start since
    it was written, and held every byte before it: the fast path's proof
    (MappedFile.readinto). After a cut the word reads as the file's own bytes
    (the page faulted in again from a file written long again) or faults (it
    was not). The word is random so that no file's bytes are expected to equal
    it: 2**-64 per cut."""

    def __init__(self) -> None:
        self.address: int | None = self._reserve(None)
        self._word = memoryview((ctypes.c_ubyte * 8).from_address(self.address)).cast("B") \
            if self.address else None

    @staticmethod
    def _reserve(at: int | None) -> int | None:
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | (MAP_FIXED if at else 0)
        address = libc.mmap(at, PAGE, PROT_NONE, flags, -1, 0)
        return None if address in (None, MAP_FAILED) else address

    def arm(self, fd: int, offset: int) -> int | None:
        """Map the file's page at offset here and write a fresh word over its start:
        the word, or None if the page could not be mapped or read."""
        if self.address is None or self._word is None:
            return None
        prot = mmap.PROT_READ | mmap.PROT_WRITE
        at = libc.mmap(self.address, PAGE, prot, mmap.MAP_PRIVATE | MAP_FIXED, fd, offset)
        if at != self.address:
            # A failed MAP_FIXED may have unmapped the page: reserve it again, or
            # give it up (never probed, never unmapped by us: it may be another's).
            if self._reserve(self.address) != self.address:
                self.address = None
            return None
        word = int.from_bytes(os.urandom(8), "little")
        if _copy_or_report(self._word, word.to_bytes(8, "little"), 8) != 8:
            return None         # the page faults: cut under us, or unreadable
        return word

    def read(self) -> int | None:
        """The word the page holds now, or None if reading it faults."""
        if self._word is None:
            return None
        got = bytearray(8)
        if _copy_or_report(got, self._word, 8) != 8:
            return None
        return int.from_bytes(got, "little")

    def close(self) -> None:
        if self._word is not None:
            self._word.release()
        if self.address is not None:
            libc.munmap(self.address, PAGE)


class Probe:
    """Two probe pages, armed in turn, so that arming one (the file changed
    size) never fails the calls in flight that check the other."""

    def __init__(self) -> None:
        self._pages = [p for p in (ProbePage(), ProbePage()) if p.address is not None]
        self._turn = 0

    def arm(self, fd: int, offset: int) -> tuple[int, int] | None:
        """Arm the next page on the file's page at offset: (its address, its word),
        or None if the page could not be mapped or read."""
        if not self._pages:
            return None
        page = self._pages[self._turn % len(self._pages)]
        self._turn += 1
        word = page.arm(fd, offset)
        return None if word is None or page.address is None else (page.address, word)

    def close(self) -> None:
        for page in self._pages:
            page.close()
