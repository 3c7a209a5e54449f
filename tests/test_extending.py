"""Other modules' tables: the docs/EXTENDING.md round trip, refused tables, and
a Cython module that cimports the nogil copy."""

from __future__ import annotations

import ctypes
import re
import shutil
import struct
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import mcsafe
from conftest import TABLE_DAMAGE, compile_so, damage_table, run_cli
from conftest import python_child as child
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
    before = mcsafe.published_table_count()
    mcsafe.register(protected)
    assert mcsafe.published_table_count() == before + 1
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
    assert mcsafe.published_table_count() == before
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
    *((how, TABLE_DAMAGE[how]) for how in ("magic", "machine", "outside", "overlapping")),
    ("unbuilt", "bad magic")])
def test_bad_tables_are_refused_and_never_published(tmp_path, how: str, words: str) -> None:
    so = compile_so(EXAMPLE, tmp_path / f"bad_{how}.so")
    if how != "unbuilt":
        run_cli("build", so, "--in-place", check=True)
        damage_table(so, how)
    before = mcsafe.published_table_count()
    with pytest.raises(mcsafe.TableError, match=words) as info:
        mcsafe.register(so)
    assert str(so) in str(info.value)
    assert mcsafe.published_table_count() == before


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


# register() against files that are not what their path says, tables outside the
# object, tables written after registration, and several owners. Cases that
# crashed the old code run in a child.

FIXTURES = ROOT / "tests" / "fixtures"


def patch_section(so: Path, *, addr: int | None = None, size: int | None = None) -> None:
    """Rewrite the extable_table section header's sh_addr / sh_size in place."""
    with ElfImage(so) as image:
        sec = image.section("extable_table")
    from elftools.elf.elffile import ELFFile

    with open(so, "rb") as f:
        elf = ELFFile(f)
        index = next(i for i, s in enumerate(elf.iter_sections()) if s.name == "extable_table")
        at = elf.header["e_shoff"] + index * elf.header["e_shentsize"]
    blob = bytearray(so.read_bytes())
    if addr is not None:
        struct.pack_into("<Q", blob, at + 16, addr)
    if size is not None:
        struct.pack_into("<Q", blob, at + 32, size)
        struct.pack_into("<I", blob, sec.offset + 24, size // 2)   # entries_off, far away
    so.write_bytes(bytes(blob))


def outside(so: Path) -> str:
    """The refusal of a table that is not (wholly) in the object's loaded memory."""
    return (f"TableError: {re.escape(str(so))}: table at 0x[0-9a-f]+ (is not inside a loaded "
            r"object|\(\d+ bytes\) is not inside one loaded, readable segment of its object)$")


REGISTER_AND_REPORT = """
    import ctypes, mcsafe
    try:
        mcsafe.register({so!r})
        print("registered")
    except mcsafe.TableError as e:
        print("TableError:", e)
"""


def test_file_replaced_on_disk_by_another_build_is_refused(protected, tmp_path) -> None:
    other = compile_so(EXAMPLE, tmp_path / "other.so", extra=["-Wl,--defsym=variant=1"])
    run_cli("build", other, "--in-place", check=True)
    p = child(f"""
        import ctypes, os
        lib = ctypes.CDLL({str(protected)!r})
        os.replace({str(other)!r}, {str(protected)!r})       # new inode, same path
    """, REGISTER_AND_REPORT.format(so=str(protected)))
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith(f"TableError: {protected}: the file is not the loaded object ("), \
        p.stdout


def test_file_replaced_by_one_whose_table_is_elsewhere_is_refused(protected, tmp_path) -> None:
    # Same build-id and program headers, but its table section names an address
    # the loaded object does not have: another file (device and inode), refused
    # before any of it is read.
    other = tmp_path / "moved.so"
    shutil.copyfile(protected, other)
    patch_section(other, addr=0x40000000)
    p = child(f"""
        import ctypes, os
        lib = ctypes.CDLL({str(protected)!r})
        os.replace({str(other)!r}, {str(protected)!r})
    """, REGISTER_AND_REPORT.format(so=str(protected)))
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == (f"TableError: {protected}: the file is not the loaded object "
                                "(another file is at its path now): was it replaced after it "
                                "was loaded?")


@pytest.mark.parametrize("how", ["unmapped address", "past the object"])
def test_table_section_outside_the_loaded_object_is_refused(protected, how: str) -> None:
    if how == "unmapped address":
        patch_section(protected, addr=0x40000000)
    else:
        patch_section(protected, size=1 << 24)
    p = child(REGISTER_AND_REPORT.format(so=str(protected)))
    assert p.returncode == 0, p.stderr
    assert re.match(outside(protected), p.stdout), p.stdout


def test_writable_table_written_after_registration_changes_nothing(tmp_path) -> None:
    so = compile_so(FIXTURES / "writable_table.c", tmp_path / "writable.so")
    run_cli("build", so, "--in-place", check=True)
    p = child(f"""
        import ctypes, struct, mcsafe
        from mcsafe import inject
        lib = ctypes.CDLL({str(so)!r})
        lib.probe_read.argtypes, lib.probe_read.restype = [ctypes.c_void_p], ctypes.c_long
        mcsafe.register({str(so)!r})
        table = ctypes.addressof(ctypes.c_ubyte.in_dll(lib, "writable_table"))
        with inject.region("mprotect", 2, [1]) as r:
            print(lib.probe_read(r.address + inject.PAGE))
            # the entry's data word: errno, imm -14 -> -99
            ctypes.memmove(table + 48 + 12, struct.pack("<I", 0xff9d0003), 4)
            print(lib.probe_read(r.address + inject.PAGE))
    """)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["-14", "-14"]


def unreserved_source(tmp_path: Path) -> Path:
    """The example without EXTABLE_RESERVE: its table can only be added with
    `extable build --add-section`, into a section that is not loaded."""
    text = EXAMPLE.read_text()
    assert "EXTABLE_RESERVE(512);" in text
    out = tmp_path / "unreserved.c"
    out.write_text(text.replace("EXTABLE_RESERVE(512);", ""))
    return out


def test_table_added_as_a_non_loaded_section_is_read_from_the_proved_file(tmp_path) -> None:
    so = compile_so(unreserved_source(tmp_path), tmp_path / "unreserved.so")
    run_cli("build", so, "--in-place", "--add-section", check=True)
    lib = load(so)
    before = mcsafe.published_table_count()
    mcsafe.register(so)
    try:
        assert mcsafe.published_table_count() == before + 1
        with inject.region("mprotect", 2, [1]) as r:
            assert lib.probe_read(r.address + PAGE + 1) == -14
            left = ctypes.c_size_t(0)
            r.buffer[PAGE - 2:PAGE] = bytes([5, 6])
            assert lib.sum_bytes(r.address + PAGE - 2, 10, ctypes.byref(left)) == 11
            assert left.value == 8
    finally:
        assert mcsafe.unregister(so)
    assert mcsafe.published_table_count() == before


@pytest.mark.parametrize("replaced", [False, True])
def test_file_table_of_an_object_without_build_id_needs_the_loaded_code(
        tmp_path, replaced: bool) -> None:
    # No build-id: two builds whose code differs by one instruction have the same
    # program headers, so neither tells the file that is loaded from one put in
    # its place; the file's identity (device and inode) does. The table is read
    # from the file: it must be the loaded object's, or nothing is published.
    unreserved = unreserved_source(tmp_path)
    source = unreserved.read_text()
    other = tmp_path / "other.c"
    other.write_text(source.replace("xor %eax, %eax", "xor %ecx, %ecx", 1))
    so, twin = tmp_path / "nobuildid.so", tmp_path / "twin.so"
    for src, out in ((unreserved, so), (other, twin)):
        compile_so(src, out, extra=["-Wl,--build-id=none"])
        run_cli("build", out, "--in-place", "--add-section", check=True)
    assert so.read_bytes() != twin.read_bytes()
    p = child(f"""
        import ctypes, os
        lib = ctypes.CDLL({str(so)!r})
        if {replaced}:
            os.replace({str(twin)!r}, {str(so)!r})       # new inode, same path
    """, REGISTER_AND_REPORT.format(so=str(so)))
    assert p.returncode == 0, p.stderr
    if replaced:
        assert p.stdout.strip() == (
            f"TableError: {so}: the file is not the loaded object (another file is at its "
            "path now): was it replaced after it was loaded?")
    else:
        assert p.stdout.strip() == "registered"


def test_each_registration_is_an_owner(protected) -> None:
    load(protected)
    before = mcsafe.published_table_count()
    mcsafe.register(protected)
    mcsafe.register(str(protected))
    assert mcsafe.published_table_count() == before + 1
    assert mcsafe.unregister(protected)
    assert mcsafe.published_table_count() == before + 1           # one owner left
    assert mcsafe.unregister(protected)
    assert mcsafe.published_table_count() == before
    assert not mcsafe.unregister(protected)


def test_register_unregister_churn_frees_what_it_retires(protected) -> None:
    # Each unregister retires a private copy and an array of modules; they are
    # freed once no handler is inside a lookup, so a loop of register and
    # unregister does not grow without bound (it took 5 KiB a cycle), while
    # another thread's copies fault through the lookup all along.
    p = child(f"""
        import ctypes, threading, mcsafe
        from mcsafe import _mcsafe, inject, registry
        from elftools.elf.elffile import ELFFile
        so = {str(protected)!r}
        ctypes.CDLL(so)
        mcsafe.register(so)
        key = registry._key_of(so)
        with open(so, "rb") as f:
            size = ELFFile(f).get_section_by_name("extable_table")["sh_size"]
        assert _mcsafe._unregister_table(key)
        # what the copies return is kept in a set, not a list: a list of a copy's
        # count each grew by 36 bytes a copy, a megabyte a window when this thread
        # got the CPU (a flaky "grew" under load, none of it the registry's)
        stop, copied, copies = False, set(), [0]
        def fault():
            with inject.region("mprotect", 2, [1]) as r:
                while not stop:
                    copied.add(mcsafe.copy(bytearray(r.size), r.buffer))
                    copies[0] += 1
        t = threading.Thread(target=fault)
        t.start()
        def rss():
            return int(open("/proc/self/statm").read().split()[1]) * 4096
        for window in range(3):
            before = rss()
            for _ in range(4000):
                _mcsafe._register_table(key, size, "churn")
                assert _mcsafe._unregister_table(key)
        stop = True
        t.join()
        print("grew", rss() - before > 1 << 20, "copies", copies[0] > 0,
              copied == {{inject.PAGE}}, mcsafe.published_table_count())
    """)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["grew", "False", "copies", "True", "True", "1"]


def test_own_table_can_never_be_unregistered() -> None:
    p = child("""
        import mcsafe
        from mcsafe import inject
        n = mcsafe.published_table_count()
        mcsafe.register(mcsafe._mcsafe)
        print(mcsafe.unregister(mcsafe._mcsafe), mcsafe.unregister(mcsafe._mcsafe),
              mcsafe.published_table_count() == n, mcsafe.table_status(), flush=True)
        with inject.region("uffd", 3, [1]) as r:
            print("copied", mcsafe.copy(bytearray(r.size), r.buffer), flush=True)
    """)
    assert p.stdout.split() == ["True", "False", "True", "ok", "copied", "4096"], p.stderr
    assert p.returncode == 0


def test_fork_while_another_thread_registers(protected) -> None:
    # A thread registers and unregisters in a loop while the main thread forks;
    # each child's register() must complete (a lock held across I/O in the parent
    # would stay locked in the child forever).
    p = child(f"""
        import os, signal, threading, time, warnings, mcsafe
        warnings.simplefilter("ignore", DeprecationWarning)
        so = {str(protected)!r}
        stop = False
        def churn():
            while not stop:
                mcsafe.register(so)
                mcsafe.unregister(so)
        t = threading.Thread(target=churn)
        t.start()
        ok = 0
        for i in range(20):
            time.sleep(0.003 * (i % 5))
            pid = os.fork()
            if pid == 0:
                signal.alarm(10)
                mcsafe.register(so)
                os._exit(0)
            ok += os.waitpid(pid, 0)[1] == 0
        stop = True
        t.join()
        print("children ok", ok)
    """, timeout=240)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["children", "ok", "20"]


def test_fork_while_another_thread_first_imports_pyelftools(protected) -> None:
    # The first register() imports pyelftools; a fork in the middle of that
    # import used to leave the child's import of it waiting forever on the
    # module's lock. fork() now waits for that import to finish. An import hook
    # holds the thread inside the import (holding the module's lock) until a
    # fork is under way: the fork starts while the import is certainly in progress.
    p = child(f"""
        import os, signal, sys, threading, mcsafe
        assert "elftools.elf.elffile" not in sys.modules   # the import below is the first
        so = {str(protected)!r}
        inside, forking = threading.Event(), threading.Event()

        class HoldTheImport:
            @staticmethod
            def find_spec(name, path=None, target=None):
                if name == "elftools.elf.elffile" and not inside.is_set():
                    inside.set()
                    forking.wait()          # the fork has begun: the import goes on
                return None

        sys.meta_path.insert(0, HoldTheImport)
        os.register_at_fork(before=forking.set)    # runs before mcsafe's own hook
        t = threading.Thread(target=mcsafe.register, args=(so,))
        t.start()
        inside.wait()
        pid = os.fork()
        if pid == 0:
            signal.alarm(10)
            mcsafe.register(so)
            os._exit(0)
        t.join()
        print("child", os.waitpid(pid, 0)[1], flush=True)
    """)
    assert p.stdout.split() == ["child", "0"], p.stdout + p.stderr


X86_ONLY = pytest.mark.skipif(__import__("platform").machine() != "x86_64",
                              reason="the stack pointer has a register number only on x86-64 "
                                     "(aarch64's sp is not one of x0..x30)")


# sum_load's descriptor: kind, flags, side, reg (count), src, dst, rec at offsets 0..6
COUNT, SRC = (6, 7) if __import__("platform").machine() == "x86_64" else (1, 3)


@pytest.mark.parametrize("how,words", [
    pytest.param("rec_sp", "rec register rsp is the stack pointer", marks=X86_ONLY),
    pytest.param("errno_sp", "errno register", marks=X86_ONLY),
    pytest.param("count_sp", "short_copy count register rsp is the stack pointer",
                 marks=X86_ONLY),
    ("no_buffers", "names neither a src nor a dst register"),
    # the record written through the copy's own registers (issue 17, item 12)
    ("rec_src", "is also the src register (the handler would write the fault record "
                "through the source pointer that faulted)"),
    ("rec_count", "is also the count register"),
    ("rec_dst", "is also the dst register (the handler would write the fault record over "
                "the destination the copy reports as copied)"),
])
def test_dangerous_descriptors_are_refused_by_verify_and_register(protected, how: str,
                                                                   words: str) -> None:
    off, _ = table_of(protected)
    blob = bytearray(protected.read_bytes())
    entries_off, descs_off = struct.unpack_from("<II", blob, off + 24)
    if how == "rec_sp":
        blob[off + descs_off + 6] = 4                     # rec = rsp
    elif how == "errno_sp":
        data = struct.unpack_from("<I", blob, off + entries_off + 12)[0]   # probe_read's
        assert data & 0xFF == 3
        struct.pack_into("<I", blob, off + entries_off + 12, (data & ~0xF00) | (4 << 8))
    elif how == "count_sp":
        blob[off + descs_off + 3] = 4                     # count = rsp
    elif how == "rec_src":
        blob[off + descs_off + 6] = SRC
    elif how == "rec_count":
        blob[off + descs_off + 6] = COUNT
    elif how == "rec_dst":
        blob[off + descs_off + 5] = blob[off + descs_off + 6] = 2     # dst = rec = rdx / x2
    else:
        blob[off + descs_off + 4] = 0xFF                  # src = none, dst = none
    protected.write_bytes(bytes(blob))
    v = run_cli("verify", protected)
    assert v.returncode != 0 and words in v.stderr, v.stderr
    assert len(v.stderr.strip().splitlines()) == 1
    before = mcsafe.published_table_count()
    with pytest.raises(mcsafe.TableError, match=re.escape(words)):
        mcsafe.register(protected)
    assert mcsafe.published_table_count() == before


def test_build_refuses_a_record_naming_the_copys_source(tmp_path) -> None:
    src = tmp_path / "rec_src.c"
    text, n = re.subn(r"src=(\d+), name=sum_load", r"src=\1, rec=\1, name=sum_load",
                      EXAMPLE.read_text())
    assert n == 2                         # x86-64 and aarch64
    src.write_text(text)
    so = compile_so(src, tmp_path / "rec_src.so")
    b = run_cli("build", so, "--in-place")
    assert b.returncode != 0 and "is also the src register" in b.stderr, b.stderr
    assert len(b.stderr.strip().splitlines()) == 1


@X86_ONLY
def test_build_refuses_a_record_naming_the_stack_pointer(tmp_path) -> None:
    src = tmp_path / "bad_rec.c"
    src.write_text(EXAMPLE.read_text().replace("reg=6, src=7, name=sum_load",
                                               "reg=6, src=7, rec=4, name=sum_load"))
    so = compile_so(src, tmp_path / "bad_rec.so")
    b = run_cli("build", so, "--in-place")
    assert b.returncode != 0 and "rec register rsp is the stack pointer" in b.stderr, b.stderr


def test_file_truncated_under_the_loaded_object_is_refused_not_a_crash(protected) -> None:
    # Truncating the file unmaps the loaded object's pages: its program headers in
    # memory now fault. register() reads them with mcsafe's own copy, so it refuses.
    # (Everything is imported first: the dynamic linker itself would fault on the
    # truncated object's symbol tables in any later dlopen.)
    p = child(f"""
        import ctypes, os, mcsafe, elftools.elf.elffile
        lib = ctypes.CDLL({str(protected)!r})
        os.truncate({str(protected)!r}, 0)
    """, REGISTER_AND_REPORT.format(so=str(protected)), """
    import sys
    sys.stdout.flush()
    os._exit(0)     # exit handlers would run the truncated object's destructors
    """)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith(f"TableError: {protected}: "), p.stdout
