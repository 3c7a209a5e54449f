"""``build --add-section`` output survives the rest of a build: strip, objcopy, patchelf.

Each real library or executable on the machine is given a table with
``--add-section``, then post-processed by the tools a packaging pipeline runs,
and after each step a program that uses the result must still work and
``extable verify`` must still find the table. The loader's view of the file
(program headers, loaded section headers, the dynamic section) is compared with
readelf, independently of the writer's own check, and ``eu-elflint --gnu-ld``
must report nothing the input did not already have.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FIXTURES, compile_so, run_cli

LIBDIR = Path("/usr/lib/x86_64-linux-gnu")
TOOLS = ("strip", "objcopy", "patchelf", "eu-elflint", "eu-strip", "readelf", "gcc")

#: (library, C or C++ program that uses it, compiler, its link flag)
PROGRAMS = {
    "libstdc++.so.6": ("#include <iostream>\n#include <string>\n#include <vector>\n"
                       "int main() { std::vector<std::string> v(3, \"ok\");\n"
                       "  for (auto &s : v) std::cout << s; std::cout << std::endl; }\n",
                       "g++", []),
    "libcrypto.so.3": ("#include <openssl/sha.h>\n#include <stdio.h>\n"
                       "int main(void) { unsigned char d[32]; SHA256((const unsigned char *)"
                       "\"abc\", 3, d);\n  for (int i = 0; i < 4; i++) printf(\"%02x\", d[i]);"
                       "\n  puts(\"\"); return 0; }\n", "gcc", ["-lcrypto"]),
    "libz.so.1": ("#include <zlib.h>\n#include <stdio.h>\n#include <string.h>\n"
                  "int main(void) { unsigned char a[64], b[64]; uLongf n = 64, m = 64;\n"
                  "  compress(a, &n, (const Bytef *)\"ok ok ok ok\", 12);\n"
                  "  uncompress(b, &m, a, n); puts((char *)b); return 0; }\n", "gcc", ["-lz"]),
}
EXPECTED = {"libstdc++.so.6": "okokok", "libcrypto.so.3": "ba7816bf", "libz.so.1": "ok ok ok ok"}


def need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed on this machine "
                    "(scripts/setup.sh installs elfutils and patchelf)")


def loader_view(path: Path) -> tuple[list[str], list[str], str]:
    """readelf's program headers, SHF_ALLOC section headers (no offset for NOBITS) and the
    dynamic section, with the file name taken out."""
    ph = subprocess.run(["readelf", "-lW", str(path)], capture_output=True, text=True,
                        check=True).stdout
    ph_lines = [ln for ln in ph.splitlines() if ln.strip() and not ln.startswith("Elf file")
                and "There are" not in ln]
    sh = subprocess.run(["readelf", "-SW", str(path)], capture_output=True, text=True,
                        check=True).stdout
    alloc = []
    for ln in sh.splitlines():
        m = re.match(r"\s*\[\s*\d+\]\s+(\S+)\s+(\S+)\s+([0-9a-f]+) ([0-9a-f]+) ([0-9a-f]+) "
                     r"([0-9a-f]+)\s+(\S*)\s", ln)
        if m and "A" in m.group(7):
            name, typ, addr, off, size, _es, flags = m.groups()
            alloc.append(" ".join((name, typ, addr, "-" if typ == "NOBITS" else off, size,
                                   flags)))
    dyn = subprocess.run(["readelf", "-dW", str(path)], capture_output=True, text=True,
                         check=True).stdout
    return ph_lines, alloc, dyn


def elflint(path: Path) -> list[str]:
    proc = subprocess.run(["eu-elflint", "--gnu-ld", str(path)], capture_output=True,
                          text=True)
    return [ln.replace(str(path), "FILE") for ln in (proc.stdout + proc.stderr).splitlines()
            if "No errors" not in ln]


def add_table(src: Path, out: Path) -> None:
    """A table covering every function, all landing at the first function."""
    funcs = json.loads(run_cli("symbols", "--json", src, check=True).stdout)
    pad = min((f["start"], f["name"].split("@")[0]) for f in funcs)[1]
    run_cli("build", src, "-o", out, "--add-section", "--rule", f"*=fixup@{pad}", check=True)


def verify(path: Path) -> str:
    proc = run_cli("verify", path)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def post_process(src: Path, work: Path, soname: str, patchelf: bool = True) -> dict[str, Path]:
    """The table-carrying file after each tool, each in its own folder under its soname."""
    out: dict[str, Path] = {}
    steps = [("strip", ["strip", "--strip-unneeded", "-o", "{dst}", "{src}"]),
             ("objcopy", ["objcopy", "{src}", "{dst}"])] + ([("patchelf", None)] if patchelf
                                                          else [])
    for step, cmd in steps:
        folder = work / step
        folder.mkdir()
        dst = folder / soname
        if cmd is None:
            shutil.copy(src, dst)
            subprocess.run(["patchelf", "--set-rpath", "/nonexistent/rpath", str(dst)],
                           check=True)
        else:
            subprocess.run([c.format(src=src, dst=dst) for c in cmd], check=True)
        out[step] = dst
    return out


@pytest.mark.parametrize("soname", sorted(PROGRAMS))
def test_library_survives_strip_objcopy_patchelf(soname: str, tmp_path: Path) -> None:
    need(*TOOLS)
    lib = LIBDIR / soname
    source, cc, flags = PROGRAMS[soname]
    if not lib.exists() or shutil.which(cc) is None:
        pytest.skip(f"{lib} or {cc} is not on this machine")
    prog = tmp_path / "prog"
    (tmp_path / "prog.c").write_text(source)
    lang = ["-x", "c++"] if cc == "g++" else []
    if subprocess.run([cc, *lang, str(tmp_path / "prog.c"), "-o", str(prog), *flags]
                      ).returncode:
        pytest.skip(f"cannot build a program against {soname} (headers missing)")

    built = tmp_path / soname
    add_table(lib, built)
    assert loader_view(built) == loader_view(lib)
    assert elflint(built) == elflint(lib)
    verify(built)
    for step, path in post_process(built, tmp_path, soname).items():
        assert "ok" in verify(path), step
        run = subprocess.run([str(prog)], capture_output=True, text=True,
                             env={**os.environ, "LD_LIBRARY_PATH": str(path.parent)})
        assert run.returncode == 0, f"after {step}: {soname} killed the program ({run})"
        assert run.stdout.strip() == EXPECTED[soname], step
        # the program really loaded the post-processed copy
        maps = subprocess.run(["ldd", str(prog)], capture_output=True, text=True,
                              env={**os.environ, "LD_LIBRARY_PATH": str(path.parent)}).stdout
        assert str(path) in maps, step


def static_binary(tmp_path: Path) -> Path:
    src = tmp_path / "static.c"
    src.write_text('#include <stdio.h>\nint main(void) { puts("static ok"); return 0; }\n')
    exe = tmp_path / "static"
    if subprocess.run(["gcc", "-O2", "-static", str(src), "-o", str(exe)]).returncode:
        pytest.skip("gcc -static fails here (no libc.a)")
    return exe


@pytest.mark.parametrize("which", ["bash", "python3", "static"])
def test_executable_survives_strip_objcopy_patchelf(which: str, tmp_path: Path) -> None:
    need(*TOOLS)
    if which == "static":
        exe, args, expect = static_binary(tmp_path), [], "static ok"
    else:
        found = shutil.which(which, path="/usr/bin:/bin")
        if found is None:
            pytest.skip(f"no {which} in /usr/bin on this machine")
        exe = Path(os.path.realpath(found))
        args = ["-c", "echo shell ok"] if which == "bash" else ["-c", "print('python ok')"]
        expect = "shell ok" if which == "bash" else "python ok"
    built = tmp_path / "built"
    add_table(exe, built)
    assert loader_view(built) == loader_view(exe)
    assert elflint(built) == elflint(exe)
    # patchelf refuses a static binary (no .dynamic to put an rpath in)
    steps = post_process(built, tmp_path, "exe", patchelf=which != "static")
    for step, path in {"built": built, **steps}.items():
        verify(path)
        run = subprocess.run([str(path), *args], capture_output=True, text=True)
        assert (run.returncode, run.stdout.strip()) == (0, expect), (step, run)


def test_tools_that_drop_the_table_and_what_verify_says(built, tmp_path) -> None:
    need("eu-strip", "objcopy")
    out = tmp_path / "out.so"
    run_cli("build", built["plain"], "-o", out, "--add-section", "--rule", "copy_word=errno",
            check=True)
    dropped = {"eu-strip": ["eu-strip", "-o", str(tmp_path / "a.so"), str(out)],
               "objcopy --remove-section": ["objcopy", "--remove-section", "extable_table",
                                            str(out), str(tmp_path / "b.so")]}
    for name, cmd in dropped.items():
        subprocess.run(cmd, check=True)
        path = Path(cmd[-1] if name != "eu-strip" else cmd[2])
        proc = run_cli("verify", path)
        assert proc.returncode == 2, name
        assert len(proc.stderr.splitlines()) == 1
        assert "no table was built" in proc.stderr and "stripped" in proc.stderr, proc.stderr


def test_numpy_multiarray_umath_with_sections_after_shstrtab(tmp_path) -> None:
    import numpy

    core = Path(numpy.__file__).parent
    found = sorted(core.glob("_core/_multiarray_umath*.so")) or sorted(
        core.glob("core/_multiarray_umath*.so"))
    if not found:
        pytest.skip(f"numpy {numpy.__version__} here has no _multiarray_umath*.so")
    so = found[0]
    args = ["--add-section", "--rule", "PyInit_*=fixup@PyInit__multiarray_umath+0x4,end=landing"]
    a, b = tmp_path / "a.so", tmp_path / "b.so"
    run_cli("build", so, "-o", a, *args, check=True)
    run_cli("build", so, "-o", b, *args, check=True)
    assert a.read_bytes() == b.read_bytes()
    assert loader_view(a) == loader_view(so)
    d = json.loads(run_cli("dump", "--json", a, check=True).stdout)
    (e,) = d["entries"]
    assert e["start_symbol"] == "PyInit__multiarray_umath"
    assert e["landing_symbol"] == "PyInit__multiarray_umath+0x4"
    assert e["end"] == e["landing"] == e["start"] + 4
    # the result still imports as numpy's core (in a child, from a copy of numpy)
    copy = tmp_path / "pkg"
    shutil.copytree(Path(numpy.__file__).parent, copy / "numpy", symlinks=True)
    libs = Path(numpy.__file__).parent.parent / "numpy.libs"     # a wheel's bundled OpenBLAS
    if libs.is_dir():
        shutil.copytree(libs, copy / "numpy.libs")
    shutil.copy(a, copy / "numpy" / so.relative_to(core))
    subprocess.run(["strip", "--strip-unneeded", str(copy / "numpy" / so.relative_to(core))],
                   check=True)
    proc = subprocess.run([sys.executable, "-c", "import numpy; print(numpy.arange(4).sum())"],
                          capture_output=True, text=True, env={**os.environ,
                                                               "PYTHONPATH": str(copy)})
    assert proc.stdout.strip() == "6", proc.stderr


def test_separate_debug_file_is_refused_with_one_stable_reason(built, tmp_path) -> None:
    need("objcopy")
    debug = tmp_path / "plain.debug"
    subprocess.run(["objcopy", "--only-keep-debug", str(built["plain"]), str(debug)],
                   check=True)
    texts = set()
    for i in range(2):
        out = tmp_path / f"o{i}.so"
        proc = run_cli("build", debug, "-o", out, "--add-section", "--rule", "copy_word=errno")
        assert proc.returncode == 2 and not out.exists()
        texts.add(proc.stderr)
    (text,) = texts
    assert "separate debug file" in text and len(text.splitlines()) == 1
    # its symbols still list (the point of a debug file)
    names = {f["name"] for f in json.loads(run_cli("symbols", "--json", debug,
                                                   check=True).stdout)}
    assert "copy_word" in names


def big_file(tmp_path: Path, mib: int) -> Path:
    """A real shared object made ``mib`` MiB large by a non-loaded section of data."""
    filler = tmp_path / "filler"
    with open(filler, "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(64) * (1 << 14))
    so = compile_so(FIXTURES / "plain.c", tmp_path / "small.so")
    big = tmp_path / "big.so"
    subprocess.run(["objcopy", "--add-section", f".big={filler}", str(so), str(big)],
                   check=True)
    filler.unlink()
    return big


def build_rss_kib(src: Path, out: Path) -> int:
    """Peak RSS of ``extable build --add-section`` run in a child on src."""
    code = ("import resource, sys; from extable.cli import main; rc = main(sys.argv[1:]); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, "build", str(src), "-o", str(out),
                           "--add-section", "--rule", "copy_word=errno"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout.split()[-1])


def test_add_section_streams_a_large_file(tmp_path) -> None:
    """Memory grows by a small fraction of the file, and the file's bytes are kept exactly."""
    need("objcopy")
    big = big_file(tmp_path, 256)
    small = compile_so(FIXTURES / "plain.c", tmp_path / "plain.so")
    out = tmp_path / "out.so"
    base = build_rss_kib(small, tmp_path / "small-out.so")
    grown = build_rss_kib(big, out) - base
    size = big.stat().st_size
    assert grown * 1024 < size / 16, (grown, base, size)
    assert _same_but_header(big, out)
    verify(out)


def _same_but_header(a: Path, b: Path) -> bool:
    """The output equals the input except e_shoff/e_shnum in the ELF header."""
    with open(a, "rb") as fa, open(b, "rb") as fb:
        ha, hb = bytearray(fa.read(64)), bytearray(fb.read(64))
        for at, n in ((0x28, 8), (0x3C, 2)):
            ha[at:at + n] = hb[at:at + n]
        if ha != hb:
            return False
        while True:
            x, y = fa.read(1 << 20), fb.read(1 << 20)
            if not x:
                return True
            if x != y[:len(x)]:
                return False


def test_add_section_output_keeps_every_input_byte(built, tmp_path) -> None:
    """Appended, not rewritten: only e_shoff and e_shnum change in what was there."""
    out = tmp_path / "out.so"
    run_cli("build", built["x86"], "-o", out, "--add-section", "--section", "other_table",
            "--rule", "copy_word=errno", check=True)
    assert _same_but_header(built["x86"], out)
    assert out.stat().st_size > built["x86"].stat().st_size
