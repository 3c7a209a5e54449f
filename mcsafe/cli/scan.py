"""``mcsafe scan``: which files have unreadable ranges, and why."""

from __future__ import annotations

import argparse
import os
import sys

from .jobs import scan_here, scan_in_workers
from .output import Output, OutputFailed
from .scanfile import Scanner
from .stop import StopFlag
from .walk import Walk

TYPE_CHECKING = False
if TYPE_CHECKING:       # the progress (threading, tqdm) is imported when it is shown
    from .progress import Progress


def run(args: argparse.Namespace) -> int:
    """Scan args.paths; the exit status (see Summary.exit_code)."""
    stop = StopFlag()
    stop.install()
    walk_args = {"paths": args.paths, "one_file_system": args.one_file_system,
                 "exclude": args.exclude}
    # in one process, a folder's files come in batches (Scanner.scan_files)
    walk = Walk(**walk_args, batch=args.jobs == 1)
    out = Output(args.json, args.paths)
    restore = not args.keep_cache
    try:
        _scan(args, walk_args, walk, out, stop, restore)
    except OutputFailed:
        if out.progress is not None:
            out.progress.close()
        raise
    return out.finish(stop.signum, walk)


def _scan(args: argparse.Namespace, walk_args: dict[str, object], walk: Walk, out: Output,
          stop: StopFlag, restore: bool) -> None:
    if args.jobs > 1:
        # The workers fork first: no thread (the progress) may run in the parent then.
        def start() -> None:
            out.progress = _progress(args, walk_args)
        scan_in_workers(walk, args.jobs, out.file, lambda n: _bytes(out, n), stop, restore,
                        started=start)
    else:
        out.progress = _progress(args, walk_args)
        scanner = Scanner(lambda n: _bytes(out, n), stop, restore)
        scan_here(walk, scanner, out.file, stop, out.clean)


def _bytes(out: Output, n: int) -> None:
    if out.progress is not None and n:
        out.progress.bytes_done(n)


def _progress(args: argparse.Namespace, walk_args: dict[str, object]) -> Progress | None:
    tty = os.isatty(sys.stderr.fileno())
    if args.progress is False or (args.progress is None and not tty):
        return None
    from .progress import Bar, PlainProgress

    return Bar(walk_args) if tty else PlainProgress(walk_args)
