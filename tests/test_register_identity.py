"""Which object register() means: the loaded one, found by its handle, by an
address inside it, or by the file's identity (device and inode), never by
resolving a name again; the file a table is read from is the one mapped; and
anything that is not a regular file is refused before it is opened or loaded
(issue 17, items 9-11)."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import compile_so, run_cli
from test_extending import EXAMPLE, ROOT, child, table_of, unreserved_source

PROBE = """
    from mcsafe import inject
    lib.probe_read.argtypes, lib.probe_read.restype = [ctypes.c_void_p], ctypes.c_long
    with inject.region("mprotect", 2, [1]) as r:
        print("probe", lib.probe_read(r.address + inject.PAGE), flush=True)
"""


def built(source: Path, out: Path, *flags: str, extra: list[str] = ()) -> Path:
    compile_so(source, out, extra=list(extra))
    run_cli("build", out, "--in-place", *flags, check=True)
    return out


def test_a_library_found_through_the_search_path_is_registered_by_its_handle(
        tmp_path) -> None:
    # ctypes.CDLL("libprot.so") finds lib/libprot.so through LD_LIBRARY_PATH; the
    # current directory holds another libprot.so. register(L) must publish the
    # table of the object L is, not load and register the one the bare name
    # resolves to from here (which left L unprotected: death by SIGSEGV).
    (tmp_path / "lib").mkdir()
    (tmp_path / "cwd").mkdir()
    built(EXAMPLE, tmp_path / "lib" / "libprot.so")
    built(EXAMPLE, tmp_path / "cwd" / "libprot.so", extra=["-Wl,--defsym=variant=1"])
    code = textwrap.dedent("""
        import ctypes, mcsafe
        lib = ctypes.CDLL("libprot.so")
        mcsafe.register(lib)
    """) + textwrap.dedent(PROBE) + "print('unregistered', mcsafe.unregister(lib))\n"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=tmp_path / "cwd", timeout=60,
                       env={**os.environ, "LD_LIBRARY_PATH": str(tmp_path / "lib"),
                            "PYTHONPATH": str(ROOT), "PYTHONFAULTHANDLER": ""})
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["probe", "-14", "unregistered", "True"]


def test_register_through_a_hard_link_to_the_loaded_file(tmp_path) -> None:
    so = built(EXAMPLE, tmp_path / "protected.so")
    link = tmp_path / "link.so"
    os.link(so, link)
    p = child(f"""
        import ctypes, mcsafe
        lib = ctypes.CDLL({str(so)!r})
        before = mcsafe.published_table_count()
        mcsafe.register({str(link)!r})
        print("published", mcsafe.published_table_count() - before)
    """, PROBE, f"""
        print("unregistered", mcsafe.unregister({str(so)!r}), mcsafe.unregister({str(link)!r}))
    """)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["published", "1", "probe", "-14", "unregistered", "True",
                                "False"]


def test_an_extension_module_is_registered_by_an_address_inside_it() -> None:
    # The module object itself: its PyModuleDef lies in the loaded object. mcsafe's
    # own extension: its table is already published (pinned); this adds an owner.
    p = child("""
        import json, sys, mcsafe, mcsafe._mcsafe as ext
        before = mcsafe.published_table_count()
        mcsafe.register(ext)
        print(mcsafe.published_table_count() - before, mcsafe.unregister(ext), mcsafe.unregister(ext))
        try:
            mcsafe.register(sys.modules["json"])
        except mcsafe.TableError as exc:
            print(exc)
    """)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == ["0 True False",
                                     "module json is not an extension module: it has no "
                                     "loaded object of its own"]


def edited_copy(so: Path, out: Path, imm: int) -> Path:
    """A copy of a module whose table (not loaded: --add-section) says errno=imm."""
    blob = bytearray(so.read_bytes())
    off, _ = table_of(so)
    entries_off = struct.unpack_from("<I", blob, off + 24)[0]
    data = struct.unpack_from("<I", blob, off + entries_off + 12)[0]     # probe_read's
    assert data & 0xFF == 3 and data >> 16 == 0xFFF2                       # errno, -14
    struct.pack_into("<I", blob, off + entries_off + 12, (data & 0xFFFF) | (imm & 0xFFFF) << 16)
    out.write_bytes(bytes(blob))
    return out


def test_a_replaced_file_is_never_read_for_the_loaded_objects_table(tmp_path) -> None:
    # A module whose table is not loaded (extable build --add-section), loaded;
    # then its file replaced by rename with one whose table says -99. Program
    # headers and build-id are the same: only the file's identity tells. By path:
    # refused. By handle: the table is read from the file that is mapped (the
    # replaced one, still open to the kernel), and says -14.
    so = built(unreserved_source(tmp_path), tmp_path / "unreserved.so", "--add-section")
    edited = edited_copy(so, tmp_path / "edited.so", -99)
    p = child(f"""
        import ctypes, os, mcsafe
        lib = ctypes.CDLL({str(so)!r})
        os.replace({str(edited)!r}, {str(so)!r})            # new inode, same path
        try:
            mcsafe.register({str(so)!r})
        except mcsafe.TableError as exc:
            print("refused:", exc)
        mcsafe.register(lib)
    """, PROBE)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == [
        f"refused: {so}: the file is not the loaded object (another file is at its path "
        "now): was it replaced after it was loaded?",
        "probe -14"]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop CAP_SYS_ADMIN for a child "
                    "(the user running the tests is not root)")
def test_without_map_files_the_file_is_read_only_if_it_is_the_mapped_one(tmp_path) -> None:
    # /proc/self/map_files needs CAP_SYS_ADMIN (or CAP_CHECKPOINT_RESTORE): without
    # them the table is read from the path, and only once its device and inode are
    # the mapping's. A replaced file is then refused, whichever way it is named.
    so = built(unreserved_source(tmp_path), tmp_path / "unreserved.so", "--add-section")
    edited = edited_copy(so, tmp_path / "edited.so", -99)
    code = textwrap.dedent(f"""
        import ctypes, os, mcsafe
        lib = ctypes.CDLL({str(so)!r})
        mcsafe.register(lib)
    """) + textwrap.dedent(PROBE) + textwrap.dedent(f"""
        mcsafe.unregister(lib)
        os.replace({str(edited)!r}, {str(so)!r})
        try:
            mcsafe.register(lib)
        except mcsafe.TableError as exc:
            print("refused:", exc)
    """)
    p = subprocess.run(["setpriv", "--bounding-set", "-sys_admin,-checkpoint_restore",
                        "--inh-caps", "-all", sys.executable, "-c", code], capture_output=True,
                       text=True, cwd=ROOT, timeout=60, env={**os.environ, "PYTHONFAULTHANDLER": ""})
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == [
        "probe -14",
        f"refused: {so}: the file is not the loaded object (another file is at its path "
        "now): was it replaced after it was loaded?"]


@pytest.mark.parametrize("what", ["fifo", "directory", "missing"])
def test_anything_but_a_regular_file_is_refused_before_it_is_opened(tmp_path, what: str) -> None:
    path = tmp_path / f"{what}.so"
    if what == "fifo":
        os.mkfifo(path)                      # dlopen would wait for a writer forever
    elif what == "directory":
        path.mkdir()
    p = child(f"""
        import mcsafe
        try:
            mcsafe.register({str(path)!r})
        except mcsafe.TableError as exc:
            print(exc)
    """, timeout=30)
    assert p.returncode == 0, p.stderr
    why = {"fifo": "not a regular file (a FIFO)", "directory": "not a regular file (a directory)",
           "missing": "cannot read: No such file or directory"}[what]
    assert p.stdout.strip() == f"{path}: {why}"


@pytest.mark.parametrize("how", ["reserved", "add-section"])
def test_a_registered_object_stays_loaded_until_its_last_unregister(tmp_path, how: str) -> None:
    # register(A), then dlclose(A) by whoever loaded it, then B loaded: an object
    # built from the same source without a table, which the dynamic linker puts
    # where A was. Had A gone, its published table would name B's instructions and
    # claim B's fault (probe_read returned -14); B's fault must end the process as
    # without the registration. A stays mapped until unregister() drops it.
    source = EXAMPLE if how == "reserved" else unreserved_source(tmp_path)
    a = built(source, tmp_path / "a.so", *(["--add-section"] if how == "add-section" else []))
    b = compile_so(source, tmp_path / "b.so")
    mapped = (f"print('a mapped', any({str(a)!r} in line for line in open('/proc/self/maps')),"
              " flush=True)")
    load_b = f"lib = ctypes.CDLL({str(b)!r})\n"
    runs = []
    for register in (True, False):
        runs.append(child(f"""
            import _ctypes, ctypes, mcsafe
            a = ctypes.CDLL({str(a)!r})
            if {register}:
                mcsafe.register(a)
            _ctypes.dlclose(a._handle)
            {mapped}
        """, load_b, PROBE))
    (with_, without) = runs
    assert without.returncode == with_.returncode == -signal.SIGSEGV, with_.stdout
    assert with_.stdout == "a mapped True\n" and without.stdout == "a mapped False\n"
    p = child(f"""
        import _ctypes, ctypes, mcsafe
        a = ctypes.CDLL({str(a)!r})
        mcsafe.register(a)
        mcsafe.register(a)
        _ctypes.dlclose(a._handle)
        print(mcsafe.unregister(a), end=" ")
        {mapped}
        print(mcsafe.unregister(a), end=" ")
        {mapped}
    """)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == ["True a mapped True", "True a mapped False"]
