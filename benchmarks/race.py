"""What a reader sees of a file that another process cuts and rewrites in a loop.

    python -m benchmarks.race [--reads N] [--dir DIR ...]

A writer process cuts the file to a random length and writes it long again, as
fast as it can, forever; byte i of the file is always (i % 251) + 1 when it is
there, never 0. Meanwhile this process reads with os.preadv and with
MappedFile.readinto in turn (same offset and length, one right after the other),
the whole file from offset 0 or random ranges of 1 byte to 4 pages, and sorts
what each call returned:

  exact         every counted byte is the file's byte at its offset
  zeroed pages  the count holds a whole page of zeros (a page the kernel's
                truncate had emptied while the size still covered it)
  zeroed tail   zeros, but no whole page of them (the tail of the page a cut
                fell in)
  wrong offset  a nonzero byte that is not the file's byte at that offset

pread(2) itself cannot be exact here: the kernel's truncate is not atomic
against readers. MappedFile promises no better than pread(2), and never a wrong
offset. docs/howto/storage.md quotes a run of this script.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import textwrap

PAGE = os.sysconf("SC_PAGE_SIZE")
SIZE = 64 * PAGE
RAMP = bytes(i % 251 + 1 for i in range(251))
DATA = (RAMP * (SIZE // 251 + 2))[:SIZE + 2 * 251]

WRITER = f"""
    import os, random, sys
    fd = os.open(sys.argv[1], os.O_WRONLY)
    ramp = bytes(i % 251 + 1 for i in range(251))
    data = (ramp * ({SIZE} // 251 + 2))[:{SIZE}]
    rnd = random.Random(1)
    print("ready", flush=True)
    while True:
        cut = rnd.randrange(0, {SIZE})
        os.ftruncate(fd, cut)
        os.pwrite(fd, data[cut:], cut)
"""


def classify(got: bytes, offset: int) -> str:
    want = DATA[offset:offset + len(got)]
    if got == want:
        return "exact"
    for i, (g, w) in enumerate(zip(got, want)):
        if g and g != w:
            return "wrong offset"
    first = -(-offset // PAGE) * PAGE - offset             # the first whole page in got
    for start in range(first, len(got) - PAGE + 1, PAGE):
        if not any(got[start:start + PAGE]):
            return "zeroed pages"
    return "zeroed tail"


def run(directory: str, reads: int, whole: bool, seed: int = 7) -> dict[str, dict[str, int]]:
    from mcsafe import MappedFile

    fd, path = tempfile.mkstemp(prefix="mcsafe-race-", dir=directory)
    os.write(fd, DATA[:SIZE])
    os.close(fd)
    writer = subprocess.Popen([sys.executable, "-c", textwrap.dedent(WRITER), path],
                              stdout=subprocess.PIPE, text=True)
    counts = {peer: {k: 0 for k in ("exact", "zeroed pages", "zeroed tail", "wrong offset",
                                   "short", "reads")} for peer in ("os.preadv", "MappedFile")}
    try:
        assert writer.stdout is not None and writer.stdout.readline() == "ready\n"
        rnd = random.Random(seed)
        buf = bytearray(SIZE)
        view = memoryview(buf)
        rfd = os.open(path, os.O_RDONLY)
        with MappedFile(path) as mf:
            for _ in range(reads):
                offset, n = (0, SIZE) if whole else \
                    (rnd.randrange(0, SIZE - PAGE), rnd.randrange(1, 4 * PAGE))
                for peer in ("os.preadv", "MappedFile"):
                    got = os.preadv(rfd, [view[:n]], offset) if peer == "os.preadv" \
                        else mf.readinto(view[:n], offset)
                    c = counts[peer]
                    c["reads"] += 1
                    c["short"] += got < n
                    c[classify(bytes(buf[:got]), offset)] += 1
        os.close(rfd)
    finally:
        writer.kill()
        writer.wait()
        os.unlink(path)
    return counts


def fs_name(directory: str) -> str:
    out = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "-T", directory],
                         capture_output=True, text=True)
    return (out.stdout.split() or ["?"])[0]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reads", type=int, default=20_000,
                    help="reads per reader, workload and file system")
    ap.add_argument("--dir", action="append",
                    help="where to make the file (default: the temporary directory and "
                         "/dev/shm); once per file system")
    args = ap.parse_args(argv)
    dirs = args.dir or [tempfile.gettempdir(), "/dev/shm"]
    print(f"{args.reads} reads per reader, a {SIZE // 1024} KiB file cut and rewritten "
          f"in a loop by another process; Linux {os.uname().release}, {os.cpu_count()} CPUs")
    print("| file system | reads | reader | exact | zeroed pages | zeroed tail | wrong offset "
          "| short |")
    print("|---|---|---|---|---|---|---|---|")
    for d in dirs:
        if not os.path.isdir(d):
            continue
        for whole in (True, False):
            for peer, c in run(d, args.reads, whole).items():
                def cell(k: str) -> str:
                    return f"{c[k]} ({100 * c[k] / c['reads']:.2f}%)"
                print(f"| {fs_name(d)} | {'whole file' if whole else '1 B - 4 pages'} "
                      f"| {peer} | {cell('exact')} | {cell('zeroed pages')} "
                      f"| {cell('zeroed tail')} | {c['wrong offset']} | {cell('short')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
