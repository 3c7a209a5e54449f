"""MappedFile: pread(2)/pwrite(2) semantics on a mapping of a file, surviving bad
pages. Its parts, each used by the one before it and never the other way:

=============  ===================================================================
file           MappedFile: the calls, the life cycle, the fast paths
careful        the careful paths after a fault or a failed probe, and the verdicts
scrub          reading a whole file for its bad ranges
arrays         read_array(): numpy arrays, never short
badranges      the bad-range memory (a bad-block list)
mapping        the mapping of the file, its growth, what calls see of it
probe          the private page whose survival proves no cut below the last page
opening        opening a file, refusing what cannot be mapped
_sys           mmap, munmap, msync, madvise and fstatfs, made by the extension
=============  ===================================================================
"""

from .file import MappedFile

__all__ = ["MappedFile"]
