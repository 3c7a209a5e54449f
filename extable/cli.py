"""The ``extable`` command line.

Exit codes: 0 success; 1 a check failed or nothing was found; 2 bad input or usage.
Errors are one line on stderr naming the file and the problem.
"""

from __future__ import annotations

import os
import sys

from . import include_dir
from .errors import CheckFailed, ExtableError, MissingExtra

# Only what the command runs is imported: typing and argparse (with the re, gettext,
# locale and shutil it imports) would be most of a short command's time.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from types import SimpleNamespace
    from typing import Any, Sequence, Union

    from .elf import ElfImage
    from .output import Output
    from .table import Table

    Args = Union[argparse.Namespace, SimpleNamespace]

EXIT_OK, EXIT_CHECK, EXIT_INPUT = 0, 1, 2


class StdoutFailed(ExtableError):
    """Standard output could not be written: a full disk (``> /dev/full``), a closed
    descriptor (``>&-``), an I/O error. Exit 2, one line, and no output file."""


class _Guarded:
    """sys.stdout (or its .buffer) for the command's run: a failed write or flush
    raises StdoutFailed instead of an OSError from deep inside the output code.
    BrokenPipeError passes: a reader that left (``| head``) is not an error."""

    def __init__(self, stream: object) -> None:
        self._stream = stream

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._stream, name)
        if name == "buffer":
            return _Guarded(attr)
        if name not in ("write", "writelines", "flush"):
            return attr

        def guarded(*args: object) -> object:
            try:
                return attr(*args)
            except BrokenPipeError:
                raise
            except OSError as exc:
                raise StdoutFailed(f"cannot write: {exc.strerror}", "standard output") \
                    from None
        return guarded


def _silence_stdout() -> None:
    """Point descriptor 1 at /dev/null, so that the interpreter's own flush at exit
    neither fails again nor prints "Exception ignored" (what Python's docs advise
    for a closed pipe)."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.close(null)
    except OSError:
        pass


def main(argv: Sequence[str] | None = None) -> int:
    if sys.stderr is None:                         # 2>&-: print(file=None) would go to stdout
        sys.stderr = open(os.devnull, "w")
    if sys.stdout is None:                         # >&-: say so before doing any work
        print("extable: standard output: cannot write: it is closed", file=sys.stderr)
        return EXIT_INPUT
    real_stdout = sys.stdout
    if hasattr(real_stdout, "reconfigure"):        # a path's bytes that are not UTF-8 pass
        real_stdout.reconfigure(errors="surrogateescape")    # through, as in ls and readelf
    sys.stdout = _Guarded(real_stdout)             # type: ignore[assignment]
    try:
        code = _main(argv)
        sys.stdout.flush()
        return code
    except StdoutFailed as exc:
        _silence_stdout()
        print(f"extable: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_OK
    finally:
        sys.stdout = real_stdout


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _plain_symbols(argv)
    if args is None:
        from .arguments import Parser, parser

        Parser.json_errors = "--json" in argv
        p = parser()
        args = p.parse_args(argv)
        if args.command is None and not args.include_dir:
            p.error("a command is required")
    if args.include_dir or args.command == "include-dir":
        print(include_dir())
        return EXIT_OK
    if args.command != "symbols":
        _one_blas_thread()
    if args.command == "build":
        _unwind_on_termination()
    try:
        if args.command in _KERNEL_COMMANDS:
            kernel = _kernel_command(args)
            if kernel is not None:
                return kernel
        return _COMMANDS[args.command](args)
    except StdoutFailed:
        raise
    except CheckFailed as exc:
        return _fail(args, exc, EXIT_CHECK)
    except ExtableError as exc:
        return _fail(args, exc, EXIT_INPUT)
    except MissingExtra as exc:                     # an optional part, not installed
        if getattr(args, "json", False):
            _print_json({"error": str(exc), "file": None, "exit": EXIT_INPUT})
        print(f"extable: error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        return 130
    except _Terminated as exc:
        import signal

        signal.signal(exc.signum, signal.SIG_DFL)      # the temporary file is gone: now die
        os.kill(os.getpid(), exc.signum)               # of the signal, as the sender expects
        raise


def _plain_symbols(argv: list[str]) -> Args | None:
    """The arguments of ``symbols FILE`` with or without ``--json``, the forms a build
    step runs, read without argparse (which, with what it imports, would take longer
    than the listing); None for any other command line, which argparse reads. The
    result holds what argparse would give for the same command line."""
    if len(argv) not in (2, 3) or argv[0] != "symbols":
        return None
    rest = argv[1:]
    as_json = "--json" in rest
    if as_json:
        rest.remove("--json")
    if len(rest) != 1 or rest[0].startswith("-"):
        return None
    from types import SimpleNamespace

    return SimpleNamespace(command="symbols", file=rest[0], sort="file", demangle=False,
                           reverse_sort=False, json=as_json, include_dir=False)


def _one_blas_thread() -> None:
    """Keep numpy's OpenBLAS from starting a thread per core when numpy is imported, as
    it does by default: the threads spin before they sleep, which cost more than a whole
    build of libLLVM-15 (numpy's import: 141 -> 87 ms of CPU, loaded). extable uses
    numpy's arrays, never its linear algebra. A setting in the environment is kept."""
    if "numpy" not in sys.modules:                 # else it is too late, and not ours
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


class _Terminated(BaseException):
    """SIGTERM or SIGHUP arrived during build."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _unwind_on_termination() -> None:
    """Turn SIGTERM/SIGHUP into an exception, so that build's cleanup removes its
    temporary output file (Python's default would die at once and leave it)."""
    import signal

    def handler(signum: int, _frame: object) -> None:
        for s in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)           # once is enough while unwinding
        raise _Terminated(signum)

    for s in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(s) is signal.SIG_DFL:      # not if the caller ignores it (nohup)
            try:
                signal.signal(s, handler)
            except ValueError:                         # main() called off the main thread
                return


_KERNEL_COMMANDS = ("dump", "verify", "lookup")


def _kernel_command(args: Args) -> int | None:
    """Run a Linux kernel object's dump/verify/lookup (extable/kernel); None for other files."""
    from .kernel.detect import is_kernel_object

    # Only a regular file is asked about: opening a FIFO to look would wait for a writer.
    # ElfImage refuses anything else in one line.
    if not os.path.isfile(args.file) or not is_kernel_object(args.file):
        if args.kernel_version:
            raise ExtableError("--kernel-version applies only to Linux kernel objects", args.file)
        return None
    from .kernel.cli import run

    return run(args)        # type: ignore[arg-type]  # argparse's: only symbols is read without


def _fail(args: Args, exc: ExtableError, code: int) -> int:
    """One line on stderr; with --json also {"error", "file", "exit"} on stdout."""
    text = " ".join((str(exc) if exc.path else f"{args.file}: {exc.message}").split("\n"))
    if getattr(args, "json", False):
        _print_json({"error": " ".join(exc.message.split("\n")),
                     "file": exc.path or args.file, "exit": code})
    print(f"extable: {text}", file=sys.stderr)
    return code


def _print_json(obj: object) -> None:
    from .names import json_text

    # Compact and in one call: json's C encoder runs only without indent.
    sys.stdout.write(json_text(obj, separators=(",", ":")) + "\n")


def _emit(args: Args, obj: object, lines: list[str]) -> None:
    if args.json:
        _print_json(obj)
    else:
        sys.stdout.write("".join(line + "\n" for line in lines))


def _symbols(args: Args) -> int:
    from .elf import ElfImage
    from .symbols import listing

    with ElfImage(args.file) as image:
        chunks = listing(image, sort=args.sort, demangle=args.demangle, as_json=args.json,
                         reverse=args.reverse_sort)
        sys.stdout.flush()
        out = sys.stdout.buffer
        for chunk in chunks:      # bytes as in the file: a non-UTF-8 name is passed through
            out.write(chunk)
    return EXIT_OK


def _build(args: Args) -> int:
    from .elf import ElfImage
    from .output import Output, check_target

    with ElfImage(args.file) as image:
        target = check_target(image, args.output, args.in_place)
        # The copy of the input starts now, in the kernel, while the modules the table is
        # compiled with (numpy's) are imported and the table is compiled.
        with Output(image, target, args.in_place) as output:
            return _build_into(args, image, target, output)


def _build_into(args: Args, image: ElfImage, target: str, output: Output) -> int:
    """Compile the table and write it into ``output``."""
    from . import spec as spec_mod
    from .compiler import build
    from .sites import Rule
    from .table import DEFAULT_SECTION
    from .writer import write_added_section, write_into_section

    spec = spec_mod.load(args.spec, image.machine)
    rules = [Rule.parse(r) for r in args.rule]
    result = build(image, spec, rules, records=not args.no_records, strict=args.strict)
    for warning in result.warnings:
        print(f"extable: warning: {args.file}: {warning}", file=sys.stderr)
    section = args.section or DEFAULT_SECTION
    t = result.table

    def announce() -> None:
        # Printed before the output is put in place: if stdout cannot take it, the
        # build fails and leaves nothing (and --in-place leaves the input as it was).
        _emit(args, {"output": target, "section": section, "sites": result.sites,
                     "entries": len(t), "descriptors": len(t.handlers)},
              [f"{target}: {len(t)} entries ({result.sites} sites), {len(t.handlers)} "
               f"descriptors written into section {section}"])
        sys.stdout.flush()

    write = write_added_section if args.add_section else write_into_section
    write(image, t, target, section, in_place=args.in_place, before_commit=announce,
          output=output)
    return EXIT_OK


def _entry_dicts(image: ElfImage, table: Table, which: Sequence[int] | None = None
                 ) -> list[dict[str, object]]:
    """The entries (all, or those in which) as dump and lookup print them."""
    from .model import describe_data

    rows = table.rows()                    # (start, end, fixup, data): plain ints, at once
    unwinding = table.unwinding_flags()
    by_word: dict[int, tuple[str, object]] = {}   # a data word's text and descriptor, once
    out = []
    for i in range(len(rows)) if which is None else which:
        start, end, fixup, data = rows[i]
        if data not in by_word:
            h = table.handler_of(data)
            by_word[data] = (describe_data(table.machine, data, table.handlers),
                             h.as_dict(table.machine) if h else None)
        text, descriptor = by_word[data]
        d: dict[str, object] = {"index": i, "start": start, "end": end, "landing": fixup,
                                "data": data, "start_symbol": image.describe(start),
                                "landing_symbol": image.describe(fixup),
                                "handler": text, "descriptor": descriptor}
        if unwinding[i] and table.unwind is not None:
            # No landing pad: the function returns to its caller, its frame per these rows.
            d["landing"] = d["landing_symbol"] = None
            d["unwind"] = [{"start": ip, "symbol": image.describe(ip),
                            **row.as_dict(table.machine)}
                           for ip, row in table.unwind.within(start, end)]
        out.append(d)
    return out


def _entry_dict(image: ElfImage, table: Table, i: int) -> dict[str, object]:
    return _entry_dicts(image, table, [i])[0]


def _entry_line(d: dict[str, object], at: int | None = None) -> str:
    """An entry's line (and, for an unwind entry, a line per row: all of them, or only
    the one in effect at ``at``)."""
    head = f"{d['index']:6d}  {d['start']:#010x}..{d['end']:#010x}  {d['start_symbol']:<36} "
    if d["landing"] is not None:
        return f"{head}-> {d['landing']:#010x} {d['landing_symbol']:<28}  {d['handler']}"
    lines = [f"{head}-> {'(returns to its caller)':<39}  {d['handler']}"]
    rows = d["unwind"]
    assert isinstance(rows, list)
    if at is not None:
        rows = [r for r in rows if r["start"] <= at][-1:]
    for r in rows:
        saved = " ".join(f"{slot}=cfa{off:+d}" for slot, off in r["saved"].items())
        lines.append(f"{'':8}{r['start']:#010x}  {r['symbol']:<36} cfa={r['cfa']['reg']}"
                     f"{r['cfa']['offset']:+d} {saved}".rstrip())
    return "\n".join(lines)


def _dump(args: Args) -> int:
    from .elf import ElfImage
    from .embedded import read_table
    from .table import DEFAULT_SECTION

    with ElfImage(args.file) as image:
        section = args.section or DEFAULT_SECTION
        table = read_table(image, section)
        entries = _entry_dicts(image, table)
        descs = [h.as_dict(table.machine) for h in table.handlers]
        nrows = len(table.unwind) if table.unwind is not None else 0
        head = (f"{args.file}: {image.machine_name} table in {section}, {len(table)} entries, "
                f"{len(descs)} descriptors, "
                + (f"{nrows} unwind rows, " if nrows else "")
                + (f"loaded at {table.self_vaddr:#x}" if table.self_vaddr else "not loaded"))
        lines = [head, "descriptors:"]
        lines += [f"  [{i}] {h.name or '-'}: {h.describe(table.machine)}"
                  for i, h in enumerate(table.handlers)]
        lines += ["entries:"] + [_entry_line(d) for d in entries]
        _emit(args, {"file": args.file, "machine": image.machine_name, "section": section,
                     "self_vaddr": table.self_vaddr, "flags": table.flags,
                     "unwind_rows": nrows, "descriptors": descs, "entries": entries}, lines)
    return EXIT_OK


def _verify(args: Args) -> int:
    from .elf import ElfImage
    from .embedded import verify
    from .table import DEFAULT_SECTION

    with ElfImage(args.file) as image:
        table = verify(image, args.section or DEFAULT_SECTION)
        nrows = len(table.unwind) if table.unwind is not None else 0
        _emit(args, {"file": args.file, "ok": True, "entries": len(table),
                     "unwind_rows": nrows},
              [f"{args.file}: ok, {len(table)} entries, {len(table.handlers)} descriptors"
               + (f", {nrows} unwind rows" if nrows else "")])
    return EXIT_OK


def _lookup(args: Args) -> int:
    from .elf import ElfImage
    from .embedded import read_table
    from .addresses import resolve_address
    from .table import DEFAULT_SECTION

    with ElfImage(args.file) as image:
        table = read_table(image, args.section or DEFAULT_SECTION)
        address = resolve_address(image, args.address, "address")
        i = table.lookup(address)
        if i is None:
            raise CheckFailed(f"no entry covers {address:#x} ({image.describe(address)})",
                              args.file)
        d = _entry_dict(image, table, i)
        if "unwind" in d:          # the row in effect at the address
            d["row"] = [r for r in d["unwind"] if r["start"] <= address][-1]  # type: ignore
        _emit(args, d, [_entry_line(d, address)])
    return EXIT_OK


_COMMANDS = {"symbols": _symbols, "build": _build, "dump": _dump, "verify": _verify,
             "lookup": _lookup}
