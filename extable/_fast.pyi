"""The rows of ``extable symbols``, formatted in C (extable/_fast.c)."""

from _typeshed import ReadableBuffer

def listing(symtab: ReadableBuffer, strtab: ReadableBuffer, versym: ReadableBuffer | None,
            vernames: tuple[bytes | None, ...], sections: tuple[bytes, ...] | None,
            json: bool, split_versions: bool, /) -> tuple[int, bytearray] | None:
    """The rows of ``extable symbols`` for a symbol table, as (count, bytearray), or None
    when the table needs extable.symbols' own handling (extable/_fast.c says which)."""
