"""The ``mcsafe`` command: ``scan``, ``rescue`` and ``demo``.

Only the parser lives here; a command's module (and its progress library) is
imported when that command runs, so ``mcsafe --help`` and ``import mcsafe``
stay quick.
"""

from __future__ import annotations

import argparse
import gc
import os
import signal
import sys

from .. import __version__

TYPE_CHECKING = False
if TYPE_CHECKING:               # typing and extable: milliseconds a scan need not pay
    from typing import Any, Sequence

SCAN_HELP = """\
Read every byte of every regular file under each PATH through mcsafe's
fault-tolerant copy and report the files with unreadable (bad) ranges: pages
that fail with an I/O error, or poisoned memory. Directories are walked
without following symbolic links; FIFOs, sockets and devices found while
walking are skipped, with a note (a block device is scanned when named).
Files that grow, shrink, vanish or are replaced during the scan are reported
as such, never as bad. Holes of sparse files are not read. The page cache is
left as found, and memory stays bounded whatever the sizes."""

SCAN_EPILOG = """\
output: a line per file worth a look (BAD, CHANGED, VANISHED, SKIPPED,
INTERRUPTED), errors on stderr, a summary line last; --json writes JSON Lines
instead (schema: docs/COMMANDS.md).

exit status: 0 nothing bad found; 1 bad ranges found; 2 bad usage or a path
that could not be scanned (each named on stderr; the rest is still scanned);
128+N stopped by signal N (SIGINT, SIGTERM or SIGHUP: the report so far is
written first; a second signal stops at once)."""

RESCUE_HELP = """\
Copy everything readable from SRC to DST through mcsafe's fault-tolerant
copy, leaving the unreadable (bad) ranges as holes (or zeros), and write a
GNU ddrescue mapfile of what was rescued (ddrescuelog and ddrescueview read
it). Run again with the same mapfile, it retries only what is not rescued
yet. DST is written to a temporary file renamed into place at the end (or
when stopped), unless --in-place; it never extends past the last byte read."""

RESCUE_EPILOG = """\
exit status: 0 everything rescued; 1 some ranges could not be read (the
mapfile lists them: status '-'); 2 bad usage or an error (SRC or DST
unusable, a mapfile that is not SRC's or cannot be written, a full disk, DST
that cannot be synced or closed: the mapfile and the report count only what
was made durable); 128+N stopped by signal N (DST and the mapfile
are left consistent first; run again to go on)."""


def terminal_width() -> int:
    """The columns argparse formats help for, found as shutil.get_terminal_size()
    finds them: COLUMNS if a positive number, else the width of the terminal on
    stdout, else 80."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns > 0:
        return columns
    try:                                # (no sys.__stdout__: AttributeError)
        fd = sys.__stdout__.fileno()    # type: ignore[union-attr]
        return os.get_terminal_size(fd).columns or 80
    except (AttributeError, ValueError, OSError):
        return 80


class HelpFormatter(argparse.HelpFormatter):
    """argparse.HelpFormatter given its width, as argparse finds it (less 2), without
    shutil: argparse imports shutil for it (bz2, lzma and fnmatch behind it, 2 ms
    of a rescue's start) each time add_argument() makes a formatter."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None, **kwargs: Any) -> None:
        super().__init__(prog, indent_increment, max_help_position,
                         terminal_width() - 2 if width is None else width, **kwargs)


class RawDescriptionHelpFormatter(HelpFormatter, argparse.RawDescriptionHelpFormatter):
    """argparse.RawDescriptionHelpFormatter, its width found as HelpFormatter's."""


#: the commands that install stop handling of their own (cli.stop)
STOP_HANDLED = ("scan", "rescue")


def parser(prog: str = "mcsafe") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, formatter_class=HelpFormatter,
        description="mcsafe: a machine-check-safe copy, recovered through exception tables, "
        "and commands that use it on files that may not read back.")
    p.add_argument("--version", action="version", version=f"mcsafe {__version__}")
    # prog given: else argparse formats a usage line (and imports shutil) to make it
    sub = p.add_subparsers(dest="command", required=True, prog=prog)

    s = sub.add_parser("scan", help="find the unreadable ranges of files and trees",
                       description=SCAN_HELP, epilog=SCAN_EPILOG,
                       formatter_class=RawDescriptionHelpFormatter)
    s.add_argument("paths", nargs="+", metavar="PATH",
                   help="a file, a block device, or a directory to walk")
    s.add_argument("--json", action="store_true",
                   help="write JSON Lines: an object per file, then a summary object")
    s.add_argument("--jobs", "-j", type=_positive, default=1, metavar="N",
                   help="scan files in N processes (default: 1)")
    s.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show progress on stderr: a bar on a terminal, a line every 10 s "
                   "elsewhere (default: only on a terminal)")
    s.add_argument("--one-file-system", "-x", action="store_true",
                   help="stay on the file system of each PATH (do not cross mount points)")
    s.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                   help="skip entries whose name matches GLOB (whose path, if GLOB holds a "
                   "'/'), and do not walk such directories; repeatable")
    s.add_argument("--keep-cache", action="store_true",
                   help="leave what the scan read in the page cache (by default the pages "
                   "it brought in are evicted again; pages cached before always stay)")

    r = sub.add_parser("rescue", help="copy what can be read, with a ddrescue mapfile",
                       description=RESCUE_HELP, epilog=RESCUE_EPILOG,
                       formatter_class=RawDescriptionHelpFormatter)
    r.add_argument("src", metavar="SRC", help="the file or block device to rescue")
    r.add_argument("dst", metavar="DST", help="where the rescued bytes go (a file, or with "
                   "--in-place also a block device)")
    r.add_argument("--map", metavar="MAPFILE", help="the GNU ddrescue mapfile to write, and "
                   "to resume from if it exists (default: DST.map)")
    r.add_argument("--zero-fill", action="store_true",
                   help="write zeros over bad ranges (default: leave them as holes)")
    r.add_argument("--in-place", action="store_true",
                   help="write into DST itself instead of a temporary file renamed over it: "
                   "needed for a block device; DST is neither truncated nor extended past "
                   "the last byte read, and progress survives a crash (the mapfile is saved "
                   "every 30 s)")
    r.add_argument("--save-every", type=_seconds, default=30.0, metavar="SECONDS",
                   help="with --in-place or when resuming, save the mapfile (DST synced "
                   "first) this often (default: 30, as ddrescue)")
    r.add_argument("--no-sync", action="store_true",
                   help="do not fsync DST before saving the mapfile (faster, as cp; a crash "
                   "may then lose bytes the mapfile says were rescued)")
    r.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show progress on stderr (default: only on a terminal)")

    d = sub.add_parser("demo", help="read poisoned memory and a truncated file, and live",
                       formatter_class=HelpFormatter,
                       description="Read memory with poisoned pages, a data file with "
                       "poisoned pages and a mapped file truncated underneath, printing each "
                       "short read; show a child doing the same without mcsafe die of "
                       "SIGBUS; end with `mcsafe scan` of a tree holding a failing file "
                       "(FUSE).")
    for command in (s, r, d):
        command.set_defaults(usage_error=command.error)
    return p


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Run the command line; the command's exit status (2 for bad usage)."""
    if prog is None:
        prog = "mcsafe" if os.path.basename(sys.argv[0]) == "mcsafe" else "python -m mcsafe"
    args, extra = parser(prog).parse_known_args(argv)
    if extra:                       # the command's usage, not the top level's
        args.usage_error(f"unrecognized arguments: {' '.join(extra)}")
    from .output import OutputFailed

    is_the_command = _start_up_sigint_over(args.command)
    try:
        if args.command == "demo":
            from ..demo import run
            _collect_garbage_again()
            return run()
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)     # `| head`: end quietly, as cat does
        if args.command == "scan":
            from .scan import run as command
        else:
            from .rescue import run as command
        _collect_garbage_again()
        return int(command(args))
    except OutputFailed as exc:
        print(f"mcsafe {args.command}: {exc}", file=sys.stderr)
        # what is left in stdout's buffer goes nowhere, rather than fail again at exit
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 2
    except KeyboardInterrupt:
        if not is_the_command:
            raise
        # its clean-ups ran on the way here: die of SIGINT as cat does, no traceback
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
        raise
    except Exception as exc:
        if not _missing_extra(exc):
            raise
        print(f"{prog}: error: {exc}", file=sys.stderr)     # an optional part, not installed
        return 2


def _start_up_sigint_over(command: str) -> bool:
    """Whether this is the command that `import mcsafe` started with SIGINT at its
    default (see mcsafe/__init__.py); if so, and the command has no stop handling
    of its own (scan and rescue install theirs), Python's KeyboardInterrupt is
    back, so that the command's clean-ups run on Ctrl-C."""
    from .. import _sigint_deferred

    if _sigint_deferred and command not in STOP_HANDLED and \
            signal.getsignal(signal.SIGINT) == signal.SIG_DFL:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    return _sigint_deferred


def _collect_garbage_again() -> None:
    """Turn the cyclic garbage collector on again if `import mcsafe` turned it off
    for the command's start (see mcsafe/__init__.py), what the start made set
    aside for good (gc.freeze): the collector never walks it again."""
    from .. import _gc_deferred

    if _gc_deferred and not gc.isenabled():
        gc.freeze()
        gc.enable()


def _missing_extra(exc: Exception) -> bool:
    """Whether exc is extable's MissingExtra (loaded by whoever raised one)."""
    errors = sys.modules.get("extable.errors")
    return errors is not None and isinstance(exc, errors.MissingExtra)


def _seconds(text: str) -> float:
    try:
        n = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not n >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds: {text}")
    return n


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {n}")
    return n
