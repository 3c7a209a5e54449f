"""Shared fixtures: shared objects compiled from tests/fixtures/*.c."""

from __future__ import annotations

import os
import platform
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import extable
from extable.elf import ElfImage

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
HOST = platform.machine()
#: A compiler for each machine the fixtures are built for: the host's own gcc,
#: or Debian's cross compiler (scripts/setup.sh installs it).
COMPILERS = {"x86_64": "gcc" if HOST == "x86_64" else "x86_64-linux-gnu-gcc",
             "aarch64": "gcc" if HOST == "aarch64" else "aarch64-linux-gnu-gcc"}
AARCH64_GCC = COMPILERS["aarch64"]

# The commands under test are started as from an operator's terminal, where SIGINT
# is a signal's default action. `make test` run as a background job of a
# non-interactive shell (`make test &` in a script, as CI may) inherits SIGINT
# ignored, and a command keeps an ignored SIGINT ignored (nohup's rule), so the
# tests that send it would test nothing. Python's own handler here is reset to the
# default action in every child at exec. (Tests of an ignored SIGINT set it in the
# child themselves.)
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def compile_so(source: Path, out: Path, cc: str = "gcc", extra: list[str] = ()) -> Path:
    subprocess.run([cc, "-O2", "-shared", "-fPIC", "-I", extable.include_dir(), *extra,
                    str(source), "-o", str(out)], check=True)
    return out


def python_child(*parts: str, timeout: float = 60, env: dict[str, str] | None = None
                 ) -> subprocess.CompletedProcess[str]:
    """Run the parts (each dedented, then joined) in a fresh interpreter, from the
    repository's root, with faulthandler off (a test that expects a death reads
    the signal, not faulthandler's report), its output buffered as on a pipe whatever
    this environment says (a line printed before a death is lost unless flushed): its
    exit status and output, as text."""
    code = "".join(textwrap.dedent(part) for part in parts)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT,
                          env={**os.environ, "PYTHONFAULTHANDLER": "", "PYTHONUNBUFFERED": "",
                               **(env or {})})


def wait_gone(pid: int, deadline: float = 60) -> None:
    """Wait (by pidfd, not by polling) for a process that is not our child to end;
    deadline is how long it may take, never a pace."""
    import select

    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        ready, _, _ = select.select([fd], [], [], deadline)
        assert ready, f"process {pid} still running after {deadline} s"
    finally:
        os.close(fd)


def run_cli(*args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    """The extable CLI in a child process, as a user runs it. Every file a build
    writes is read back by LIEF too (tests/lief_check.py)."""
    from lief_check import BuildWatch

    argv = list(map(str, args))
    watch = BuildWatch(argv)
    proc = subprocess.run([sys.executable, "-m", "extable", *argv],
                          capture_output=True, text=True)
    watch.check(proc.returncode)
    if check and proc.returncode:
        raise AssertionError(f"extable {' '.join(argv)} failed: {proc.stderr}")
    return proc


#: Ways to damage a built object's table (damage_table), and the words the
#: refusal of it names.
TABLE_DAMAGE = {
    "magic": "bad magic", "machine": "machine 183", "unsorted": "unsorted",
    "overlapping": "overlapping", "outside": "outside the module's code",
    "descriptor": "descriptor 99", "truncated": "truncated",
}


def damage_table(so: Path, how: str, out: Path | None = None) -> None:
    """Write so to out (default: so itself) with its extable table damaged in the
    way TABLE_DAMAGE names (in its header, or its first two entries)."""
    with ElfImage(so) as image:
        base = image.section("extable_table").offset
    blob = bytearray(so.read_bytes())
    first = base + struct.unpack_from("<I", blob, base + 24)[0]       # entries_off
    second = first + 16
    if how == "magic":
        blob[base] ^= 0xFF
    elif how == "machine":
        struct.pack_into("<H", blob, base + 10, 183)
    elif how == "unsorted":
        blob[first:second + 16] = blob[second:second + 16] + blob[first:second]
    elif how == "overlapping":                     # the first ends inside the second
        struct.pack_into("<I", blob, first + 4, struct.unpack_from("<I", blob, second)[0] + 1)
    elif how == "outside":                         # the first's landing pad
        struct.pack_into("<I", blob, first + 8, 0x7FFFFF00)
    elif how == "descriptor":                      # the first names descriptor 99
        struct.pack_into("<I", blob, first + 12, 0x8000 | (99 << 16))
    elif how == "truncated":                       # more entries than the section holds
        struct.pack_into("<I", blob, base + 16, 1 << 20)
    else:
        raise ValueError(f"no damage {how!r} (one of {', '.join(TABLE_DAMAGE)})")
    (out or so).write_bytes(bytes(blob))


class Fixtures(dict):
    """Compiled fixtures by name; one whose compiler is missing skips the test."""

    def __missing__(self, name: str) -> Path:
        pytest.skip(f"no compiler for fixture {name!r} on this machine "
                    "(make test installs Debian's cross compilers)")


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Fixtures:
    """Fixture objects, compiled once per session."""
    d = tmp_path_factory.mktemp("fixtures")
    out = Fixtures(plain=compile_so(FIXTURES / "plain.c", d / "plain.so"))
    for name, machine, source in (("x86", "x86_64", "sites_x86_64.c"),
                                  ("arm", "aarch64", "sites_aarch64.c")):
        if shutil.which(COMPILERS[machine]):
            out[name] = compile_so(FIXTURES / source, d / source.replace(".c", ".so"),
                                   cc=COMPILERS[machine])
    return out


@pytest.fixture
def fresh(built: dict[str, Path], tmp_path: Path):
    """A writable copy of a fixture, by name."""
    def copy(name: str) -> Path:
        dst = tmp_path / built[name].name
        shutil.copyfile(built[name], dst)
        return dst
    return copy


def readelf_functions(path: str | os.PathLike[str], table: str) -> list[tuple[str, int, int]]:
    """(name as readelf prints it, with any @version; start; end) of the defined FUNC and
    IFUNC symbols with a size in one symbol table, per readelf -sW."""
    text = subprocess.run(["readelf", "-sW", str(path)], capture_output=True, text=True,
                          check=True).stdout
    rows, current = [], None
    for line in text.splitlines():
        if line.startswith("Symbol table"):
            current = line.split("'")[1]
            continue
        parts = line.split()
        if current != table or len(parts) < 8 or not parts[0][:-1].isdigit():
            continue
        _, value, size, typ, _bind, _vis, ndx, name = parts[:8]
        size_v = int(size, 0) if size.startswith("0x") else int(size)
        if typ in ("FUNC", "IFUNC") and size_v and ndx != "UND":
            rows.append((name, int(value, 16), int(value, 16) + size_v))
    return rows


@pytest.fixture
def loop_device():
    """attach(path) -> /dev/loopN: the file attached as a loop device, detached after
    the test; the test is skipped where the machine has no loop devices."""
    attached: list[str] = []

    def attach(backing: Path) -> str:
        made = subprocess.run(["losetup", "--find", "--show", str(backing)],
                              capture_output=True, text=True)
        if made.returncode:
            pytest.skip(f"no loop device on this machine: losetup said {made.stderr.strip()!r}")
        attached.append(made.stdout.strip())
        return attached[-1]
    yield attach
    for dev in attached:
        subprocess.run(["losetup", "-d", dev], check=True)


@pytest.fixture
def failing_file():
    """make(data, bad=()) -> an open mcsafe.inject FailingFile (a FUSE file whose bad
    byte ranges fail for every reader), closed after the test; the test is skipped
    only where the machine has no /dev/fuse."""
    from mcsafe import inject

    made = []

    def make(data, bad=(), **kwargs):
        if not os.path.exists("/dev/fuse"):
            pytest.skip("no /dev/fuse on this machine: failing files need FUSE")
        made.append(inject.failing_file(data, bad, **kwargs))
        return made[-1]
    yield make
    for f in reversed(made):
        f.close()


@pytest.fixture
def tmpfs(tmp_path):
    """mount(size, *options) -> a folder with a tmpfs of that size (e.g. "4m")
    mounted on it, under tmp_path, unmounted after the test; the test is skipped
    where a tmpfs cannot be mounted (not root), with mount's reason."""
    mounted: list[Path] = []

    def mount(size: str, *options: str) -> Path:
        mnt = tmp_path / f"tmpfs{len(mounted)}"
        mnt.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join([f"size={size}",
                                                                      *options]),
                               "tmpfs", str(mnt)], capture_output=True, text=True)
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()!r}")
        mounted.append(mnt)
        return mnt
    try:
        yield mount
    finally:
        for mnt in reversed(mounted):
            subprocess.run(["umount", "-l", str(mnt)], check=True)


@pytest.fixture
def bad_file(tmp_path: Path):
    """make(data, bad_pages, method="uffd", mode="r+") -> a MappedFile of data (bytes,
    or a number of pages holding inject.pattern()) whose bad pages fault when
    touched, closed after the test; skipped, with inject's reason, where this
    machine lacks the method (tests/expected.py says which it must have).

    uffd: a memfd whose bad pages are holes, poisoned in the mapping with
    UFFDIO_POISON. madvise: a memfd whose bad pages are poisoned for real with
    MADV_HWPOISON (a dirty shmem page keeps its poison; the page frame is lost).
    mprotect: a file in tmp_path whose bad pages are mapped PROT_NONE."""
    import contextlib
    import itertools

    from mcsafe import MappedFile, inject

    stack, names = contextlib.ExitStack(), itertools.count()

    def make(data: bytes | int, bad: list[int], method: str = "uffd", mode: str = "r+"
             ) -> MappedFile:
        why = inject.available()[method]
        if why is not None:
            pytest.skip(f"{method} unavailable on this machine: {why}")
        if isinstance(data, int):
            data = inject.pattern(data * inject.PAGE)
        npages = -(-len(data) // inject.PAGE)
        assert all(0 <= p < npages for p in bad), (bad, npages)
        if method == "mprotect":
            path = tmp_path / f"bad-{next(names)}.bin"
            path.write_bytes(data)
            mf = stack.enter_context(MappedFile(path, mode))
            for p in bad:
                assert inject._libc.mprotect(mf.address + p * inject.PAGE, inject.PAGE, 0) == 0
            return mf
        assert method in ("uffd", "madvise"), f"no bad files made with {method}"
        fd = os.memfd_create("bad-file", os.MFD_CLOEXEC)
        stack.callback(os.close, fd)
        os.ftruncate(fd, len(data))
        for p in range(npages):
            if method == "madvise" or p not in bad:
                os.pwrite(fd, data[p * inject.PAGE:(p + 1) * inject.PAGE], p * inject.PAGE)
        mf = stack.enter_context(MappedFile(f"/proc/self/fd/{fd}", mode))
        if method == "uffd":
            stack.enter_context(inject.poison_range(mf.address, npages, bad))
        else:
            for p in bad:
                assert inject._libc.madvise(mf.address + p * inject.PAGE, inject.PAGE,
                                            inject.MADV_HWPOISON) == 0
        return mf
    with stack:
        yield make
