"""``python -m mcsafe demo``: the README's main job."""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    if argv[:1] != ["demo"]:
        print("usage: python -m mcsafe demo", file=sys.stderr)
        return 2
    from .demo import run

    return run()


sys.exit(main(sys.argv[1:]))
