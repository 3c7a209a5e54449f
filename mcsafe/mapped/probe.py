"""The probe: a private copy of the file's last page that any cut below it unmaps,
the fast path's proof that a copy ending before that page read only the file's
bytes."""

from __future__ import annotations

import mmap
import os
import random

from ._sys import PAGE, map_memory, set_word, unmap, word_at

# The words written over probe pages. Their only requirement is that no file's
# bytes are expected to equal them (not secrecy: nobody else can read a private
# page); a generator seeded from the system's saves a getrandom(2) call per arm.
# Seeded again in a forked child, so parent and child draw different words.
_words = random.Random(os.urandom(16))
os.register_at_fork(after_in_child=lambda: _words.seed(os.urandom(16)))


class ProbePage:
    """One page of the file, mapped privately, with a random word of ours written
    over its start (a copy-on-write page: the file never sees it).

    Cutting a file to or below a page's start unmaps that page from every
    mapping of the file, private copies included (truncate_pagecache(): POSIX
    says such a page must fault), and only cutting does so. So while the word
    reads back as written, the file has not been cut to the page's start since
    it was written, and held every byte before it: the fast path's proof
    (MappedFile.readinto). After a cut the word reads as the file's own bytes
    (the page faulted in again from a file written long again) or faults (it
    was not). The word is random so that no file's bytes are expected to equal
    it: 2**-64 per cut."""

    def __init__(self, address: int, word: int) -> None:
        self.address, self.word = address, word

    @classmethod
    def arm(cls, fd: int, offset: int) -> ProbePage | None:
        """Map the file's page at offset and write a fresh word over its start;
        None if the page could not be mapped or read (cut under us, or bad)."""
        try:
            address = map_memory(PAGE, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE, fd,
                                 offset)
        except OSError:
            return None
        word = _words.getrandbits(64)
        if not set_word(address, word):
            unmap(address, PAGE)
            return None
        return cls(address, word)

    def read(self) -> int | None:
        """The word the page holds now, or None if reading it faults."""
        return word_at(self.address)

    def close(self) -> None:
        unmap(self.address, PAGE)


class Probe:
    """The pages armed on the file's last page: the newest, and the one before
    it, left mapped so that a call in flight that fetched it before the newest
    was armed (the file changed size) reads its word instead of faulting."""

    def __init__(self) -> None:
        self._pages: list[ProbePage] = []

    def arm(self, fd: int, offset: int) -> tuple[int, int] | None:
        """Arm a page on the file's page at offset: (its address, its word), or
        None if the page could not be mapped or read."""
        page = ProbePage.arm(fd, offset)
        if page is None:
            return None
        self._pages.append(page)
        if len(self._pages) > 2:
            self._pages.pop(0).close()
        return page.address, page.word

    def close(self) -> None:
        while self._pages:
            self._pages.pop().close()
