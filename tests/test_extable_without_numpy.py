"""extable without numpy, as ``pip install mcsafe`` (no extras) runs it: the loops of
the numpy-free path give what the vectorised path gives, table byte for table byte
and error message for error message.

In this process the numpy-free path is selected as an interpreter without numpy
selects it: each module's ``np`` is None (``without_numpy``). The commands are also
run whole in an interpreter where ``import numpy`` fails, and compared with this
environment's; tests/test_packaging.py runs them in a fresh venv without numpy.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import extable.checks
import extable.compiler
import extable.sites
import extable.table
import extable.unwind
from conftest import FIXTURES, compile_so
from extable.elf import EM_X86_64, PF_X, Segment
from extable.errors import ExtableError
from extable.model import Handler, Kind, Side, classic_data, extended_word
from extable.sites import SiteSet
from extable.table import ENTRY, HEADER, MAGIC, Table, decode, encode
from extable.unwind import Row

ROOT = Path(__file__).resolve().parent.parent
BACKENDS = (extable.checks, extable.compiler, extable.sites, extable.table, extable.unwind)
SEGMENTS = [Segment(0x1000, 0x400, 0x1000, 0x400, PF_X), Segment(0x2000, 0x10, 0, 0, 0),
            Segment(0x3000, 0x100, 0x3000, 0x100, PF_X)]
EXE = ROOT / "examples" / "protected" / "protected.c"


@contextlib.contextmanager
def without_numpy() -> Iterator[None]:
    saved = [m.np for m in BACKENDS]
    for m in BACKENDS:
        m.np = None
    try:
        yield
    finally:
        for m, was in zip(BACKENDS, saved):
            m.np = was


def outcome(fn: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return "ok", fn()
    except ExtableError as exc:
        return type(exc).__name__, str(exc)


def both(fn: Callable[[], Any]) -> tuple[tuple[str, Any], tuple[str, Any]]:
    with_np = outcome(fn)
    with without_numpy():
        without = outcome(fn)
    return with_np, without


# -- the compiler and the checks, on generated inputs -----------------------------

HANDLERS = [
    Handler(Kind.SHORT_COPY, reg=2, src_reg=6, dst_reg=7, side=Side.BOTH, name="copy"),
    Handler(Kind.ERRNO, reg=0, imm=-14, name="efault"),
    Handler(Kind.FIXUP, name="fixup"),
    Handler(Kind.UNWIND, reg=0, imm=-5, name="unwind"),
    Handler(Kind.SHORT_COPY, reg=2, src_reg=6, rec_reg=4, name="unsafe"),    # rec = rsp
]
UNWIND = extended_word(3)
WORDS = [classic_data(Kind.ERRNO, reg=0, imm=-14), classic_data(Kind.FIXUP),
         classic_data(Kind.ERRNO, reg=4, imm=-5),                           # reg = rsp
         classic_data(Kind.SHORT_COPY, reg=2), *(extended_word(i) for i in range(5))]
RA = Row(7, 8, (0, 0, 0, 0, 0, 0, -8))

addresses = st.integers(0x0f00, 0x3110)
site = st.tuples(addresses, st.integers(-4, 48), addresses, st.sampled_from(WORDS))


def site_set(rows: list[tuple[int, int, int, int]], columns: Callable, nhandlers: int
             ) -> SiteSet:
    return SiteSet(*(columns([r[j] for r in rows], j) for j in range(4)), HANDLERS[:nhandlers],
                   [f"site {i}" for i in range(len(rows))])


def numpy_columns(values: list[int], j: int) -> Any:
    return np.array(values, np.uint32 if j == 3 else np.uint64)


def compiled(rows: list[tuple[int, int, int, int]], nhandlers: int = 4, big: bool = False
             ) -> bytes:
    sites = site_set([(a, a + n + (1 << 32 if big else 0), p, d) for a, n, p, d in rows],
                     (lambda v, j: v) if extable.compiler.np is None else numpy_columns,
                     nhandlers)
    unwind = [(a, RA) for a, _, _, d in rows if d == UNWIND and nhandlers > 3]
    table = extable.compiler.compile_sites(sites, EM_X86_64, SEGMENTS, hex, "f.so", unwind)
    return encode(table)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.lists(site, max_size=24), st.integers(0, 5), st.booleans())
def test_compiling_sites_gives_the_same_table_or_the_same_error(rows, nhandlers, big) -> None:
    with_np, without = both(lambda: compiled(rows, nhandlers, big and bool(rows)))
    assert without == with_np


def test_the_generated_inputs_reach_every_outcome() -> None:
    """The strategy above is worth running: it reaches a table and each refusal."""
    seen = []
    for rows, n in (([(0x1000, 8, 0x1100, WORDS[0])], 4), ([(0x1000, 0, 0x1100, WORDS[0])], 4),
                    ([(0x1000, 8, 0x1100, WORDS[0]), (0x1004, 8, 0x1100, WORDS[0])], 4),
                    ([(0x1000, 8, 0x2004, WORDS[0])], 4), ([(0x1000, 8, 0x1004, WORDS[0])], 4),
                    ([(0x1000, 8, 0x1100, WORDS[2])], 4), ([(0x1000, 8, 0x1100, WORDS[0])], 5),
                    ([(0x1000, 8, 0, UNWIND), (0x1008, 8, 0x1100, WORDS[1])], 4),
                    ([(0x1000, 8, 0x1008, WORDS[1]), (0x1008, 8, 0x1100, WORDS[1])], 4),
                    ([(0x1000, 8, 0x1100, WORDS[1]), (0x1008, 8, 0x1100, WORDS[1])], 4)):
        with_np, without = both(lambda: compiled(rows, n))
        assert without == with_np
        seen.append(with_np[0] if with_np[0] == "ok" else with_np[1].split(": ", 2)[-1][:30])
    assert len(set(seen)) == 8 and seen.count("ok") == 3, seen


def raw_table(entries: list[tuple[int, int, int, int]], handlers: list[Handler]) -> bytes:
    """A version-1 table with these entries as they are (unsorted, overlapping: any)."""
    return encode_as_is(Table(EM_X86_64, entries, handlers))


def encode_as_is(table: Table) -> bytes:
    with without_numpy():
        return encode(table)


entry = st.tuples(addresses, addresses, addresses, st.sampled_from(WORDS))


def read_back(blob: bytes) -> tuple[list[tuple[int, int, int, int]], list[str]]:
    """decode, then every check verify makes; the rows and the descriptors' names."""
    table = decode(blob, "f.so")
    extable.checks.check_safety(table, "f.so")
    extable.checks.check_landing_pads(table, hex, "f.so")
    rows = table.rows()
    columns: list[Any] = [[r[j] for r in rows] for j in range(3)]
    has_pad: Any = [not u for u in table.unwinding_flags()]
    if extable.checks.np is not None:          # as check_table passes them
        columns, has_pad = [np.array(c, np.uint64) for c in columns], np.array(has_pad, bool)
    extable.checks.check_addresses(*columns, has_pad, SEGMENTS, hex, "f.so")
    return rows, [h.name for h in table.handlers]


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.lists(entry, max_size=12), st.integers(0, 5))
def test_reading_and_checking_a_table_gives_the_same_rows_or_the_same_error(
        entries, nhandlers) -> None:
    blob = raw_table(entries, HANDLERS[:nhandlers])
    with_np, without = both(lambda: read_back(blob))
    assert without == with_np


@given(st.lists(st.tuples(addresses, addresses), max_size=8),
       st.lists(st.integers(0x0f00, 0x3110), min_size=1, max_size=8))
def test_unwind_rows_read_and_checked_alike(entries, ips) -> None:
    """Version-2 tables: ips inside and outside the unwind entries, sorted or not."""
    rows = [RA, Row(7, 16, (-16, 0, 0, 0, 0, 0, -8))]
    unwind = extable.unwind.Unwind(np.array(ips, np.uint32),
                                   np.array([k % 2 for k in range(len(ips))], np.uint32), rows)
    table = Table(EM_X86_64, np.array([(a, b, 0, extended_word(0)) for a, b in entries],
                                      extable.table.ENTRY_DTYPE),
                  [HANDLERS[3]], unwind=unwind)
    blob = encode(table)
    with without_numpy():
        assert encode(Table(EM_X86_64, [(a, b, 0, extended_word(0)) for a, b in entries],
                            [HANDLERS[3]], unwind=extable.unwind.Unwind(
                                extable.unwind._u32(ips),
                                extable.unwind._u32([k % 2 for k in range(len(ips))]),
                                rows))) == blob

    def read() -> tuple[Any, ...]:
        t = decode(blob, "f.so")
        assert t.unwind is not None
        return (t.rows(), [(a, t.unwind.at(a)) for a in range(0x0f00, 0x3110, 0x101)],
                [t.unwind.within(a, b) for a, b in entries], [t.lookup(a) for a, _ in entries])
    with_np, without = both(read)
    assert without == with_np


def test_a_table_that_is_not_one_fails_alike() -> None:
    good = raw_table([(0x1000, 0x1008, 0x1100, WORDS[0])], [])
    for blob in (b"", b"EXTABLE\0" + bytes(10), good[:60], good.replace(MAGIC, b"EXTABLX\0"),
                 HEADER.pack(MAGIC, 9, EM_X86_64, 0, 0, 0, 48, 48, 48, 0, 0),
                 good[:HEADER.size] + ENTRY.pack(0x1000, 0x1008, 0x1100, extended_word(7))):
        with_np, without = both(lambda: read_back(blob))
        assert without == with_np and with_np[0] != "ok", with_np


# -- the commands, whole: here, and in an interpreter where numpy cannot be imported --

NO_NUMPY = "import sys; sys.modules['numpy'] = None\n"
EXTABLE = "import sys; from extable.cli import main; sys.argv[0] = 'extable'; sys.exit(main())"


def extable_cli(args: list[str], numpy: bool) -> tuple[int, str, str]:
    code = ("" if numpy else NO_NUMPY) + EXTABLE
    p = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True,
                       text=True, cwd=ROOT)
    return p.returncode, p.stdout, p.stderr


def same_commands(so: Path, tmp_path: Path, builds: list[list[str]]) -> list[int]:
    """Each build both ways: the same exit, output and bytes written; then dump, verify
    and lookup of what was built, both ways. The exits of the builds."""
    exits = []
    for k, extra in enumerate(builds):
        outs = {numpy: tmp_path / f"{k}-{numpy}.so" for numpy in (True, False)}
        results = {numpy: extable_cli(["build", so, "-o", out, "--json", *extra], numpy)
                   for numpy, out in outs.items()}
        rc, stdout, stderr = results[True]
        renamed = tuple(v.replace(f"{k}-True", f"{k}-False") if isinstance(v, str) else v
                        for v in results[True])
        assert results[False] == renamed, extra
        exits.append(rc)
        if rc:
            assert not outs[True].exists() and not outs[False].exists()
            continue
        assert outs[True].read_bytes() == outs[False].read_bytes(), extra
        dumped = json.loads(extable_cli(["dump", "--json", outs[True]], True)[1])
        at = [e["start"] + (e["end"] - e["start"]) // 2 for e in dumped["entries"]][:3]
        for command in (["dump", "--json"], ["dump"], ["verify"], ["verify", "--json"],
                        *(["lookup", hex(a)] for a in at), ["lookup", "--json", "0x1"]):
            argv = [*command, outs[True]]
            assert extable_cli(argv, False) == extable_cli(argv, True), command
    return exits


def test_the_commands_on_the_fixtures_without_numpy(built, tmp_path) -> None:
    exits = same_commands(built["x86"], tmp_path, [
        [], ["--rule", "copy_word=errno"], ["--spec", FIXTURES / "spec.toml"],
        ["--rule", "copy_*=errno@{name}_fixup"], ["--rule", "copy_*=errno@copy_word"],
        ["--rule", "*=errno"], ["--rule", "copy_word=nonesuch"], ["--rule", "nonesuch=errno"]])
    assert exits == [0, 0, 0, 0, 0, 2, 2, 0], exits


def test_the_commands_on_the_arm64_fixture_without_numpy(built, tmp_path) -> None:
    if "arm" not in built:
        pytest.skip("no aarch64-linux-gnu-gcc on this machine: no arm64 fixture to build")
    assert same_commands(built["arm"], tmp_path, [[], ["--rule", "copy_word=errno"]]) == [0, 0]


def test_the_commands_on_the_real_extension_without_numpy(tmp_path) -> None:
    import mcsafe._mcsafe

    protected = compile_so(EXE, tmp_path / "protected.so")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert same_commands(Path(mcsafe._mcsafe.__file__), tmp_path / "a",
                         [[], ["--rule", "mcsafe_copy_*=short_copy"]]) == [0, 2]
    # (protected.c has no probe_read_fixup: the rule's error, both ways.)
    assert same_commands(protected, tmp_path / "b", [[], ["--rule", "probe_*=errno"]]) == [0, 2]


def test_an_unwind_rule_without_numpy_names_its_extra(built, tmp_path) -> None:
    rc, out, err = extable_cli(["build", built["x86"], "-o", tmp_path / "o.so", "--rule",
                                "copy_word=unwind"], numpy=False)
    assert (rc, out, err) == (2, "", "extable: error: an unwind rule needs numpy: "
                                     "pip install 'mcsafe[unwind]'\n")
    assert not (tmp_path / "o.so").exists()


def test_symbols_needs_no_numpy(built) -> None:
    argv = ["symbols", "--json", built["x86"]]
    assert extable_cli(argv, False) == extable_cli(argv, True)
    assert extable_cli(argv, False)[0] == 0


def test_the_numpy_free_path_is_what_an_interpreter_without_numpy_runs() -> None:
    code = NO_NUMPY + textwrap.dedent("""\
        import extable.checks, extable.compiler, extable.sites, extable.table, extable.unwind
        print(sorted(m.__name__ for m in (extable.checks, extable.compiler, extable.sites,
                                          extable.table, extable.unwind) if m.np is None))
        """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert p.stdout.strip() == str(sorted(m.__name__ for m in BACKENDS))


def test_unwind_rows_without_an_unwind_entry_are_refused_not_a_crash(tmp_path) -> None:
    """A version-2 table whose rows no unwind entry holds: CheckFailed both ways (numpy's
    path raised IndexError, a traceback from extable verify, until the loops found it)."""
    table = Table(EM_X86_64, [(0x1000, 0x1008, 0x1100, WORDS[0])], [],
                  unwind=extable.unwind.Unwind(extable.unwind._u32([0x1000]),
                                               extable.unwind._u32([0]), [RA]))
    blob = encode_as_is(table)
    with_np, without = both(lambda: decode(blob, "f.so"))
    assert with_np == without == (
        "CheckFailed", "f.so: unwind row 0 at 0x1000 is not inside an unwind entry")
