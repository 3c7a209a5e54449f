"""``extable dump|verify|lookup`` on Linux kernel objects: all their output lives here.

Called by :mod:`extable.cli` when the file is a kernel object; the exit codes
and the one-line errors are the command's (0 ok, 1 a check failed or nothing
was found, 2 bad input).
"""

from __future__ import annotations

import argparse
import itertools
import sys
from typing import Iterable, Iterator

from ..errors import CheckFailed, ExtableError
from ..names import json_text
from .reader import Opened, describe, read
from .verify import verify

EXIT_OK, EXIT_CHECK, EXIT_INPUT = 0, 1, 2


def run(args: argparse.Namespace) -> int:
    """Run dump, verify or lookup on the kernel object ``args.file``; failures end here.

    A failure is one line on stderr and, with --json, also ``{"error", "file", "exit"}``
    on stdout, so that a script can parse every outcome.
    """
    try:
        return _run(args)
    except CheckFailed as exc:
        return fail(args, exc, EXIT_CHECK)
    except ExtableError as exc:
        return fail(args, exc, EXIT_INPUT)


def fail(args: argparse.Namespace, exc: ExtableError, code: int) -> int:
    """Report ``exc`` as the command's outcome and return ``code``."""
    message = " ".join(exc.message.split())
    path = exc.path or args.file
    if args.json:
        sys.stdout.write(json_text({"error": message, "file": path, "exit": code}) + "\n")
    print(f"extable: {path}: {message}", file=sys.stderr)
    return code


def _run(args: argparse.Namespace) -> int:
    if getattr(args, "section", None):
        raise ExtableError("--section does not apply to kernel objects (the table is "
                           "__ex_table)", args.file)
    with read(args.file, getattr(args, "kernel_version", None)) as opened:
        if opened.note:
            print(f"extable: note: {args.file}: {opened.note}", file=sys.stderr)
        command = {"dump": _dump, "verify": _verify, "lookup": _lookup}[args.command]
        return command(args, opened)


def _head(opened: Opened) -> dict[str, object]:
    return {"file": opened.image.path, "format": opened.fmt.FORMAT, "object": opened.kind,
            "kernel": opened.version, "kernel_source": opened.version_source,
            "types": opened.types.label, "types_note": opened.note}


def _header_line(opened: Opened) -> str:
    v = opened.version or "unknown"
    return (f"{opened.image.path}: {opened.fmt.FORMAT} {opened.kind}, kernel {v} "
            f"({opened.version_source}), {opened.types.label}+ types, {len(opened)} entries"
            + ("" if opened.table is not None else " (no __ex_table)"))


def line(opened: Opened, d: dict[str, object]) -> str:
    insn, fixup = describe(d["insn"]), describe(d["fixup"])   # type: ignore[arg-type]
    return f"{d['index']:6d}  {insn:<48} -> {fixup:<48} {opened.fmt.text(d)}"


def _emit(args: argparse.Namespace, obj: dict[str, object], lines: Iterable[str],
          items: Iterable[dict[str, object]] | None = None, key: str = "entries") -> None:
    """Print ``lines``, or with --json ``obj`` (plus ``items`` under ``key``) as one document.

    Streamed: one list item per line through the C encoder (``indent=`` would use the
    pure-Python one, 25 times slower on a 100k-entry table), nothing held but the arrays.
    """
    write = sys.stdout.write
    if not args.json:
        for chunk in _chunks(lines):
            write(chunk)
        return
    if items is None:
        write(json_text(obj) + "\n")
        return
    write(json_text(obj)[:-1] + f', "{key}": [')
    sep = "\n"
    for chunk in _chunks(map(json_text, items), sep=",\n"):
        write(sep + chunk)
        sep = ",\n"
    write("\n]}\n" if sep != "\n" else "]}\n")


def _chunks(lines: Iterable[str], sep: str = "\n", size: int = 4096) -> Iterator[str]:
    """Lines joined in blocks: few writes, bounded memory."""
    block: list[str] = []
    for text in lines:
        block.append(text)
        if len(block) == size:
            yield sep.join(block) + (sep if sep == "\n" else "")
            block = []
    if block:
        yield sep.join(block) + (sep if sep == "\n" else "")


def _dump(args: argparse.Namespace, opened: Opened) -> int:
    opened.namer.check()    # a bad symbol table fails here, before the first line is written
    decoded: dict[int, dict[str, object]] = {}
    entries = (d for chunk in (opened.table.chunks() if opened.table is not None else ())
               for d in opened.entries(chunk, decoded))
    if args.json:
        _emit(args, _head(opened), [], entries)
    else:
        _emit(args, {}, itertools.chain([_header_line(opened)],
                                        (line(opened, d) for d in entries)))
    return EXIT_OK


def _verify(args: argparse.Namespace, opened: Opened) -> int:
    findings = ([] if opened.table is None else
                verify(opened.image, opened.table, opened.fmt, opened.types, opened.where))
    if findings:
        first = findings[0]
        more = (f" (+{len(findings) - 1} more; --json lists them)"
                if len(findings) > 1 and not args.json else "")
        who = f"entry {first.index}" if first.index >= 0 else "__ex_table"
        summary = f"{who}: {first.message}{more}"
    if args.json:
        _emit(args, {**_head(opened), "ok": not findings, "entries": len(opened)}, [],
              (f.as_dict() for f in findings), key="findings")
        if findings:
            print(f"extable: {args.file}: {summary}", file=sys.stderr)
        return EXIT_CHECK if findings else EXIT_OK
    if findings:
        raise CheckFailed(summary, args.file)
    _emit(args, {}, [f"{args.file}: ok, {len(opened)} entries ({opened.fmt.FORMAT} "
                     f"{opened.kind}, kernel {opened.version or 'unknown'}, "
                     f"{opened.types.label}+ types)"])
    return EXIT_OK


def _target(opened: Opened, text: str) -> tuple[int, int] | int:
    """(section, offset) for SYMBOL+OFF or SECTION+OFF; an address for a number."""
    image = opened.image
    if not text:        # also argparse's None for ``lookup FILE -- --``
        raise image.error("lookup needs an address, SYMBOL[+OFF] or SECTION[+OFF]")
    number = _number(text)
    if number is not None:
        if not image.linked:
            raise image.error(f"{text}: a module has no addresses; give SYMBOL+OFF or "
                              "SECTION+OFF (like .text+0x1a3)")
        if not 0 <= number < 1 << 64:
            raise image.error(f"{text}: not a 64-bit address")
        return number
    name, plus, off_text = text.partition("+")
    off = _number(off_text) if off_text else None
    if not name or (plus and (off is None or not 0 <= off < 1 << 64 or off_text[0] in "+-")):
        raise image.error(f"{text}: not an address, SYMBOL[+OFF] or SECTION[+OFF] "
                          "(OFF a number from 0 to 2**64 - 1)")
    off = off or 0
    sec = image.section(name)
    if sec is not None:
        return sec.index, off
    hits = image.find_symbols(name)
    if not hits:
        raise image.error(f"{text}: no section or symbol {name!r}"
                          + ("" if image.symtab is not None else " (the file has no symtab)"))
    if len(hits) > 1:
        places = ", ".join(f"{image.sections[s].name}+{o:#x}" for s, o in hits[:4])
        raise image.error(f"{text}: {len(hits)} symbols are called {name!r} ({places}); "
                          "give SECTION+OFF")
    return hits[0][0], hits[0][1] + off


def _number(text: str) -> int | None:
    """``text`` as a number (0x.., 0o.., 0b.. or decimal), or None when it is not one."""
    try:
        return int(text, 0)
    except ValueError:
        return None


def _lookup(args: argparse.Namespace, opened: Opened) -> int:
    target = _target(opened, args.address)
    t = opened.table
    if t is None:
        raise CheckFailed("no __ex_table: no entry for anything", args.file)
    decoded: dict[int, dict[str, object]] = {}
    entries = []
    for chunk in t.chunks():
        if isinstance(target, int):
            assert chunk.insn_addr is not None
            match = [j for j, a in enumerate(chunk.insn_addr) if a == target]
        else:
            sec, off = target
            match = [j for j, (s, o) in enumerate(zip(chunk.insn_sec, chunk.insn_off))
                     if s == sec and o == off]
        entries += [d for j in match
                    for d in opened.entries(chunk.slice(chunk.base + j, chunk.base + j + 1),
                                            decoded)]
    if not entries:
        what = (f"{target:#x}" if isinstance(target, int)
                else f"{opened.image.sections[target[0]].name}+{target[1]:#x}")
        raise CheckFailed(f"no entry for the instruction at {what}", args.file)
    _emit(args, _head(opened), [line(opened, d) for d in entries], entries)
    return EXIT_OK
