"""What ``import mcsafe`` and ``import extable`` cost a program at start-up: whole
processes, start to exit, against ``python -c pass`` (issue 22: each at most 30 ms
over it, medians of 20). The processes take turns round after round
(conftest.interleaved), so a shared machine's drift hits all alike; ``import numpy``
is there for scale, the module most users of mcsafe already pay for.

The processes run from an empty folder, so the package imported is the installed
one, as in a user's program."""

from __future__ import annotations

import subprocess
import sys
from functools import partial

import pytest

from benchmarks.conftest import interleaved

PEERS = {"python -c pass": "pass", "import numpy": "import numpy"}


@pytest.mark.parametrize("package", ["mcsafe", "extable"])
def test_import(benchmark, package: str, tmp_path) -> None:
    ours = f"import {package}"
    calls = {name: partial(subprocess.run, [sys.executable, "-c", code], check=True,
                           cwd=tmp_path)
             for name, code in {ours: ours, **PEERS}.items()}
    benchmark.group = "import"
    if benchmark.disabled:
        benchmark(calls[ours])
        return
    medians = interleaved(calls, reps=1, rounds=20)
    benchmark.extra_info.update(peer=ours, interleaved=medians)
    benchmark.pedantic(calls[ours], rounds=20, iterations=1, warmup_rounds=1)
