"""The slow one: the vmlinux of a current Debian linux-image-*-amd64-unsigned package.

The .deb comes from ``apt-get download`` and is cached, with the vmlinux
extracted from its vmlinuz (an xz payload inside the bzImage), under
~/.cache/mcsafe/kernel; without apt or the network the test skips and says why.
"""

from __future__ import annotations

import glob
import lzma
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from conftest import run_cli
from kernel_helpers import extable_json, objdump_words

CACHE = Path(os.path.expanduser("~/.cache/mcsafe/kernel"))


def _current_package() -> str:
    if not shutil.which("apt-cache"):
        pytest.skip("apt-cache is not available: cannot find a Debian kernel package")
    out = subprocess.run(["apt-cache", "search", "--names-only",
                          r"^linux-image-[0-9.]+-[0-9]+-amd64-unsigned$"],
                         capture_output=True, text=True).stdout
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    if not names:
        pytest.skip("apt-cache knows no linux-image-*-amd64-unsigned package (apt-get update?)")
    key = lambda n: [int(x) for x in re.findall(r"\d+", n)]   # noqa: E731
    return max(names, key=key)


def _deb(package: str) -> Path:
    found = sorted(CACHE.glob(f"{package}_*_amd64.deb"))
    if found:
        return found[-1]
    CACHE.mkdir(parents=True, exist_ok=True)
    p = subprocess.run(["apt-get", "download", package], cwd=CACHE, capture_output=True,
                       text=True, timeout=900)
    found = sorted(CACHE.glob(f"{package}_*_amd64.deb"))
    if p.returncode or not found:
        pytest.skip(f"apt-get download {package} failed: "
                    f"{(p.stderr.strip().splitlines() or ['?'])[-1]}")
    return found[-1]


def _vmlinux_from_vmlinuz(vmlinuz: Path, out: Path) -> None:
    """Like scripts/extract-vmlinux: decompress the xz stream inside the bzImage."""
    with open(vmlinuz, "rb") as f:
        blob = f.read()
    at = blob.find(b"\xfd7zXZ\x00")
    assert at > 0, f"{vmlinuz}: no xz payload"
    dec = lzma.LZMADecompressor()
    tmp = out.with_suffix(".part")
    with open(tmp, "wb") as f:
        for i in range(at, len(blob), 1 << 20):
            f.write(dec.decompress(blob[i:i + (1 << 20)]))
            if dec.eof:
                break
    os.replace(tmp, out)


@pytest.fixture(scope="module")
def vmlinux() -> Path:
    package = _current_package()
    release = package[len("linux-image-"):-len("-unsigned")]
    out = CACHE / f"vmlinux-{release}"
    if not out.exists():
        deb = _deb(package)
        root = CACHE / f"extract-{release}"
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir()
        tar = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
        subprocess.run(["tar", "-x", "-C", str(root), "--wildcards", "./boot/vmlinuz-*"],
                       stdin=tar.stdout, check=True)
        assert tar.wait() == 0
        [vmlinuz] = glob.glob(str(root / "boot" / "vmlinuz-*"))
        _vmlinux_from_vmlinuz(Path(vmlinuz), out)
        shutil.rmtree(root)
    print(f"vmlinux: {out} ({out.stat().st_size >> 20} MiB)")
    return out


def _ex_table(path: Path) -> tuple[int, int, int]:
    """(file offset, address, size) of __ex_table, per readelf -SW."""
    text = subprocess.run(["readelf", "-SW", str(path)], capture_output=True, text=True,
                          check=True).stdout
    m = re.search(r"__ex_table\s+PROGBITS\s+([0-9a-f]+)\s+([0-9a-f]+)\s+([0-9a-f]+)", text)
    assert m, text
    return int(m[2], 16), int(m[1], 16), int(m[3], 16)


def test_dump_and_verify(vmlinux: Path) -> None:
    d = extable_json("dump", vmlinux)
    assert d["format"] == "linux-x86_64" and d["object"] == "image"
    assert d["kernel_source"] == "banner" and re.match(r"\d+\.\d+", d["kernel"])
    offset, addr, size = _ex_table(vmlinux)
    words = objdump_words(vmlinux)
    assert len(d["entries"]) == size // 12 > 100
    for i, e in enumerate(d["entries"]):
        insn = (addr + 12 * i + struct.unpack("<i", struct.pack("<I", words[3 * i]))[0])
        assert e["insn"]["address"] == insn % (1 << 64) >= 0xffffffff80000000
        assert e["data"] == words[3 * i + 2] and e["type"] is not None
    p = run_cli("verify", vmlinux)
    assert p.returncode == 0, p.stderr
    assert {e["type"] for e in d["entries"]} >= {"UACCESS", "DEFAULT", "IMM_REG"}


def _corrupt(vmlinux: Path, dst: Path, edit) -> Path:
    shutil.copyfile(vmlinux, dst)
    offset, addr, size = _ex_table(dst)
    with open(dst, "r+b") as f:
        f.seek(offset)
        table = bytearray(f.read(size))
        edit(table, addr)
        f.seek(offset)
        f.write(table)
    return dst


def test_unknown_type_fails(vmlinux: Path, tmp_path: Path) -> None:
    def edit(t: bytearray, addr: int) -> None:
        t[12 * 7 + 8] = 0xEE
    bad = _corrupt(vmlinux, tmp_path / "vmlinux", edit)
    p = run_cli("verify", bad)
    assert p.returncode == 1 and len(p.stderr.splitlines()) == 1
    assert p.stderr.startswith(f"extable: {bad}: entry 7: unknown type 238 for kernel 5.17+")


def test_two_entries_swapped_fail(vmlinux: Path, tmp_path: Path) -> None:
    """Swap entries 20 and 21 as a broken sort would: each keeps its own targets."""
    def edit(t: bytearray, addr: int) -> None:
        e = [struct.unpack_from("<iiI", t, 12 * i) for i in (20, 21)]
        targets = [(addr + 12 * i + a, addr + 12 * i + 4 + b, w)
                   for i, (a, b, w) in zip((20, 21), e)]
        for i, (insn, fixup, w) in zip((21, 20), targets):
            struct.pack_into("<iiI", t, 12 * i, insn - (addr + 12 * i),
                             fixup - (addr + 12 * i + 4), w)
    bad = _corrupt(vmlinux, tmp_path / "vmlinux", edit)
    p = run_cli("verify", bad)
    assert p.returncode == 1 and len(p.stderr.splitlines()) == 1
    assert p.stderr.startswith(f"extable: {bad}: entry 21: insn 0xffffffff")
    assert "is not sorted (scripts/sorttable)" in p.stderr
    d = extable_json("verify", bad)
    assert [(f["index"], f["check"]) for f in d["findings"]] == [(21, "order")]
