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

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .file import MappedFile


def __getattr__(name: str) -> object:
    # MappedFile (typing, threading, the careful paths) is imported when first asked
    # for: `mcsafe rescue` of a clean file opens SRC with opening and needs no more.
    if name == "MappedFile":
        from .file import MappedFile

        return MappedFile
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


__all__ = ["MappedFile"]
