"""The `unwind` handler kind: a plain C function, never annotated, covered by
`extable build --rule 'f=unwind'`, returns -EFAULT to its caller from a fault
anywhere in it, with the caller's stack pointer and callee-saved registers as
they were (issue 20).

The reference is the caller itself: tests/harness/unwind.c calls each function
from assembly that fills every callee-saved register with a canary and checks
them, the stack pointer and the value after the call; on x86-64 it also tries
a fault at every instruction of every function by single-stepping. Built with
gcc and clang at -O0/-O2/-O3, with and without frame pointers, natively on
x86-64 and under qemu-user on aarch64.
"""

from __future__ import annotations

import ctypes
import json
import platform
import re
import shutil
import struct
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import extable
import mcsafe
from conftest import FIXTURES, compile_so, run_cli
from extable.elf import ElfImage
from mcsafe import inject
from toolchain import missing

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "mcsafe" / "_core"
HARNESS = ROOT / "tests" / "harness" / "unwind.c"
FUNCS = FIXTURES / "unwind_funcs.c"
HOST = platform.machine()
PAGE = inject.PAGE

OPTS = ["-O0", "-O2", "-O3"]
FRAMES = ["-fno-omit-frame-pointer", "-fomit-frame-pointer"]


def toolchain(arch: str, cc: str) -> tuple[list[str], list[str], list[str]]:
    """(compiler for the functions, gcc for the rest, how to run) for arch; skips
    with the reason when this machine lacks one."""
    native = HOST == arch
    gcc = ["gcc"] if native else [f"{arch}-linux-gnu-gcc", "-static"]
    run = [] if native else [f"qemu-{arch}"]
    if cc == "gcc":
        compiler = gcc[:1]
    else:
        compiler = ["clang"] if native else ["clang", f"--target={arch}-linux-gnu"]
    absent = missing([compiler[0], gcc[0], *run])
    if absent:
        pytest.skip(absent)
    return compiler, gcc, run


@pytest.fixture(scope="module")
def core_objects(tmp_path_factory) -> dict[str, Path]:
    """The core and the harness, compiled once per machine with gcc -O2."""
    out: dict[str, Path] = {}
    d = tmp_path_factory.mktemp("unwind-core")

    def build(arch: str) -> Path:
        if arch in out:
            return out[arch]
        _, gcc, _ = toolchain(arch, "gcc")
        objs = d / arch
        objs.mkdir()
        inc = ["-I", extable.include_dir(), "-I", str(CORE), "-I", str(CORE / "arch" / arch)]
        for src in (HARNESS, CORE / "handler.c", CORE / "registry.c", CORE / "unwind.c",
                    CORE / "arch" / arch / "copy.c"):
            subprocess.run([gcc[0], "-O2", "-std=gnu11", *inc, "-c", str(src), "-o",
                            str(objs / f"{src.parent.name}_{src.stem}.o")], check=True)
        out[arch] = objs
        return objs
    return build        # type: ignore[return-value]


def build_harness(core_objects, tmp_path: Path, arch: str, cc: str, flags: list[str]
                  ) -> tuple[Path, list[str]]:
    compiler, gcc, run = toolchain(arch, cc)
    objs = core_objects(arch)
    funcs = tmp_path / "funcs.o"
    subprocess.run([*compiler, *flags, "-c", str(FUNCS), "-o", str(funcs)], check=True)
    exe = tmp_path / f"unwind_{arch}"
    subprocess.run([*gcc, "-o", str(exe), *map(str, sorted(objs.glob("*.o"))), str(funcs)],
                   check=True)
    return exe, run


def covered(exe: Path, names: list[str] | None = None) -> list[str]:
    """NAME:SIZE of the functions to test (all uw_* by default)."""
    rows = json.loads(run_cli("symbols", "--json", exe, check=True).stdout)
    return [f"{r['name']}:{r['size']}" for r in rows
            if r["name"].startswith("uw_") and (names is None or r["name"] in names)]


def run_harness(exe: Path, run: list[str], args: list[str]) -> str:
    p = subprocess.run([*run, str(exe), *args], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0 and " 0 failed" in p.stdout, p.stdout[-4000:] + p.stderr
    return p.stdout


NAMES = ["uw_first", "uw_leaf", "uw_saved", "uw_alloca", "uw_big", "uw_fp", "uw_asm_epilogue"]


@pytest.mark.parametrize("frame", FRAMES)
@pytest.mark.parametrize("opt", OPTS)
@pytest.mark.parametrize("cc", ["gcc", "clang"])
def test_every_instruction_unwinds_to_the_callers_state_x86_64(core_objects, tmp_path, cc,
                                                               opt, frame) -> None:
    exe, run = build_harness(core_objects, tmp_path, "x86_64", cc, [opt, frame])
    run_cli("build", exe, "--in-place", "--rule", "uw_*=unwind", check=True)
    assert run_cli("verify", exe).returncode == 0
    out = run_harness(exe, run, covered(exe))
    stepped = {m.group(1): int(m.group(2))
               for m in re.finditer(r"^(\w+): (\d+) instructions stepped", out, re.M)}
    assert set(stepped) == set(NAMES), out
    assert all(n > 0 for n in stepped.values()), stepped
    assert "faults claimed: 24 of 24" in out


@pytest.mark.parametrize("frame", FRAMES)
@pytest.mark.parametrize("opt", OPTS)
def test_real_faults_unwind_to_the_callers_state_aarch64_gcc(core_objects, tmp_path, opt,
                                                            frame) -> None:
    exe, run = build_harness(core_objects, tmp_path, "aarch64", "gcc", [opt, frame])
    run_cli("build", exe, "--in-place", "--rule", "uw_*=unwind", check=True)
    assert run_cli("verify", exe).returncode == 0
    out = run_harness(exe, run, [n.split(":")[0] + ":0" for n in covered(exe)])
    assert "faults claimed: 24 of 24" in out, out
    for name in NAMES:
        assert f"{name}: " in out


@pytest.mark.parametrize("opt", OPTS)
def test_clang14_aarch64_frames_are_refused_and_frameless_ones_unwind(core_objects, tmp_path,
                                                                     opt) -> None:
    """Clang 14 describes an arm64 frame only from the end of its prologue and not in
    its epilogue: a fault there would restore the caller's registers from the wrong
    places, so build refuses such a function, naming the instruction; functions
    without a frame are precise and are covered."""
    exe, run = build_harness(core_objects, tmp_path, "aarch64", "clang", [opt])
    proc = run_cli("build", exe, "--in-place", "--rule", "uw_saved=unwind")
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert "uw_saved" in proc.stderr and "not precise at every instruction" in proc.stderr
    frameless = [n for n in covered(exe, ["uw_first", "uw_leaf"])]
    rules = [a for n in frameless for a in ("--rule", n.split(":")[0] + "=unwind")]
    built = run_cli("build", exe, "--in-place", *rules)
    if built.returncode:                 # -O0 gives even these a frame
        assert "not precise at every instruction" in built.stderr, built.stderr
        return
    out = run_harness(exe, run, [n.split(":")[0] + ":0" for n in frameless])
    assert f"faults claimed: {2 + 4} of 6" in out, out


# -- the rows against readelf's own decoding of the same call-frame information ---------

def readelf_rows(so: Path, start: int, end: int, machine: str
                 ) -> list[tuple[int, str, dict[str, int]]]:
    """(address, CFA, {slot: offset}) per distinct row of `readelf -wF` for the FDE that
    starts at start, in [start, end), with our slot names. An FDE with no instructions
    prints no table: its one row is its CIE's."""
    rename = {"ra": "x30"} if machine == "aarch64" else {}
    rename.update({f"v{i}": f"d{i}" for i in range(8, 16)})
    text = subprocess.run(["readelf", "-wF", str(so)], capture_output=True, text=True,
                          check=True).stdout
    tables: dict[str, list[tuple[int, str, dict[str, int]]]] = {}
    fde_cie: dict[int, str] = {}
    key = None
    cols: list[str] = []
    for line in text.splitlines():
        head = re.match(r"([0-9a-f]{8}) [0-9a-f]+ [0-9a-f]+ (CIE|FDE)(?: cie=([0-9a-f]+) "
                        r"pc=([0-9a-f]+))?", line)
        if head:
            key = head.group(1)
            tables[key] = []
            if head.group(2) == "FDE":
                fde_cie[int(head.group(4), 16)] = head.group(3)
                key = f"fde:{int(head.group(4), 16)}"
                tables[key] = []
            continue
        parts = line.split()
        if key is None or not parts:
            continue
        if parts[0] == "LOC":
            cols = [rename.get(c, c) for c in parts[2:]]
            continue
        if re.fullmatch(r"[0-9a-f]{16}", parts[0]):
            saved = {c: -int(v[2:]) for c, v in zip(cols, parts[2:]) if v.startswith("c-")}
            tables[key].append((int(parts[0], 16), parts[1], saved))
    raw = tables.get(f"fde:{start}") or [(start, *tables[fde_cie[start]][-1][1:])]
    rows: list[tuple[int, str, dict[str, int]]] = []
    for pc, cfa, saved in raw:
        if pc < end and (not rows or rows[-1][1:] != (cfa, saved)):
            rows.append((pc, cfa, saved))
    return rows


@pytest.mark.parametrize("opt", OPTS)
@pytest.mark.parametrize("arch,cc", [("x86_64", "gcc"), ("x86_64", "clang"),
                                     ("aarch64", "gcc")])
def test_dumped_rows_are_readelfs_decoding_of_the_same_cfi(tmp_path, arch, cc, opt) -> None:
    compiler, _gcc, _run = toolchain(arch, cc)
    src = tmp_path / "reserve.c"
    src.write_text('#include "extable.h"\nEXTABLE_RESERVE(16384);\n')
    so = compile_so(FUNCS, tmp_path / "funcs.so", cc=compiler[0],
                    extra=[*compiler[1:], opt, "-fno-omit-frame-pointer", str(src)])
    out = tmp_path / "out.so"
    run_cli("build", so, "-o", out, "--rule", "uw_*=unwind", check=True)
    dump = json.loads(run_cli("dump", "--json", out, check=True).stdout)
    ours = [(r["start"], f"{r['cfa']['reg']}{r['cfa']['offset']:+d}", r["saved"])
            for e in dump["entries"] for r in e["unwind"]]
    theirs = []
    for f in json.loads(run_cli("symbols", "--json", out, check=True).stdout):
        if f["name"].startswith("uw_"):
            theirs += readelf_rows(out, f["start"], f["end"], arch)
    assert len(ours) > len(theirs) // 2 > 0
    assert sorted(ours) == sorted(theirs)


# -- from Python: ctypes and Cython, SIGSEGV and SIGBUS --------------------------------

@pytest.fixture(scope="module")
def csum_unwind(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("csum")
    so = compile_so(FIXTURES / "csum.c", d / "csum.so")
    run_cli("build", so, "--in-place", "--rule", "csum=unwind", check=True)
    return so


def test_a_plain_c_function_returns_efault_from_a_bad_page_through_ctypes(csum_unwind) -> None:
    import zlib

    lib = ctypes.CDLL(str(csum_unwind))
    lib.csum.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    lib.csum.restype = ctypes.c_int32
    mcsafe.register(csum_unwind)
    try:
        tried = 0
        for method in ("mprotect", "uffd"):        # SIGSEGV, and SIGBUS from a poisoned page
            if inject.available()[method] is not None:
                continue
            before = mcsafe.claimed_faults()
            with inject.region(method, 3, [1]) as r:
                r.buffer[:PAGE] = bytes(range(256)) * (PAGE // 256)
                assert lib.csum(r.address, PAGE) & 0xFFFFFFFF == \
                    zlib.adler32(bytes(r.buffer[:PAGE]))
                assert lib.csum(r.address, 2 * PAGE) == -14       # in the loop, mid-way
                assert lib.csum(r.address + PAGE, 1) == -14        # at the first access
                assert lib.csum(r.address + 2 * PAGE, 16) & 0xFFFFFFFF == \
                    zlib.adler32(bytes(r.buffer[2 * PAGE:2 * PAGE + 16]))
            assert mcsafe.claimed_faults() - before == 2
            tried += 1
        assert tried
    finally:
        assert mcsafe.unregister(csum_unwind)


def test_a_cython_module_calls_the_protected_function(csum_unwind, tmp_path) -> None:
    pyx = tmp_path / "use_csum.pyx"
    pyx.write_text(
        'cdef extern from *:\n'
        '    """\n'
        '    #include <stdint.h>\n'
        '    #include <stddef.h>\n'
        '    uint32_t csum(const unsigned char *p, size_t n);\n'
        '    """\n'
        '    unsigned int csum(const unsigned char *p, size_t n) nogil\n'
        'def checksum(size_t address, size_t n):\n'
        '    cdef int r\n'
        '    with nogil:\n'
        '        r = <int>csum(<const unsigned char *>address, n)\n'
        '    return r\n')
    subprocess.run([sys.executable, "-m", "cython", "-3", str(pyx), "-o",
                    str(tmp_path / "use_csum.c")], check=True, capture_output=True)
    ext = tmp_path / ("use_csum" + sysconfig.get_config_var("EXT_SUFFIX"))
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", f"-I{sysconfig.get_paths()['include']}",
                    str(tmp_path / "use_csum.c"), str(csum_unwind), f"-Wl,-rpath,{csum_unwind.parent}",
                    "-o", str(ext)], check=True, capture_output=True)
    code = (f"import sys; sys.path.insert(0, {str(tmp_path)!r})\n"
            "import mcsafe, use_csum\nfrom mcsafe import inject\n"
            f"mcsafe.register({str(csum_unwind)!r})\n"
            "with inject.region('mprotect', 2, [1]) as r:\n"
            "    print(use_csum.checksum(r.address, 10), use_csum.checksum(r.address, 5000))\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    ok, bad = p.stdout.split()
    assert bad == "-14" and int(ok) != -14


def test_a_fault_in_an_uncovered_callee_is_not_recovered(tmp_path) -> None:
    """csum_copy calls libc's memcpy: a fault inside memcpy is memcpy's, not covered,
    and kills the process as it would have without mcsafe (EXTENDING.md says so)."""
    src = tmp_path / "callee.c"
    src.write_text('#include <string.h>\n#include "extable.h"\nEXTABLE_RESERVE(4096);\n'
                   'long csum_copy(char *d, const char *s, size_t n)\n'
                   '{ memcpy(d, s, n); return d[0]; }\n')
    so = compile_so(src, tmp_path / "callee.so")
    run_cli("build", so, "--in-place", "--rule", "csum_copy=unwind", check=True)
    code = (f"import ctypes, mcsafe\nfrom mcsafe import inject\n"
            f"lib = ctypes.CDLL({str(so)!r}); mcsafe.register({str(so)!r})\n"
            "lib.csum_copy.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]\n"
            "with inject.region('mprotect', 2, [1]) as r:\n"
            "    buf = ctypes.create_string_buffer(8192)\n"
            "    print('start', flush=True)\n"
            "    lib.csum_copy(buf, r.address, 8000)\n"
            "    print('survived', flush=True)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=ROOT, env={**__import__("os").environ, "PYTHONFAULTHANDLER": ""})
    assert p.stdout.split() == ["start"] and p.returncode == -11, (p.returncode, p.stderr)


# -- what a row cannot say is refused at build time, with the reason ------------------

def refusal(proc: subprocess.CompletedProcess[str], *words: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for w in words:
        assert w in lines[0], lines[0]


def reserved(tmp_path: Path, body: str, *flags: str, cc: str = "gcc") -> Path:
    src = tmp_path / "f.c"
    src.write_text('#include <stddef.h>\n#include "extable.h"\nEXTABLE_RESERVE(4096);\n' + body)
    return compile_so(src, tmp_path / "f.so", cc=cc, extra=list(flags))


def test_no_call_frame_information_is_refused(tmp_path) -> None:
    so = reserved(tmp_path, "long f(const long *p) { return *p + 1; }\n",
                  "-fno-asynchronous-unwind-tables", "-fno-exceptions")
    refusal(run_cli("build", so, "-o", tmp_path / "o.so", "--rule", "f=unwind"),
            "f (", "cannot be unwound", "no call-frame information")
    assert not (tmp_path / "o.so").exists()


def test_stack_realignment_is_refused(tmp_path) -> None:
    # A 64-byte-aligned local and alloca: GCC realigns the stack through r10 (DRAP), and
    # the CFA and rbp's slot become DWARF expressions.
    so = reserved(tmp_path, "#include <alloca.h>\nvoid g(long *, char *);\n"
                  "long f(const long *p, size_t n) { long a[4] __attribute__((aligned(64))); "
                  "char *b = alloca(n); a[0] = *p; g(a, b); return a[1]; }\n", "-O2")
    refusal(run_cli("build", so, "-o", tmp_path / "o.so", "--rule", "f=unwind"),
            "f (", "cannot be unwound", "expression")


def test_a_signed_return_address_is_refused(tmp_path) -> None:
    if missing(["aarch64-linux-gnu-gcc"]):
        pytest.skip(missing(["aarch64-linux-gnu-gcc"]))
    so = reserved(tmp_path, "long g(long); long f(const long *p) { return g(*p) + 1; }\n",
                  "-O2", "-mbranch-protection=pac-ret", cc="aarch64-linux-gnu-gcc")
    refusal(run_cli("build", so, "-o", tmp_path / "o.so", "--rule", "f=unwind"),
            "pointer authentication")


@pytest.mark.parametrize("rule,words", [("csum=unwind@csum_fixup", "no landing pad"),
                                        ("csum=unwind,end=landing", "no landing pad")])
def test_an_unwind_rule_takes_no_landing_pad(tmp_path, rule, words) -> None:
    so = compile_so(FIXTURES / "csum.c", tmp_path / "csum.so")
    refusal(run_cli("build", so, "-o", tmp_path / "o.so", "--rule", rule), words)


def test_a_spec_file_gives_the_value_to_return(tmp_path) -> None:
    so = compile_so(FIXTURES / "csum.c", tmp_path / "csum.so")
    spec = tmp_path / "spec.toml"
    spec.write_text('[handlers.eio]\nkind = "unwind"\nreg = "rax"\nimm = -5\n'
                    '[[rules]]\nmatch = "csum"\nhandler = "eio"\n')
    run_cli("build", so, "--in-place", "--spec", spec, check=True)
    d = json.loads(run_cli("dump", "--json", so, check=True).stdout)
    assert d["descriptors"][0]["kind"] == "unwind" and d["descriptors"][0]["imm"] == -5
    code = (f"import ctypes, mcsafe\nfrom mcsafe import inject\n"
            f"lib = ctypes.CDLL({str(so)!r}); mcsafe.register({str(so)!r})\n"
            "lib.csum.argtypes = [ctypes.c_void_p, ctypes.c_size_t]; "
            "lib.csum.restype = ctypes.c_int\n"
            "with inject.region('mprotect', 2, [1]) as r:\n"
            "    print(lib.csum(r.address, 8192))\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0 and p.stdout.strip() == "-5", p.stderr


# -- damaged rows: verify and the runtime refuse them ---------------------------------

def row_offsets(so: Path) -> tuple[int, int, int]:
    """(file offset of the table, of its first row, the row size)."""
    with ElfImage(so) as image:
        sec = image.section("extable_table")
        blob = image.section_bytes(sec)
    _n, _nrows, _ips, _idx, rows_off, row_size = struct.unpack_from("<IIIIII", blob, 48)
    return sec.offset, sec.offset + rows_off, row_size


@pytest.mark.parametrize("how,words", [
    ("positive save", "not a negative multiple of 8"),
    ("ra unsaved", "return address"),
    ("bad cfa register", "register"),
    ("no row at the start", "no row at its start"),
])
def test_damaged_rows_fail_verify_and_are_never_published(csum_unwind, tmp_path, how,
                                                         words) -> None:
    bad = tmp_path / "bad.so"
    shutil.copyfile(csum_unwind, bad)
    table, row, size = row_offsets(bad)
    blob = bytearray(bad.read_bytes())
    if how == "positive save":
        struct.pack_into("<h", blob, row + 6, 8)             # rbx saved at CFA+8
    elif how == "ra unsaved":
        struct.pack_into("<h", blob, row + 6 + 2 * 6, 0)     # the return address slot
    elif how == "bad cfa register":
        blob[row + 4] = 40
    else:
        ips = struct.unpack_from("<I", blob, table + 56)[0]
        first = struct.unpack_from("<I", blob, table + ips)[0]
        struct.pack_into("<I", blob, table + ips, first + 1)
    bad.write_bytes(bytes(blob))
    proc = run_cli("verify", bad)
    assert proc.returncode == 1 and words in proc.stderr, proc.stderr
    code = (f"import ctypes, mcsafe\nctypes.CDLL({str(bad)!r})\n"
            f"try:\n    mcsafe.register({str(bad)!r}); print('registered')\n"
            "except mcsafe.TableError as e:\n    print('TableError:', e)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert p.stdout.startswith("TableError:"), p.stdout + p.stderr


def test_lookup_shows_the_row_in_effect(csum_unwind) -> None:
    d = json.loads(run_cli("lookup", "--json", csum_unwind, "csum+1", check=True).stdout)
    assert d["landing"] is None and d["row"]["cfa"]["reg"] == "rsp"
    assert d["row"]["saved"]["ra"] == -8
    text = run_cli("lookup", csum_unwind, "csum+1", check=True).stdout
    assert "(returns to its caller)" in text and "cfa=rsp+" in text


# -- the example and the demo ----------------------------------------------------------

def test_the_three_command_recipe_of_the_example(tmp_path) -> None:
    """examples/unwind: cc, extable build --add-section --rule, run.py (EXTENDING.md)."""
    so = tmp_path / "checksum.so"
    subprocess.run(["cc", "-O2", "-shared", "-fPIC", str(ROOT / "examples" / "unwind" /
                                                         "checksum.c"), "-o", str(so)],
                   check=True)
    run_cli("build", so, "--in-place", "--add-section", "--rule", "checksum=unwind", check=True)
    p = subprocess.run([sys.executable, str(ROOT / "examples" / "unwind" / "run.py"), str(so)],
                       capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    ours, theirs = re.findall(r"0x[0-9a-f]{8}", lines[0])
    assert ours == theirs
    assert lines[1].startswith("checksum(pages 0..1)  = -14 ")
    assert lines[2] == "faults recovered: 1"


def test_the_demo_shows_a_plain_c_function_returning_efault() -> None:
    p = subprocess.run([sys.executable, "-m", "mcsafe", "demo"], capture_output=True,
                       text=True, cwd=ROOT, timeout=300)
    assert p.returncode == 0, p.stderr
    part = p.stdout.split("== a plain C function")[1].split("\n== ")[0]
    assert "(returns to its caller)" in part
    assert "checksum(pages 0..1) = -14 " in part
