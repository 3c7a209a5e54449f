"""What ``import mcsafe`` and ``import extable`` cost a program at start-up: whole
processes, start to exit, against ``python -c pass`` in the same run (issue 22:
each at most 30 ms over it, median of 20). ``import numpy`` is there for scale:
the module most users of mcsafe already pay for.

The processes run from an empty folder, so the package imported is the installed
one, as in a user's program."""

from __future__ import annotations

import subprocess
import sys

import pytest

PEERS = {
    "python -c pass": "pass",
    "import mcsafe": "import mcsafe",
    "import extable": "import extable",
    "import numpy": "import numpy",
}


@pytest.mark.parametrize("peer", list(PEERS))
def test_import(benchmark, peer: str, tmp_path_factory) -> None:
    argv = [sys.executable, "-c", PEERS[peer]]
    cwd = tmp_path_factory.mktemp("import")
    benchmark.group = "import"
    benchmark.extra_info.update(peer=peer, argv=" ".join(argv))
    benchmark.pedantic(subprocess.run, args=(argv,), kwargs={"check": True, "cwd": cwd},
                       rounds=20, iterations=1, warmup_rounds=2)
