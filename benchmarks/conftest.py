"""Benchmark fixtures: the C peers, built here with gcc, and the largest ELF file."""

from __future__ import annotations

import compileall
import ctypes
import glob
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

HERE = Path(__file__).parent
ROOT = HERE.parent
#: MCSAFE_BENCH=full adds the 256 MiB copies and longer runs; the default is quick.
FULL = os.environ.get("MCSAFE_BENCH") == "full"


@pytest.fixture(scope="session")
def peers(tmp_path_factory) -> ctypes.CDLL:
    out = tmp_path_factory.mktemp("peers") / "peers.so"
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", str(HERE / "peers.c"), "-o", str(out)],
                   check=True)
    lib = ctypes.CDLL(str(out))
    lib.bare_touch.argtypes = [ctypes.c_void_p]
    lib.setjmp_copy.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
    lib.bare_loop.argtypes = [ctypes.c_void_p, ctypes.c_long]
    lib.call_loop.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_long]
    lib.call_loop.restype = ctypes.c_int64
    return lib


def build_cysignals_peer(folder: Path):
    """Compile cysignals_peer.pyx into folder and import it; None if cysignals is missing.

    Importing cysignals installs its own SIGSEGV/SIGBUS handlers over mcsafe's;
    mcsafe.install() puts mcsafe first again and chains to cysignals."""
    try:
        import cysignals
    except ImportError:
        return None
    import importlib.util
    import sys
    import sysconfig

    import mcsafe

    src = folder / "cysignals_peer.pyx"
    shutil.copyfile(HERE / "cysignals_peer.pyx", src)
    inc = os.path.dirname(cysignals.__file__)
    subprocess.run([sys.executable, "-m", "cython", "-3", "-I", os.path.dirname(inc), str(src),
                    "-o", str(folder / "cysignals_peer.c")], check=True, capture_output=True)
    so = folder / ("cysignals_peer" + sysconfig.get_config_var("EXT_SUFFIX"))
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", f"-I{inc}",
                    f"-I{sysconfig.get_paths()['include']}", str(folder / "cysignals_peer.c"),
                    "-o", str(so)], check=True, capture_output=True)
    spec = importlib.util.spec_from_file_location("cysignals_peer", so)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    mcsafe.install()
    return module


@pytest.fixture(scope="session")
def cysignals_peer(tmp_path_factory):
    module = build_cysignals_peer(tmp_path_factory.mktemp("cysignals"))
    if module is None:
        pytest.skip("cysignals is not installed (pip install cysignals)")
    return module


def largest_elf() -> str:
    """The Rust toolchain's librustc_driver if present, else the largest system .so."""
    rustc = shutil.which("rustc")
    if rustc:
        sysroot = subprocess.run([rustc, "--print", "sysroot"], capture_output=True,
                                 text=True).stdout.strip()
        found = glob.glob(f"{sysroot}/lib/librustc_driver-*.so")
        if found:
            return found[0]
    triplet = sysconfig.get_config_var("MULTIARCH") or "x86_64-linux-gnu"
    libs = [p for p in glob.glob(f"/usr/lib/{triplet}/*.so*") if os.path.isfile(p)
            and not os.path.islink(p)]
    return max(libs, key=os.path.getsize)


def measure(benchmark, fn, size: int = 64):
    """Run fn under pytest-benchmark with enough iterations per round to time it well."""
    iterations = max(1, min(2000, (4 << 20) // max(size, 1)))
    rounds = 60 if FULL else 20
    return benchmark.pedantic(fn, rounds=rounds, iterations=iterations,
                              warmup_rounds=2 if size >= (1 << 20) else 1)


def interleaved(calls: dict, reps: int, rounds: int, clock=None,
                setup: dict | None = None) -> dict[str, float]:
    """Each peer's median time per call, the peers taking turns every round (in an
    order shuffled each round), so that a shared machine's drift hits all alike. The
    first round is a warmup and not counted. setup[peer](), if given, runs before each
    of the peer's turns, untimed.

    clock defaults to time.perf_counter (wall time). Peers that never wait (reads
    from the page cache) can be timed with time.thread_time, the CPU time of this
    thread, kernel time included: time spent preempted by other jobs then counts
    for no one (at load 5 on 2 cores, wall-time rounds of a few ms were 3-5x slower
    when preempted, hitting one peer or the other)."""
    import random
    import time

    clock = clock or time.perf_counter
    times: dict[str, list[float]] = {p: [] for p in calls}
    order = list(calls)
    for _ in range(rounds + 1):
        random.shuffle(order)
        for p in order:
            fn = calls[p]
            if setup and p in setup:
                setup[p]()
            t0 = clock()
            for _ in range(reps):
                fn()
            times[p].append((clock() - t0) / reps)
    return {p: sorted(ts[1:])[len(ts[1:]) // 2] for p, ts in times.items()}


@pytest.fixture(scope="session")
def installed_bin(tmp_path_factory) -> Path:
    """The bin folder of a virtual environment where ``extable`` and ``mcsafe`` are as a
    user runs them once a wheel is installed: its site-packages holds this tree's
    packages (links: the same files) and its console scripts, found by the standard
    path finder.

    The development install is editable: setuptools' import hook, run by a .pth file at
    every start, imports pathlib, importlib.util and what they import, 10-15 ms of CPU
    that an installed command never pays, and more than the whole listing of a small
    library. Its dependencies (numpy, pyelftools) come from the development environment
    through a path entry (a line of a .pth file: nothing is imported).
    """
    env = tmp_path_factory.mktemp("installed")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    python = env / "bin" / "python"
    purelib = Path(subprocess.run([str(python), "-c", "import sysconfig; "
                                   "print(sysconfig.get_path('purelib'))"],
                                  capture_output=True, text=True, check=True).stdout.strip())
    for package in ("extable", "mcsafe"):
        (purelib / package).symlink_to(ROOT / package)
        # As pip does when it installs a wheel: a .pyc current with every module. Under
        # PYTHONDONTWRITEBYTECODE a module edited since its .pyc was written is compiled
        # again at every start (extable.elf: 10 ms, more than the listing of libstdc++).
        compileall.compile_dir(ROOT / package, quiet=2)
    (purelib / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    for command in ("extable", "mcsafe"):
        # The console script pip wrote for the development install, pointed at this one.
        dev = Path(sys.executable).parent / command
        body = (dev.read_text().split("\n", 1)[1] if dev.exists() else
                f"import sys\nfrom {command}.cli import main\nsys.exit(main())\n")
        script = env / "bin" / command
        script.write_text(f"#!{python}\n{body}")
        script.chmod(0o755)
    return env / "bin"
