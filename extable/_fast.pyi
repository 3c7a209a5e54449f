"""The rows of ``extable symbols`` formatted in C, and symbol names (extable/_fast.c)."""

from _typeshed import ReadableBuffer

def listing(symtab: ReadableBuffer, strtab: ReadableBuffer, versym: ReadableBuffer | None,
            vernames: tuple[bytes | None, ...], sections: tuple[bytes, ...] | None,
            json: bool, split_versions: bool, /) -> tuple[int, bytearray] | None:
    """The rows of ``extable symbols`` for a symbol table, as (count, bytearray), or None
    when the table needs extable.symbols' own handling (extable/_fast.c says which)."""

def strings(strtab: ReadableBuffer, offsets: list[int], /) -> list[str] | None:
    """The NUL-terminated strings at ``offsets`` of a string table (bytes that are not
    UTF-8 as lone surrogates), or None if one is out of range or unterminated."""

def functions(symtab: ReadableBuffer, strtab: ReadableBuffer, /
              ) -> tuple[bytes, list[str], list[int], list[int], list[int], list[bool]] | None:
    """The defined function symbols of nonzero size, as (keep, names, shndx, value, size,
    ifunc): keep has one byte per symbol, 1 for those listed. None if a name does not
    resolve."""
