"""Load every tensor of .safetensors files (or of a sharded checkpoint's
``*.safetensors.index.json``) through mcsafe, and list them.

    python examples/safetensors_load.py model-00001-of-00002.safetensors ...
    python examples/safetensors_load.py model.safetensors.index.json

A tensor that cannot be read (a bad page, or the file ends inside it) is reported
on stderr in one line naming the file, the tensor, the element and the file
offset, and the other tensors still load.

Exit codes: 0 every tensor loaded; 1 some tensors could not be read (each named on
stderr, the others listed on stdout); 2 a file that is not a safetensors file or
index, or cannot be opened (one line on stderr naming it).
"""

from __future__ import annotations

import sys
from typing import Any

from mcsafe import MemoryFaultError
from mcsafe.formats.safetensors import SafetensorsError, open_sharded, safe_open


def main(paths: list[str]) -> int:
    failed = 0
    for path in paths:
        try:
            opener: Any = open_sharded if path.endswith(".json") else safe_open
            with opener(path, "numpy") as f:
                for name in f.keys():
                    try:
                        t = f.get_tensor(name)
                    except (MemoryFaultError, SafetensorsError) as exc:
                        print(f"error: {exc}", file=sys.stderr)
                        failed += 1
                        continue
                    print(f"{name} {f.get_slice(name).get_dtype()} {list(t.shape)}")
        except (SafetensorsError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
