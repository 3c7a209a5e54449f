"""Other modules' tables: the docs/EXTENDING.md round trip, refused tables, and
a Cython module that cimports the nogil copy."""

from __future__ import annotations

import ctypes
import shutil
import struct
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import mcsafe
from conftest import compile_so, run_cli
from extable.elf import ElfImage
from mcsafe import inject

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "protected" / "protected.c"
PAGE = inject.PAGE


@pytest.fixture
def protected(tmp_path) -> Path:
    """The example module, compiled and with its table built, as EXTENDING.md says."""
    so = compile_so(EXAMPLE, tmp_path / "protected.so")
    run_cli("build", so, "--in-place", check=True)
    return so


def load(so: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(so))
    lib.probe_read.argtypes = [ctypes.c_void_p]
    lib.probe_read.restype = ctypes.c_long
    lib.sum_bytes.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_size_t)]
    lib.sum_bytes.restype = ctypes.c_size_t
    return lib


def test_a_fault_in_another_module_is_recovered_through_its_own_table(protected) -> None:
    d = run_cli("dump", protected, check=True).stdout
    assert "probe_read+0x2" in d and "sum_load" in d
    lib = load(protected)
    before = mcsafe.published_tables()
    mcsafe.register(protected)
    assert mcsafe.published_tables() == before + 1
    try:
        with inject.region("mprotect", 2, [1]) as r:
            r.buffer[5] = 42
            assert lib.probe_read(r.address + 5) == 42
            assert lib.probe_read(r.address + PAGE + 1) == -14          # -EFAULT, alive
            left = ctypes.c_size_t(0)
            r.buffer[PAGE - 3:PAGE] = bytes([1, 2, 3])
            total = lib.sum_bytes(r.address + PAGE - 3, 100, ctypes.byref(left))
            assert (total, left.value) == (6, 97)
        with inject.region("uffd", 2, [1]) as r:
            assert lib.probe_read(r.address + PAGE) == -14
    finally:
        assert mcsafe.unregister(protected)
    assert mcsafe.published_tables() == before
    assert not mcsafe.unregister(protected)


def test_unregistered_module_fault_is_not_claimed(protected) -> None:
    code = (f"import ctypes, mcsafe\nlib = ctypes.CDLL({str(protected)!r})\n"
            "lib.probe_read.argtypes = [ctypes.c_void_p]\nlib.probe_read(16)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, cwd=ROOT)
    assert p.returncode == -11


def table_of(so: Path) -> tuple[int, int]:
    with ElfImage(so) as image:
        sec = image.section("extable_table")
        return sec.offset, sec.addr


@pytest.mark.parametrize("how,words", [
    ("magic", "bad magic"), ("machine", "machine 183"), ("outside", "outside the module's code"),
    ("overlap", "overlapping"), ("unbuilt", "bad magic")])
def test_bad_tables_are_refused_and_never_published(tmp_path, how: str, words: str) -> None:
    so = compile_so(EXAMPLE, tmp_path / f"bad_{how}.so")
    if how != "unbuilt":
        run_cli("build", so, "--in-place", check=True)
    off, _ = table_of(so)
    blob = bytearray(so.read_bytes())
    if how == "magic":
        blob[off] = ord("X")
    elif how == "machine":
        struct.pack_into("<H", blob, off + 10, 183)
    elif how == "outside":
        struct.pack_into("<I", blob, off + 48 + 8, 0x10000000)
    elif how == "overlap":
        end0 = struct.unpack_from("<I", blob, off + 48 + 4)[0]
        struct.pack_into("<I", blob, off + 48 + 16, end0 - 1)
    so.write_bytes(bytes(blob))
    before = mcsafe.published_tables()
    with pytest.raises(mcsafe.TableError, match=words) as info:
        mcsafe.register(so)
    assert str(so) in str(info.value)
    assert mcsafe.published_tables() == before


def test_register_without_a_reservation_says_how(built) -> None:
    with pytest.raises(mcsafe.TableError, match="EXTABLE_RESERVE"):
        mcsafe.register(built["plain"])


def test_cython_module_cimports_the_nogil_copy(tmp_path) -> None:
    pyx = tmp_path / "user_copy.pyx"
    pyx.write_text(
        "from mcsafe._mcsafe cimport copy_nogil, mcsafe_fault\n"
        "def copy_all(unsigned char[::1] dst, const unsigned char[::1] src):\n"
        "    cdef mcsafe_fault rec\n"
        "    cdef size_t done\n"
        "    with nogil:\n"
        "        done = copy_nogil(&dst[0], &src[0], src.shape[0], &rec)\n"
        "    return done, rec.side\n")
    pkg_root = Path(mcsafe.__file__).resolve().parent.parent
    subprocess.run([sys.executable, "-m", "cython", "-3", "-I", str(pkg_root), str(pyx),
                    "-o", str(tmp_path / "user_copy.c")], check=True, capture_output=True)
    ext = tmp_path / ("user_copy" + sysconfig.get_config_var("EXT_SUFFIX"))
    incs = [f"-I{d}" for d in mcsafe.get_include() + [sysconfig.get_paths()["include"]]]
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", *incs, str(tmp_path / "user_copy.c"),
                    "-o", str(ext)], check=True, capture_output=True)
    code = ("import sys; sys.path.insert(0, %r)\n"
            "import mcsafe, user_copy\nfrom mcsafe import inject\n"
            "with inject.region('uffd', 3, [2]) as r:\n"
            "    print(user_copy.copy_all(bytearray(r.size), r.buffer))\n") % str(tmp_path)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == f"({2 * PAGE}, 1)"


def test_fault_outside_the_named_buffers_is_not_claimed(tmp_path) -> None:
    """The PC is covered, the signal is the kernel's, but the address lies outside the
    buffer the entry's registers name: not attributable, so the process dies of it."""
    so = compile_so(ROOT / "tests" / "fixtures" / "misattributed.c", tmp_path / "mis.so")
    run_cli("build", so, "--in-place", check=True)
    code = (f"import ctypes, mcsafe\nfrom mcsafe import inject\n"
            f"lib = ctypes.CDLL({str(so)!r})\nmcsafe.register({str(so)!r})\n"
            "f = lib.misattributed\n"
            "f.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]\n"
            "with inject.region('mprotect', 2, [1]) as r:\n"
            "    bad = r.address + inject.PAGE\n"
            "    f(bad, 64, bad)                        # inside the named buffer: claimed\n"
            "    print('claimed', mcsafe.claimed_faults(), flush=True)\n"
            "    f(r.address, 64, bad)                  # outside it: not ours\n"
            "    print('survived', flush=True)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       env={**__import__("os").environ, "PYTHONFAULTHANDLER": ""})
    assert p.stdout.split() == ["claimed", "1"], p.stderr
    assert p.returncode == -11
