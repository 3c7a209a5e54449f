"""The ``extable`` command's arguments, read by argparse (see :mod:`extable.cli`)."""

from __future__ import annotations

import argparse
import functools
import sys

from . import __version__

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NoReturn

EXIT_INPUT = 2


class Parser(argparse.ArgumentParser):
    """ArgumentParser whose usage errors exit 2, and with --json also print a JSON object."""

    #: --json is on the command line: a usage error is a JSON object on stdout too. A class
    #: attribute because argparse makes the subcommand parsers itself; main() sets it.
    json_errors = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        if self.json_errors:            # as extable.cli prints every JSON object
            from .names import json_text

            sys.stdout.write(json_text({"error": message, "file": None, "exit": EXIT_INPUT},
                                       separators=(",", ":")) + "\n")
        self.exit(EXIT_INPUT, f"{self.prog}: error: {message} (see --help)\n")


class Formatter(argparse.HelpFormatter):
    """argparse's formatter, asking the terminal's width once.

    argparse makes a formatter for every argument it adds (to check that it can be
    shown), and each asks the terminal for its width: half of a command's start.
    """

    def __init__(self, prog: str, **kwargs: Any) -> None:
        kwargs.setdefault("width", _width())
        super().__init__(prog, **kwargs)


@functools.lru_cache(maxsize=1)
def _width() -> int:
    import shutil

    return shutil.get_terminal_size().columns - 2        # as HelpFormatter computes it


def parser() -> argparse.ArgumentParser:
    """The whole command line: every subcommand and option, with their help."""
    p = Parser(prog="extable", description="Build, dump, verify and look up user-space "
                "exception tables in ELF files.",
                epilog="exit codes: 0 success, 1 a check failed or nothing was found, "
                "2 bad input or usage. The table format: "
                f"{__file__.rpartition('/')[0]}/docs/FORMAT.md")
    p.add_argument("--version", action="version", version=f"extable {__version__}")
    p.add_argument("--include-dir", action="store_true",
                   help="print the folder holding extable.h and exit")
    sub = p.add_subparsers(dest="command", parser_class=Parser)

    s = sub.add_parser("symbols", help="list function ranges (STT_FUNC and STT_GNU_IFUNC "
                       "symbols with a size)")
    s.add_argument("file", help="the ELF file (shared object, executable or object file)")
    s.add_argument("--sort", choices=("file", "address", "name", "size"), default="file",
                   help="order of the list: file (the symbol table's order, the default), "
                   "address, name, or size; each ascending, as nm --size-sort")
    s.add_argument("--reverse-sort", "-r", action="store_true",
                   help="reverse the order, as nm -r")
    s.add_argument("--demangle", "-C", action="store_true",
                   help="demangle C++ and Rust names (with binutils' c++filt)")
    s.add_argument("--json", action="store_true", help="write a JSON array instead of text")

    b = sub.add_parser("build", help="compile the table and write it into the ELF")
    b.add_argument("file", help="the ELF file whose table to compile (written in place "
                   "with --in-place, else to --output)")
    out = b.add_mutually_exclusive_group()
    out.add_argument("-o", "--output", metavar="OUT", help="write the result here")
    out.add_argument("--in-place", action="store_true", help="rewrite FILE itself")
    b.add_argument("--rule", action="append", default=[],
                   metavar="GLOB=HANDLER[@LANDING][,end=landing]",
                   help="cover every function matching GLOB; LANDING is a symbol, symbol+0x4 "
                   "or 0x1234, may use {name}, and defaults to {name}_fixup; a pad inside "
                   "the function is refused unless end=landing ends the range there; "
                   "HANDLER unwind returns -EFAULT to the function's caller (no LANDING)")
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
        d.add_argument("file", help="the ELF file holding the table: a built shared object "
                       "or executable, or a Linux kernel image or module")
        d.add_argument("--section", default=None, metavar="NAME",
                       help="the section holding the table (default: extable_table)")
        d.add_argument("--json", action="store_true", help="write JSON instead of text")
        d.add_argument("--kernel-version", metavar="VERSION",
                       help="Linux kernel objects: the kernel whose types to use (like 6.1)")

    lk = sub.add_parser("lookup", help="the entry covering an address")
    lk.add_argument("file", help="the ELF file holding the table")
    lk.add_argument("address", help="0x1234, 4660, symbol or symbol+0x10")
    lk.add_argument("--section", default=None, metavar="NAME",
                    help="the section holding the table (as for dump)")
    lk.add_argument("--json", action="store_true", help="write JSON instead of text")
    lk.add_argument("--kernel-version", metavar="VERSION",
                    help="Linux kernel objects: the kernel whose types to use (like 6.1)")

    sub.add_parser("include-dir", help="print the folder holding extable.h")
    return p
