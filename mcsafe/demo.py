"""The demo behind ``python -m mcsafe demo`` (and the README's ``make demo``).

1. The exception table that ``extable`` compiled into this package's own
   extension: its function ranges, entries and handler descriptors.
2. Memory with poisoned pages (userfaultfd ``UFFDIO_POISON``: the kernel's
   hwpoison path) read through ``mcsafe.copy``: each short read, the bad-page
   map, and the same read without mcsafe, which kills a child process.
3. A plain C function, never annotated, compiled here and protected by one
   rule (``checksum=unwind``): it returns -EFAULT from a poisoned page.
4. A data file with poisoned pages read through ``MappedFile``: short reads,
   EIO on a bad first byte, and the bad-range map from ``scrub()``.
5. A file on a failing disk (FUSE: its bad pages fail for every reader), read
   by os.pread, open(), numpy.fromfile, a plain mmap in a child process and
   MappedFile, while another client appends to it.
6. A mapped file truncated under the mapping, read the same way.
7. The operator's commands: ``mcsafe rescue`` of a failing file (a GNU ddrescue
   mapfile) and, last, ``mcsafe scan`` of a tree holding it.
"""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile

from extable.errors import MissingExtra

import mcsafe
from mcsafe import MappedFile, MemoryFaultError, inject

PAGE = inject.PAGE


def _title(text: str) -> None:
    print(f"\n== {text}", flush=True)


def _extable(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "extable", *args], capture_output=True,
                          text=True, check=True)
    return proc.stdout


def show_table() -> None:
    ext = mcsafe._mcsafe.__file__
    _title(f"the built extension: {ext}")
    funcs = json.loads(_extable("symbols", "--json", ext))
    copies = [f for f in funcs if f["name"].startswith("mcsafe_copy")]
    print(f"$ extable symbols {os.path.basename(ext)}   "
          f"# {len(funcs)} functions; the copy routines:")
    for f in sorted(copies, key=lambda f: f["start"]):
        print(f"  {f['start']:#08x}..{f['end']:#08x} {f['end'] - f['start']:5d}  {f['name']}")
    print(f"$ extable dump {os.path.basename(ext)}")
    print(_extable("dump", ext).rstrip())
    print(f"$ extable verify {os.path.basename(ext)}")
    print(_extable("verify", ext).rstrip())


def read_through(buffer: memoryview, size: int, chunk: int) -> list[tuple[int, int]]:
    """Read a region chunk by chunk; at a fault, note the bad page and go on after it."""
    out = bytearray(chunk)
    bad_pages: list[int] = []
    offset = 0
    while offset < size:
        want = min(chunk, size - offset)
        res = mcsafe.copy_report(out, buffer, want, src_offset=offset)
        if res.fault is None:
            print(f"  read {want:6d} bytes at {offset:#07x}: ok")
            offset += want
            continue
        f = res.fault
        sig = signal.Signals(f.signal).name
        print(f"  read {want:6d} bytes at {offset:#07x}: SHORT, {res.copied} bytes, "
              f"{sig} code {f.code} at {f.address:#x} (offset {offset + f.offset:#07x})")
        page = (offset + f.offset) // PAGE
        bad_pages.append(page)
        offset = (page + 1) * PAGE
    return inject.page_ranges(bad_pages)


def show_poison() -> None:
    why = inject.available()["uffd"]
    if why is not None:
        _title(f"poisoned memory: skipped, userfaultfd poisoning is unavailable ({why})")
        return
    npages, bad_pages = 16, [3, 7, 8, 12]
    _title(f"{npages} pages of memory, pages {bad_pages} poisoned with UFFDIO_POISON")
    with inject.region("uffd", npages, bad_pages) as r:
        bad = read_through(r.buffer, r.size, 3 * PAGE)
        print(f"  bad ranges found: {[(hex(a), hex(b)) for a, b in bad]}")
        print(f"  bad ranges made:  {[(hex(a), hex(b)) for a, b in r.bad_ranges()]}")
        assert bad == r.bad_ranges()
    print("  the same first read with a plain copy (bytes(view)), in a child process:")
    child = subprocess.run([sys.executable, "-c",
                            "from mcsafe import inject\n"
                            "with inject.region('uffd', 16, [3]) as r:\n"
                            "    bytes(r.buffer[:3 * 4096 + 100])\n"],
                           capture_output=True)
    how = (f"killed by {signal.Signals(-child.returncode).name}" if child.returncode < 0
           else f"exit {child.returncode}")
    print(f"  child: {how}")


#: A plain C function, never annotated (examples/unwind/checksum.c).
CHECKSUM_C = """\
#include <stddef.h>
#include <stdint.h>
int64_t checksum(const unsigned char *p, size_t n)
{
    uint32_t a = 1, b = 0;
    for (size_t i = 0; i < n; i++) {
        a = (a + p[i]) % 65521;
        b = (b + a) % 65521;
    }
    return (int64_t)((b << 16) | a);
}
"""


def show_plain_c() -> None:
    import ctypes
    import shutil

    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        _title("a plain C function: skipped, no C compiler here (make demo installs gcc)")
        return
    _title("a plain C function, never annotated, protected by a rule: 'checksum=unwind'")
    with tempfile.TemporaryDirectory() as d:
        src, so = os.path.join(d, "checksum.c"), os.path.join(d, "checksum.so")
        with open(src, "w") as f:
            f.write(CHECKSUM_C)
        print("$ cc -O2 -shared -fPIC checksum.c -o checksum.so")
        subprocess.run([cc, "-O2", "-shared", "-fPIC", src, "-o", so], check=True)
        print("$ extable build checksum.so --in-place --add-section --rule 'checksum=unwind'")
        print("  " + _extable("build", so, "--in-place", "--add-section", "--rule",
                              "checksum=unwind").strip().replace(so, "checksum.so"))
        for line in _extable("dump", so).splitlines()[-3:]:
            print("  " + line.strip())
        lib = ctypes.CDLL(so)
        lib.checksum.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        lib.checksum.restype = ctypes.c_int64
        mcsafe.register(so)
        method = "uffd" if inject.available()["uffd"] is None else "mprotect"
        with inject.region(method, 2, [1]) as r:
            print(f"  checksum(page 0)     = {lib.checksum(r.address, PAGE):#010x}")
            print(f"  checksum(pages 0..1) = {lib.checksum(r.address, 2 * PAGE)}  (page 1 "
                  f"{'poisoned' if method == 'uffd' else 'PROT_NONE'}: the function returned "
                  "-EFAULT to its caller, registers and stack as before the call)")
        mcsafe.unregister(so)


def _ranges(rs: list[tuple[int, int]]) -> str:
    return ", ".join(f"[{a:#x}, {b:#x})" for a, b in rs) or "none"


def show_mapped_file() -> None:
    why = inject.available()["uffd"]
    if why is not None:
        _title(f"a data file with bad pages: skipped ({why})")
        return
    npages, bad = 24, [5, 6, 15]
    _title(f"a {npages * PAGE >> 10} KiB data file (memfd), pages {bad} poisoned, "
           "read through MappedFile")
    fd, path = inject.memfd_file(npages, bad)
    try:
        with MappedFile(path, "r+") as mf, inject.poison_range(mf.address, npages, bad):
            buf = bytearray(4 * PAGE)
            for offset in (0, 4 * PAGE, 5 * PAGE + 100, 7 * PAGE, 13 * PAGE):
                try:
                    n = mf.readinto(buf, offset)
                    tag = "ok" if n == len(buf) else "SHORT"
                    print(f"  readinto({len(buf)}, {offset:#07x}) -> {n:5d}  {tag}")
                except MemoryFaultError as e:
                    print(f"  readinto({len(buf)}, {offset:#07x}) -> MemoryFaultError "
                          f"errno={e.errno} (EIO) offset={e.offset:#x} cause={e.cause}")
            before = mcsafe.claimed_faults()
            found = mf.scrub()
            print(f"  scrub():   {_ranges(found)}  ({mcsafe.claimed_faults() - before} new "
                  "faults: pages already seen were skipped, not touched)")
            print(f"  poisoned:  {_ranges(inject.page_ranges(bad))}")
    finally:
        os.close(fd)


def _outcome(call) -> str:  # type: ignore[no-untyped-def]
    try:
        return str(call())
    except OSError as e:
        return f"{type(e).__name__} errno={e.errno} ({errno.errorcode.get(e.errno or 0, '?')})"


def _fromfile(path: str, truth: bytes) -> str:
    import numpy as np

    got = np.fromfile(path, np.uint8).tobytes()
    wrong = sum(a != b for a, b in zip(got, truth))
    return f"{len(got)} items, {wrong} of them not the file's bytes, and no error"


def show_failing_disk() -> None:
    why = inject.fuse_unavailable()
    if why is not None:
        _title(f"a file on a failing disk: skipped ({why})")
        return
    npages, bad = 16, [5, 11]
    _title(f"a {npages * PAGE >> 10} KiB file on a failing disk (FUSE), pages {bad} "
           "fail for every reader")
    with inject.failing_file(npages * PAGE, inject.page_ranges(bad)) as f:
        fd = os.open(f.path, os.O_RDONLY)
        try:
            readers = [
                ("os.pread(64 KiB, 0)", lambda: f"{len(os.pread(fd, npages * PAGE, 0))} bytes"),
                ("os.pread(4 KiB, page 5)", lambda: len(os.pread(fd, PAGE, 5 * PAGE))),
                ("open().read()", lambda: len(open(f.path, "rb").read())),
                ("numpy.fromfile(uint8)", lambda: _fromfile(f.path, f.contents())),
            ]
            for label, call in readers:
                print(f"  {label:28s} -> {_outcome(call)}")
            child = subprocess.run([sys.executable, "-c",
                                    f"import mmap\nf = open({f.path!r}, 'rb')\n"
                                    "bytes(mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ))"],
                                   capture_output=True)
            how = (f"killed by {signal.Signals(-child.returncode).name}"
                   if child.returncode < 0 else f"exit {child.returncode}")
            print(f"  {'bytes(mmap) in a child':28s} -> {how}")
            with MappedFile(f.path) as mf, f.on_failed_read(append=b"a" * 64):
                print("  MappedFile, while another client appends 64 bytes at every failed "
                      "read:")
                for offset in (0, 5 * PAGE, 5 * PAGE - 100):
                    print(f"    readinto(4 KiB, {offset:#07x}) -> "
                          f"{_outcome(lambda: mf.readinto(bytearray(PAGE), offset))}")
                print(f"    size now {mf.size} (was {npages * PAGE}); remembered bad: "
                      f"{_ranges(mf.bad_ranges())}")
                print(f"    scrub(): {_ranges(mf.scrub())}")
        finally:
            os.close(fd)


def show_truncated_file() -> None:
    _title("a 64 KiB log file, mapped, then truncated to 40 KiB + 100 bytes by another writer")
    with tempfile.NamedTemporaryFile() as f:
        f.write(inject.pattern(16 * PAGE))
        f.flush()
        with MappedFile(f.name) as mf:
            os.truncate(f.name, 10 * PAGE + 100)
            data = mf.read(16 * PAGE)
            print(f"  read({16 * PAGE}) -> {len(data)} bytes: what the file holds now, as "
                  "pread(2) would say (the zeros past the end of its last page are not counted)")
            print(f"  size:      {mf.size} (follows the file)")
            print(f"  scrub():   {_ranges(mf.scrub())}")


def _command(*args: str) -> None:
    """Run the mcsafe command in a child, as an operator would, and show it."""
    print(f"  $ mcsafe {' '.join(args)}")
    child = subprocess.run([sys.executable, "-m", "mcsafe", *args], capture_output=True,
                           text=True)
    for line in (child.stdout + child.stderr).splitlines():
        print(f"    {line}")
    print(f"    (exit status {child.returncode})")


def show_commands() -> None:
    why = inject.fuse_unavailable()
    if why is not None:
        _title(f"mcsafe rescue and mcsafe scan of a failing disk: skipped ({why})")
        return
    old = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="mcsafe-demo-") as top:
        os.chdir(top)                   # relative paths: what an operator would type
        try:
            os.makedirs("tree/logs")
            for name, size in (("tree/README", 300), ("tree/logs/app.log", 200_000),
                               ("tree/logs/old.log", 3_000_000)):
                with open(name, "wb") as out:
                    out.write(inject.pattern(size))
            os.mkfifo("tree/logs/pipe")
            npages, bad = 64, [5, 6, 40]
            with inject.failing_file(npages * PAGE, inject.page_ranges(bad), name="disk.img",
                                     dir=os.path.join(top, "tree")) as f:
                image = os.path.relpath(f.path)
                _title(f"mcsafe rescue: a {npages * PAGE >> 10} KiB image on a failing disk "
                       f"(FUSE, pages {bad} fail), with a GNU ddrescue mapfile")
                _command("rescue", image, "rescued.img")
                with open("rescued.img.map") as m:
                    for line in m.read().splitlines()[-6:]:
                        print(f"    {line}")
                _title("mcsafe scan: a tree holding that image, logs and a FIFO")
                _command("scan", "tree")
        finally:
            os.chdir(old)


def run() -> int:
    for module in ("numpy", "capstone", "mfusepy"):       # what the demo extra installs
        if importlib.util.find_spec(module) is None:
            raise MissingExtra("mcsafe demo", module, "demo")
    show_table()
    show_poison()
    show_plain_c()
    show_mapped_file()
    show_failing_disk()
    show_truncated_file()
    _title("still alive")
    print(f"  pid {os.getpid()}: {mcsafe.claimed_faults()} faults claimed and recovered "
          f"through the table, handler still installed: {mcsafe.handler_installed()}")
    show_commands()
    return 0
