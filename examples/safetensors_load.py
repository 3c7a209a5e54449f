"""Load every tensor of .safetensors files through MappedFile and list them.

    python examples/safetensors_load.py model-00001-of-00002.safetensors ...

Exit codes: 0 every tensor loaded; 1 a tensor could not be read (a bad page,
or the file ends inside it), one line on stderr naming the file and the
tensor; 2 a file that is not a safetensors file or cannot be opened.
"""

from __future__ import annotations

import sys

from mcsafe import MemoryFaultError
from mcsafe.formats.safetensors import SafetensorsError, SafetensorsFile


def main(paths: list[str]) -> int:
    for path in paths:
        try:
            with SafetensorsFile(path) as f:
                for name in f:
                    t = f.get_tensor(name)
                    print(f"{name} {f.dtype(name)} {list(t.shape)}")
        except MemoryFaultError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except (SafetensorsError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
