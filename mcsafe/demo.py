"""The demo behind ``python -m mcsafe demo`` (and the README's ``make demo``).

1. The exception table that ``extable`` compiled into this package's own
   extension: its function ranges, entries and handler descriptors.
2. Memory with poisoned pages (userfaultfd ``UFFDIO_POISON``: the kernel's
   hwpoison path) read through ``mcsafe.copy``: each short read, the bad-page
   map, and the same read without mcsafe, which kills a child process.
3. A mapped file truncated under the mapping, read the same way.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import mmap

import mcsafe
from mcsafe import inject

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
    bad: list[tuple[int, int]] = []
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
        page = (offset + f.offset) // PAGE * PAGE
        if bad and bad[-1][1] == page:
            bad[-1] = (bad[-1][0], page + PAGE)
        else:
            bad.append((page, page + PAGE))
        offset = page + PAGE
    return bad


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


def show_truncated_file() -> None:
    _title("a 64 KiB file, mapped, then truncated to 40 KiB by someone else")
    with tempfile.TemporaryFile() as f:
        f.write(inject.pattern(16 * PAGE))
        f.flush()
        m = mmap.mmap(f.fileno(), 16 * PAGE, access=mmap.ACCESS_READ)
        os.ftruncate(f.fileno(), 10 * PAGE)
        bad = read_through(memoryview(m), 16 * PAGE, 4 * PAGE)
        print(f"  bad ranges found: {[(hex(a), hex(b)) for a, b in bad]}")
        m.close()


def run() -> int:
    show_table()
    show_poison()
    show_truncated_file()
    _title("still alive")
    print(f"  pid {os.getpid()}: {mcsafe.claimed_faults()} faults claimed and recovered "
          f"through the table, handler still installed: {mcsafe.handler_installed()}")
    return 0
