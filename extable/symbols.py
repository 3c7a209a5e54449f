"""What ``extable symbols`` prints: the function list in order, as text or JSON."""

from __future__ import annotations

import itertools
import operator

from .elf import ET_REL, SHT_DYNSYM, ElfImage, FunctionSymbols
from .errors import ExtableError

TYPE_CHECKING = False
if TYPE_CHECKING:                       # typing is imported only for the type checker
    from typing import Any, Callable, Iterator

_MANGLED = ("_Z", "_R")       # Itanium C++ and Rust v0


def order(funcs: FunctionSymbols, names: list[str], key: str, reverse: bool = False
          ) -> list[int] | None:
    """Indices in the order asked for: address, name or size, each ascending as nm sorts
    (ties by address, then name), or the file's order; reversed (nm -r) if asked. None
    for the file's order unreversed."""
    idx = range(len(funcs))
    start, size = funcs.start, funcs.size
    if key == "address":
        out = sorted(idx, key=lambda i: (start[i], names[i]))
    elif key == "name":
        out = sorted(idx, key=lambda i: (names[i], start[i]))
    elif key == "size":
        out = sorted(idx, key=lambda i: (size[i], start[i], names[i]))
    elif not reverse:
        return None
    else:
        out = list(idx)
    return out[::-1] if reverse else out


def demangle_names(names: list[str], path: str) -> list[str]:
    """Names with C++ and Rust symbols demangled by binutils' ``c++filt``, in one batch.

    c++filt rather than a Python demangler: it is the demangler readelf and nm
    use (``nm -C``), so the names match theirs, and it is on every machine with
    binutils. A version suffix (``@@GLIBC_2.14``) is kept as it is.
    """
    import shutil
    import subprocess

    which = [i for i, n in enumerate(names) if n.startswith(_MANGLED)]
    if not which:
        return names
    tool = shutil.which("c++filt")
    if tool is None:
        raise ExtableError("--demangle needs c++filt (binutils), which is not installed", path)
    bare, suffix = [], []
    for i in which:
        name, at, version = names[i].partition("@")
        bare.append(name)
        suffix.append(at + version)
    try:
        proc = subprocess.run([tool], input="\n".join(bare) + "\n", capture_output=True,
                              text=True, errors="surrogateescape", check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise ExtableError(f"--demangle: c++filt failed: {exc}", path) from None
    lines = proc.stdout.split("\n")
    if len(lines) < len(bare):
        raise ExtableError("--demangle: c++filt returned fewer names than it was given", path)
    out = list(names)
    for i, name, tail in zip(which, lines, suffix):
        out[i] = name + tail
    return out


def listing(image: ElfImage, sort: str = "file", demangle: bool = False,
            as_json: bool = False, reverse: bool = False) -> Iterator[bytes | bytearray]:
    """The whole output of ``extable symbols``: one line per function, or a JSON array.

    Text: ``START END SIZE NAME`` (``SECTION+OFFSET SIZE NAME`` for ET_REL), with
    `` (ifunc)`` after STT_GNU_IFUNC symbols; names are the file's bytes. JSON: objects
    with name, start, end, size, type (func or ifunc), version, default (and section for
    ET_REL); a name that is not UTF-8 is shown as readelf shows it, with its bytes in
    ``name_hex`` (:mod:`extable.names`).
    Yielded in chunks of bytes. In symbol-table order and without demangling, the rows
    come from the C accelerator (:mod:`extable._fast`) when it is built and takes the
    file; otherwise, and always as the reference it is tested against, from
    :func:`listing_in_python`.
    """
    if sort == "file" and not demangle and not reverse:
        fast = _listing_in_c(image, as_json)
        if fast is not None:
            return iter(fast)
    return (chunk.encode("utf-8", "surrogateescape")
            for chunk in listing_in_python(image, sort, demangle, as_json, reverse))


def _header(image: ElfImage, table: str, count: int) -> str:
    return (f"# {count} functions from {table} of {image.path}"
            + (" (relocatable: section+offset)\n" if image.type == ET_REL else "\n"))


def _listing_in_c(image: ElfImage, as_json: bool) -> list[bytes | bytearray] | None:
    """The output in symbol-table order formatted by extable._fast, or None when it is
    not built (a source tree, another machine's package) or declines the file."""
    try:
        from . import _fast
    except ImportError:
        return None
    symtab, raw, strings = image.symbol_table_bytes()
    versions = image.symbol_versions
    versym: bytes | None = None
    vernames: tuple[bytes | None, ...] = ()
    if versions is not None and symtab.type == SHT_DYNSYM:
        versym, names = versions
        table: list[bytes | None] = [None] * (max(names, default=0) + 1)
        for ndx, name in names.items():
            table[ndx] = name.encode("utf-8", "surrogateescape")
        vernames = tuple(table)
    sections = (tuple(s.name.encode("utf-8", "surrogateescape") for s in image.sections)
                if image.type == ET_REL else None)
    rows = _fast.listing(raw, strings, versym, vernames, sections, as_json,
                         versions is not None and symtab.type != SHT_DYNSYM)
    if rows is None:
        return None
    count, body = rows
    if as_json:
        return [body]
    return [_header(image, symtab.name, count).encode("utf-8", "surrogateescape"), body]


def listing_in_python(image: ElfImage, sort: str = "file", demangle: bool = False,
                      as_json: bool = False, reverse: bool = False) -> Iterator[str]:
    """:func:`listing` in Python, as text (names that are not UTF-8 hold lone surrogates).

    Chunks, each built with one ``%`` over its rows so the loop runs in C.
    """
    f = image.functions
    versioned = f.versions.count(None) != len(f.versions)
    names = [f.display_name(i) for i in range(len(f))] if versioned else f.names
    if demangle:
        names = demangle_names(names, image.path)
    rel = image.type == ET_REL
    idx = order(f, names, sort, reverse)

    def col(values: list[Any]) -> list[Any]:
        return values if idx is None else [values[i] for i in idx]

    start, size, names = col(f.start), col(f.size), col(names)
    end = list(map(operator.add, start, size))
    where = col([image.sections[n].name if n < len(image.sections) else f"[{n}]"
                 for n in f.shndx]) if rel else None
    if as_json:
        plain = image.plain_symbol_names and not demangle
        return _json(start, end, size, names, col(f.ifunc), col(f.versions), col(f.hidden),
                     where, plain)
    head = _header(image, f.table, len(f))
    if where is not None:
        cols, line = [where, start, size, names], "%s+%#x %8d %s"
    else:
        cols, line = [start, end, size, names], "0x%016x 0x%016x %8d %s"
    if any(f.ifunc):
        cols.append([" (ifunc)" if x else "" for x in col(f.ifunc)])
        line += "%s"
    return itertools.chain((head,), _format(line + "\n", cols))


def _format(line: str, cols: list[list[Any]], rows: int = 8192) -> Iterator[str]:
    """``line % row`` for every row, in chunks of ``rows`` rows."""
    for at in range(0, len(cols[0]), rows):
        part = [c[at:at + rows] for c in cols]
        yield (line * len(part[0])) % tuple(itertools.chain.from_iterable(zip(*part)))


def _quoted_name(name: str, quote: Callable[[str], str]) -> str:
    """A name's JSON value; one that is not UTF-8 is shown as readelf shows it, and its
    bytes follow in ``name_hex`` (a lone surrogate is not valid JSON text)."""
    from .names import is_text, raw_hex, shown

    if is_text(name):
        return quote(name)
    return f'{quote(shown(name))},"name_hex":"{raw_hex(name)}"'


def _json(start: list[int], end: list[int], size: list[int], names: list[str],
          ifunc: list[bool], versions: list[str | None], hidden: list[bool],
          where: list[str] | None, plain: bool = False) -> Iterator[str]:
    from json.encoder import encode_basestring_ascii as quote   # C; what json.dumps uses

    if not names:
        yield "[]\n"
        return
    # Names from a plain string table need no escaping; columns that are the same for
    # every row go into the format as literals.
    if plain:
        cols: list[list[Any]] = [names]
        line = '{"name":"%s"'
    else:
        cols, line = [[_quoted_name(n, quote) for n in names]], '{"name":%s'
    cols += [start, end, size]
    line += ',"start":%d,"end":%d,"size":%d'
    if any(ifunc):
        cols.append(['"ifunc"' if x else '"func"' for x in ifunc])
        line += ',"type":%s'
    else:
        line += ',"type":"func"'
    if versions.count(None) != len(versions):
        quoted = {v: "null" if v is None else quote(v) for v in set(versions)}
        cols.append([quoted[v] for v in versions])
        cols.append(["true" if v is not None and not h else "false"
                     for v, h in zip(versions, hidden)])
        line += ',"version":%s,"default":%s'
    else:
        line += ',"version":null,"default":false'
    if where is not None:
        cols.append([quote(w) for w in where])
        line += ',"section":%s'
    # Rows end in ",\n"; the last one's comma becomes the closing bracket.
    parts = _format(line + "},\n", cols)
    last = ""
    yield "["
    for part in parts:
        if last:
            yield last
        last = part
    yield last[:-2] + "]\n"
