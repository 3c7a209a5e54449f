"""The ``extable`` command line.

Exit codes: 0 success; 1 a check failed or nothing was found; 2 bad input or usage.
Errors are one line on stderr naming the file and the problem.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, NoReturn, Sequence

from . import __version__, include_dir
from .errors import CheckFailed, ExtableError

if TYPE_CHECKING:
    from .elf import ElfImage
    from .table import Table

EXIT_OK, EXIT_CHECK, EXIT_INPUT = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_INPUT, f"{self.prog}: error: {message} (see --help)\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="extable", description="Build, dump, verify and look up user-space "
                "exception tables in ELF files.",
                epilog="exit codes: 0 success, 1 a check failed or nothing was found, "
                "2 bad input or usage. The table format: "
                f"{__file__.rpartition('/')[0]}/docs/FORMAT.md")
    p.add_argument("--version", action="version", version=f"extable {__version__}")
    p.add_argument("--include-dir", action="store_true",
                   help="print the folder holding extable.h and exit")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)

    s = sub.add_parser("symbols", help="list function ranges (STT_FUNC symbols with a size)")
    s.add_argument("file")
    s.add_argument("--json", action="store_true")

    b = sub.add_parser("build", help="compile the table and write it into the ELF")
    b.add_argument("file")
    out = b.add_mutually_exclusive_group()
    out.add_argument("-o", "--output", metavar="OUT", help="write the result here")
    out.add_argument("--in-place", action="store_true", help="rewrite FILE itself")
    b.add_argument("--rule", action="append", default=[], metavar="GLOB=HANDLER[@LANDING]",
                   help="cover every function matching GLOB; LANDING defaults to {name}_fixup")
    b.add_argument("--spec", metavar="FILE", help="TOML file of handlers, rules and ranges")
    b.add_argument("--add-section", action="store_true",
                   help="add a non-loaded section (for files without a reservation)")
    b.add_argument("--section", default=None, metavar="NAME",
                   help="the section to write (default extable_table)")
    b.add_argument("--strict", action="store_true", help="a rule matching nothing is an error")
    b.add_argument("--no-records", action="store_true",
                   help="ignore the extable_sites records compiled into the file")
    b.add_argument("--json", action="store_true", help="print a summary as JSON")

    for name, text in (("dump", "print the embedded table"),
                       ("verify", "check the embedded table against the file")):
        d = sub.add_parser(name, help=text)
        d.add_argument("file")
        d.add_argument("--section", default=None, metavar="NAME")
        d.add_argument("--json", action="store_true")

    lk = sub.add_parser("lookup", help="the entry covering an address")
    lk.add_argument("file")
    lk.add_argument("address", help="0x1234, 4660, symbol or symbol+0x10")
    lk.add_argument("--section", default=None, metavar="NAME")
    lk.add_argument("--json", action="store_true")

    sub.add_parser("include-dir", help="print the folder holding extable.h")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.include_dir or args.command == "include-dir":
        print(include_dir())
        return EXIT_OK
    if args.command is None:
        parser.print_usage(sys.stderr)
        return EXIT_INPUT
    try:
        return _COMMANDS[args.command](args)
    except CheckFailed as exc:
        print(f"extable: {_one_line(exc, args)}", file=sys.stderr)
        return EXIT_CHECK
    except ExtableError as exc:
        print(f"extable: {_one_line(exc, args)}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK


def _one_line(exc: ExtableError, args: argparse.Namespace) -> str:
    text = str(exc) if exc.path else f"{args.file}: {exc.message}"
    return " ".join(text.split("\n"))


def _emit(args: argparse.Namespace, obj: object, lines: list[str]) -> None:
    if args.json:
        json.dump(obj, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        sys.stdout.write("".join(line + "\n" for line in lines))


def _symbols(args: argparse.Namespace) -> int:
    from .elf import ElfImage

    with ElfImage(args.file) as image:
        f = image.functions
        starts, ends = f.start.tolist(), f.end.tolist()
        if args.json:
            _emit(args, [{"name": n, "start": s, "end": e}
                         for n, s, e in zip(f.names, starts, ends)], [])
        else:
            sys.stdout.write(f"# {len(f)} functions from {f.table} of {args.file}\n")
            sys.stdout.writelines(f"{s:#018x} {e:#018x} {e - s:8d} {n}\n"
                                  for n, s, e in zip(f.names, starts, ends))
    return EXIT_OK


def _build(args: argparse.Namespace) -> int:
    from . import spec as spec_mod
    from .compiler import build
    from .elf import ElfImage
    from .sites import Rule
    from .writer import DEFAULT_SECTION, check_target, write_added_section, write_into_section

    with ElfImage(args.file) as image:
        target = check_target(image, args.output, args.in_place)
        spec = spec_mod.load(args.spec, image.machine)
        rules = [Rule.parse(r) for r in args.rule]
        result = build(image, spec, rules, records=not args.no_records, strict=args.strict)
        for warning in result.warnings:
            print(f"extable: warning: {args.file}: {warning}", file=sys.stderr)
        section = args.section or DEFAULT_SECTION
        write = write_added_section if args.add_section else write_into_section
        write(image, result.table, target, section)
    t = result.table
    _emit(args, {"output": target, "section": section, "sites": result.sites,
                 "entries": len(t), "descriptors": len(t.handlers)},
          [f"{target}: {len(t)} entries ({result.sites} sites), {len(t.handlers)} descriptors "
           f"written into section {section}"])
    return EXIT_OK


def _entry_dict(image: ElfImage, table: Table, i: int) -> dict[str, object]:
    from .model import describe_data

    e = table.entries[i]
    start, end, fixup, data = (int(e[k]) for k in ("start", "end", "fixup", "data"))
    h = table.handler_of(data)
    return {"index": i, "start": start, "end": end, "landing": fixup, "data": data,
            "start_symbol": image.describe(start), "landing_symbol": image.describe(fixup),
            "handler": describe_data(table.machine, data, table.handlers),
            "descriptor": h.as_dict(table.machine) if h else None}


def _entry_line(d: dict[str, object]) -> str:
    return (f"{d['index']:6d}  {d['start']:#010x}..{d['end']:#010x}  {d['start_symbol']:<36} "
            f"-> {d['landing']:#010x} {d['landing_symbol']:<28}  {d['handler']}")


def _dump(args: argparse.Namespace) -> int:
    from .elf import ElfImage
    from .embedded import read_table
    from .writer import DEFAULT_SECTION

    with ElfImage(args.file) as image:
        section = args.section or DEFAULT_SECTION
        table = read_table(image, section)
        entries = [_entry_dict(image, table, i) for i in range(len(table))]
        descs = [h.as_dict(table.machine) for h in table.handlers]
        head = (f"{args.file}: {image.machine_name} table in {section}, {len(table)} entries, "
                f"{len(descs)} descriptors, "
                + (f"loaded at {table.self_vaddr:#x}" if table.self_vaddr else "not loaded"))
        lines = [head, "descriptors:"]
        lines += [f"  [{i}] {h.name or '-'}: {h.describe(table.machine)}"
                  for i, h in enumerate(table.handlers)]
        lines += ["entries:"] + [_entry_line(d) for d in entries]
        _emit(args, {"file": args.file, "machine": image.machine_name, "section": section,
                     "self_vaddr": table.self_vaddr, "flags": table.flags,
                     "descriptors": descs, "entries": entries}, lines)
    return EXIT_OK


def _verify(args: argparse.Namespace) -> int:
    from .elf import ElfImage
    from .embedded import verify
    from .writer import DEFAULT_SECTION

    with ElfImage(args.file) as image:
        table = verify(image, args.section or DEFAULT_SECTION)
        _emit(args, {"file": args.file, "ok": True, "entries": len(table)},
              [f"{args.file}: ok, {len(table)} entries, {len(table.handlers)} descriptors"])
    return EXIT_OK


def _lookup(args: argparse.Namespace) -> int:
    from .elf import ElfImage
    from .embedded import read_table
    from .sites import resolve_address
    from .writer import DEFAULT_SECTION

    with ElfImage(args.file) as image:
        table = read_table(image, args.section or DEFAULT_SECTION)
        address = resolve_address(image, args.address, "address")
        i = table.lookup(address)
        if i is None:
            print(f"extable: {args.file}: no entry covers {address:#x} "
                  f"({image.describe(address)})", file=sys.stderr)
            return EXIT_CHECK
        d = _entry_dict(image, table, i)
        _emit(args, d, [_entry_line(d)])
    return EXIT_OK


_COMMANDS = {"symbols": _symbols, "build": _build, "dump": _dump, "verify": _verify,
             "lookup": _lookup}
