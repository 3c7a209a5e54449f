"""``python -m mcsafe demo``: the README's main job."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from . import __version__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; the exit status of the command, 2 for bad usage."""
    parser = argparse.ArgumentParser(
        prog="python -m mcsafe",
        description="mcsafe: a machine-check-safe copy, recovered through exception tables.")
    parser.add_argument("--version", action="version", version=f"mcsafe {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="read poisoned memory and a truncated file, and live",
                   description="Read memory with poisoned pages, a data file with poisoned "
                   "pages and a mapped file truncated underneath, printing each short read; "
                   "then show a child doing the same without mcsafe die of SIGBUS.")
    parser.parse_args(argv)
    from .demo import run

    return run()


if __name__ == "__main__":
    sys.exit(main())
