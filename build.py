"""The build step: compile the mcsafe extension, then embed its exception table.

``setup.py`` (run by ``pip install .``, ``pip install -e .`` and wheel builds)
takes its extension list and its ``build_ext`` from here. After each extension
is linked, :func:`embed_table` runs the extable compiler over the built shared
object and writes the table in place, into the section that ``extable.h``
reserved. Running it again gives the same bytes.

``python build.py`` alone does an in-place development build.

This file shadows pypa's ``build`` when ``python -m build`` is run from the
repository root; it notices and hands over to the real one (see ``_main``).
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
#: The extensions whose exception table is compiled into them after linking.
WITH_TABLE = ("mcsafe._mcsafe",)
ARCHES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}


def target_arch() -> str:
    machine = os.environ.get("MCSAFE_ARCH") or platform.machine()
    try:
        return ARCHES[machine.lower()]
    except KeyError:
        raise SystemExit(f"mcsafe: no copy core for {machine} (have x86-64 and aarch64)")


def strip_args() -> list[str]:
    """The linker drops the debug information (-S), as released wheels do: a fifth of
    the size. The table is written after linking, and the symbol table it is compiled
    from stays. MCSAFE_DEBUG=1 keeps it, for gdb."""
    return [] if os.environ.get("MCSAFE_DEBUG") == "1" else ["-Wl,--strip-debug"]


def unneeded_symbols(path: str | os.PathLike[str]) -> list[str]:
    """The .symtab entries nothing reads once the object is linked: local data
    (Cython's docstrings, method tables, cached lookups), source file names, and the
    undefined imports that .dynsym already holds. Function symbols all stay: the
    table is compiled from them, and extable dump, perf and gdb name code by them."""
    from elftools.elf.elffile import ELFFile

    with open(path, "rb") as f:
        symtab = ELFFile(f).get_section_by_name(".symtab")
        if symtab is None:
            return []
        return sorted({s.name for s in symtab.iter_symbols() if s.name and (
            (s["st_info"]["bind"] == "STB_LOCAL"
             and s["st_info"]["type"] in ("STT_OBJECT", "STT_FILE"))
            or s["st_shndx"] == "SHN_UNDEF")})


def strip_unneeded_symbols(path: str | os.PathLike[str], linker: str) -> None:
    """Drop :func:`unneeded_symbols` with the toolchain's objcopy (the one beside
    `linker`, else objcopy on PATH): a tenth of the extension, no byte of code or
    data moved. Skipped, and said so, without objcopy; MCSAFE_DEBUG=1 keeps them."""
    if os.environ.get("MCSAFE_DEBUG") == "1":
        return
    prefix = os.path.basename(linker)[:-len("gcc")] if linker.endswith("gcc") else ""
    objcopy = shutil.which(f"{prefix}objcopy") or shutil.which("objcopy")
    if objcopy is None:
        print(f"mcsafe build: {path}: no objcopy, local data symbols kept")
        return
    names = unneeded_symbols(path)
    if not names:       # already stripped (build_ext reused an up-to-date link)
        return          # objcopy fails, silently, on an empty list
    with tempfile.NamedTemporaryFile("w", suffix=".symbols") as listing:
        listing.write("".join(f"{n}\n" for n in names))
        listing.flush()
        subprocess.run([objcopy, f"--strip-symbols={listing.name}", os.fspath(path)],
                       check=True)


CORE = "mcsafe/_core"
C_FLAGS = ["-std=gnu11", "-fno-strict-aliasing"]
#: The core (the copy loops, the handler, the registry, the unwinder) is compiled for
#: speed. The Cython glue, three quarters of the code and little of the time, is
#: compiled for size, which keeps the wheel's extension under its budget (issue 22,
#: docs/INSTALL.md): 265 KB at -O2, 232 KB so. Plain -Os costs every call: it leaves
#: Py_DECREF, mcsafe_copy() and Cython's small helpers out of line (readinto 4 KiB
#: +25%), which max-inline-insns-size=32 undoes (inlining a callee of up to 32 insns
#: where it is called), and on x86-64 it zeroes and copies structs such as Py_buffer
#: with rep stos/movs, whose start-up alone made copy() of 64 B 25 ns slower; SSE
#: loops instead cost no byte. setuptools has one set of flags per extension, so
#: BuildExt compiles the core itself and links its objects in.
CORE_OPTIMIZATION = ["-O2"]
GLUE_OPTIMIZATION = ["-Os", "--param", "max-inline-insns-size=32"]
GLUE_STRING_OPS = {"x86_64": ["-mstringop-strategy=vector_loop"], "aarch64": []}


def core_sources() -> list[str]:
    """The C files of mcsafe's core for the target architecture."""
    return [f"{CORE}/handler.c", f"{CORE}/registry.c", f"{CORE}/unwind.c",
            f"{CORE}/arch/{target_arch()}/copy.c"]


def extensions() -> list:
    """The extension modules: mcsafe's (cythonized; its exception table is embedded after
    linking) and extable's listing accelerator (plain C, optional at run time)."""
    from Cython.Build import cythonize
    from setuptools import Extension

    arch = target_arch()
    ext = Extension(
        "mcsafe._mcsafe",
        sources=["mcsafe/_mcsafe.pyx"],
        include_dirs=["extable/include", CORE, f"{CORE}/arch/{arch}"],
        depends=[*core_sources(), f"{CORE}/mcsafe_core.h", f"{CORE}/arch/{arch}/context.h",
                 f"{CORE}/arch/{arch}/unwind.h", "extable/include/extable.h"],
        extra_compile_args=[*C_FLAGS, *GLUE_OPTIMIZATION, *GLUE_STRING_OPS[arch]],
        # Bind every symbol at load: the signal handler must never enter the
        # dynamic linker's lazy binding (not async-signal-safe).
        extra_link_args=["-Wl,-z,now", *strip_args()],
    )
    fast = Extension("extable._fast", sources=["extable/_fast.c"],
                     extra_compile_args=["-O2", "-std=gnu11"], extra_link_args=strip_args())
    return cythonize([ext], language_level=3, quiet=True) + [fast]


def embed_table(path: str | os.PathLike[str]) -> None:
    """Compile the exception table of a built extension into it, in place."""
    sys.path.insert(0, str(ROOT))          # this tree's extable, not an installed one
    # ...in pure Python: its accelerator (extable._fast) is built by this same build, so
    # the one in the tree is not built yet, or left from an older build.
    if "extable.elf" not in sys.modules:
        sys.modules.setdefault("extable._fast", None)
    try:
        from extable.compiler import build
        from extable.elf import ElfImage
        from extable.embedded import verify
        from extable.errors import ExtableError
        from extable.spec import load
        from extable.writer import write_into_section
    finally:
        sys.path.remove(str(ROOT))
    try:
        with ElfImage(path) as image:
            result = build(image, load(None, image.machine), strict=True)
            if not len(result.table):
                raise ExtableError("no fault sites found: the copy core has no records", path)
            write_into_section(image, result.table, os.fspath(path))
        with ElfImage(path) as image:
            table = verify(image)
    except ExtableError as exc:
        raise SystemExit(f"mcsafe build: extable failed: {exc}") from None
    print(f"mcsafe build: {path}: {len(table)} table entries, "
          f"{len(table.handlers)} descriptors embedded")


def build_ext_class() -> type:
    from setuptools.command.build_ext import build_ext

    class BuildExt(build_ext):
        """build_ext that embeds the exception table right after linking (into the
        extensions that carry one)."""

        def build_extension(self, ext) -> None:   # type: ignore[no-untyped-def]
            if ext.name in WITH_TABLE:
                core = self.compiler.compile(
                    core_sources(), output_dir=self.build_temp, macros=ext.define_macros,
                    include_dirs=ext.include_dirs, debug=self.debug,
                    extra_postargs=[*C_FLAGS, *CORE_OPTIMIZATION], depends=ext.depends)
                ext.extra_objects = [*dict.fromkeys([*ext.extra_objects, *core])]
            super().build_extension(ext)
            strip_unneeded_symbols(self.get_ext_fullpath(ext.name),
                                   self.compiler.linker_so[0])
            if ext.name in WITH_TABLE:
                embed_table(self.get_ext_fullpath(ext.name))

    return BuildExt


#: The documents the installed ``extable`` names in its help, shipped inside the
#: package as extable/docs/ (generated here from docs/, like _mcsafe.c from the .pyx).
PACKAGE_DOCS = ("FORMAT.md", "EXTENDING.md")


def package_docs() -> None:
    """Copy PACKAGE_DOCS from docs/ into extable/docs/ where they differ."""
    out = ROOT / "extable" / "docs"
    for name in PACKAGE_DOCS:
        src = ROOT / "docs" / name
        if not src.exists():            # a tree without docs/ (an unpacked wheel): keep ours
            continue
        out.mkdir(exist_ok=True)
        dst = out / name
        if not dst.exists() or dst.read_bytes() != src.read_bytes():
            dst.write_bytes(src.read_bytes())


def setup_kwargs() -> dict:
    package_docs()
    return {"ext_modules": extensions(), "cmdclass": {"build_ext": build_ext_class()}}


def _main(argv: list[str]) -> int:
    if argv:
        # Any argument means `python -m build ...` from the repository root found
        # this file instead of pypa's build: hand over to the real one.
        sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != str(ROOT)]
        sys.modules.pop("build", None)
        import runpy

        try:
            runpy.run_module("build", run_name="__main__", alter_sys=True)
        except ImportError:
            raise SystemExit("python -m build: pypa's build is not installed "
                             "(pip install build); python build.py takes no arguments")
        return 0
    from setuptools import setup

    os.chdir(ROOT)
    setup(script_args=["build_ext", "--inplace"], **setup_kwargs())
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
