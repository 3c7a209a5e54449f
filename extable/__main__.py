"""``python -m extable``: the same as the ``extable`` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
