"""Appending a section by hand: the layout, extended numbering, and the check that refuses."""

from __future__ import annotations

import os
import struct
import subprocess
from pathlib import Path

import pytest

import extable.append
import extable.output
import extable.writer
from conftest import run_cli
from extable.elf import ElfImage
from extable.errors import ExtableError


def sections(path: Path) -> list[str]:
    text = subprocess.run(["readelf", "-SW", str(path)], capture_output=True, text=True,
                          check=True).stdout
    return [ln.split("]", 1)[1].split()[0] for ln in text.splitlines()
            if ln.strip().startswith("[") and "]" in ln and "Nr" not in ln]


def test_new_section_is_last_and_nothing_is_renumbered(built, tmp_path) -> None:
    out = tmp_path / "out.so"
    run_cli("build", built["plain"], "-o", out, "--add-section", "--rule", "copy_word=errno",
            check=True)
    before, after = sections(built["plain"]), sections(out)
    assert after == before + ["extable_table"]
    with ElfImage(out) as image:
        sec = image.section("extable_table")
        assert (sec.type, sec.flags, sec.addr, sec.addralign) == (1, 0, 0, 8)
        assert sec.offset % 8 == 0 and sec.offset >= os.path.getsize(built["plain"])


def extended_numbering(src: Path, dst: Path) -> Path:
    """The same file with its section count in section header 0 (e_shnum = 0), as a file
    with 65280 or more sections has it."""
    blob = bytearray(src.read_bytes())
    shoff, = struct.unpack_from("<Q", blob, 0x28)
    shnum, = struct.unpack_from("<H", blob, 0x3C)
    struct.pack_into("<H", blob, 0x3C, 0)
    struct.pack_into("<Q", blob, shoff + 32, shnum)           # sh0.sh_size
    dst.write_bytes(bytes(blob))
    return dst


def test_extended_section_numbering_is_kept(built, tmp_path) -> None:
    src = extended_numbering(built["plain"], tmp_path / "ext.so")
    assert sections(src) == sections(built["plain"])          # readelf reads it the same
    out = tmp_path / "out.so"
    run_cli("build", src, "-o", out, "--add-section", "--rule", "copy_word=errno", check=True)
    assert sections(out) == sections(built["plain"]) + ["extable_table"]
    blob = out.read_bytes()
    shoff, = struct.unpack_from("<Q", blob, 0x28)
    assert struct.unpack_from("<H", blob, 0x3C) == (0,)             # still extended
    assert struct.unpack_from("<Q", blob, shoff + 32) == (len(sections(out)),)
    assert run_cli("verify", out).returncode == 0


def test_a_result_that_moved_a_header_is_refused_and_nothing_written(built, tmp_path,
                                                                      monkeypatch) -> None:
    real = extable.append.append_section

    def breaks_a_segment(image, out, name, blob) -> None:
        real(image, out, name, blob)
        phoff, = struct.unpack_from("<Q", image.read(0, 64), 0x20)
        out.seek(phoff + 8)                  # p_offset of the first program header
        out.write(struct.pack("<Q", 0x40))

    monkeypatch.setattr(extable.writer, "append_section", breaks_a_segment)
    target = tmp_path / "out.so"
    with ElfImage(built["plain"]) as image:
        from extable.compiler import build
        from extable.sites import Rule
        from extable.spec import load

        table = build(image, load(None, image.machine), [Rule.parse("copy_word=errno")]).table
        with pytest.raises(ExtableError, match="program headers changed"):
            extable.writer.write_added_section(image, table, str(target))
    assert not target.exists() and os.listdir(tmp_path) == []


def test_a_file_that_shrinks_while_copied_is_refused(built, tmp_path, monkeypatch) -> None:
    def short_copy(src, dst) -> int:
        dst.write(src.read(100))
        return 100

    monkeypatch.setattr(extable.output, "copy_file", short_copy)
    with ElfImage(built["plain"]) as image:
        with pytest.raises(ExtableError, match="changed size while it was being copied"):
            extable.writer.write_added_section(
                image, _empty_table(image), str(tmp_path / "o.so"))
    assert os.listdir(tmp_path) == []


def _empty_table(image: ElfImage):
    from extable.compiler import build
    from extable.spec import load

    return build(image, load(None, image.machine), []).table


def test_output_that_is_a_link_to_the_input_is_refused(built, tmp_path) -> None:
    src = tmp_path / "in.so"
    src.write_bytes(built["plain"].read_bytes())
    link = tmp_path / "link.so"
    link.symlink_to(src)
    before = src.read_bytes()
    proc = run_cli("build", src, "-o", link, "--add-section")
    assert proc.returncode == 2 and "use --in-place" in proc.stderr
    assert src.read_bytes() == before and link.is_symlink()


def test_in_place_add_section_keeps_mode(built, tmp_path) -> None:
    src = tmp_path / "in.so"
    src.write_bytes(built["plain"].read_bytes())
    os.chmod(src, 0o751)
    run_cli("build", src, "--in-place", "--add-section", "--rule", "copy_word=errno",
            check=True)
    assert os.stat(src).st_mode & 0o7777 == 0o751
    assert run_cli("verify", src).returncode == 0


@pytest.mark.parametrize("extra", [[], ["--add-section"]])
def test_a_section_holding_other_data_is_never_overwritten(built, tmp_path, extra) -> None:
    out = tmp_path / "o.so"
    proc = run_cli("build", built["x86"], "-o", out, "--section", ".text", *extra)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1
    assert "holds other data" in proc.stderr and not out.exists()


def test_in_place_through_a_symlink_rewrites_the_target_and_keeps_the_link(built,
                                                                           tmp_path) -> None:
    real = tmp_path / "lib" / "libplain.so.1.0"
    real.parent.mkdir()
    real.write_bytes(built["plain"].read_bytes())
    link = tmp_path / "libplain.so.1"
    link.symlink_to(real)
    run_cli("build", link, "--in-place", "--add-section", "--rule", "copy_word=errno",
            check=True)
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert run_cli("verify", real).returncode == 0
    assert sorted(os.listdir(real.parent)) == ["libplain.so.1.0"]     # no temporary left
