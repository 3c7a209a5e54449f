"""The demo: extable on a real shared object, then (with the copy engine) recovery."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import extable

SOURCE = r'''
#include "extable.h"
EXTABLE_RESERVE(1024);
__asm__(EXTABLE_ASM_MACROS
"    .text\n    .globl demo_copy\n    .type demo_copy, @function\n"
"demo_copy:\n    mov %rdx, %rcx\n1:  rep movsb\n2:  xor %eax, %eax\n    ret\n"
"3:  mov %rcx, %rax\n    ret\n    .size demo_copy, .-demo_copy\n"
"    extable_site 1b, 2b, 3b, kind=2, flags=1, side=3, reg=1, src=6, dst=7, name=demo_rep\n");
int copy_word(long *d, const long *s) { *d = *s; return 0; }
int copy_word_fixup(void) { return -14; }
'''


def _step(title: str, *cmd: str) -> None:
    print(f"\n$ {' '.join(cmd)}    # {title}", flush=True)
    subprocess.run(cmd, check=True)


def run() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp, "demo.c")
        src.write_text(SOURCE)
        so = os.path.join(tmp, "demo.so")
        subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-I", extable.include_dir(),
                        str(src), "-o", so], check=True)
        ext = [sys.executable, "-m", "extable"]
        _step("function ranges of a real shared object", *ext, "symbols", so)
        _step("compile its exception table into it", *ext, "build", so, "--in-place",
              "--rule", "copy_*=errno")
        _step("the table, with handler descriptors", *ext, "dump", so)
        _step("every compile-time check, on the embedded table", *ext, "verify", so)
    return 0
