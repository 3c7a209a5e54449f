"""Real modules from Debian's 6.1 kernel packages (amd64 and arm64), compressed as
distributions ship them: every entry matches readelf -r + objdump -s, and verify passes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from conftest import run_cli
from kernel_helpers import KERNEL_FIXTURES, decompress, extable_json, readelf_table

MODULES = sorted(KERNEL_FIXTURES.glob("*.ko.*"))
FORMATS = {"amd64": "linux-x86_64", "arm64": "linux-arm64"}


def test_fixtures_present() -> None:
    assert {m.name for m in MODULES} == {
        "kvm-amd-6.1.0-50-amd64.ko.xz", "test_user_copy-6.1.0-50-amd64.ko.zst",
        "evdev-6.1.0-50-cloud-arm64.ko.zst", "vhost-6.1.0-50-cloud-arm64.ko.xz"}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_dump_matches_readelf_and_objdump(path: Path, tmp_path: Path) -> None:
    plain = decompress(path, tmp_path / path.name.rsplit(".", 1)[0])
    expected = readelf_table(plain)
    for source in (path, plain):             # compressed and plain read the same
        d = extable_json("dump", source)
        assert d["format"] == FORMATS[path.name.split("-")[-1].split(".")[0]]
        assert d["kernel"] == path.name[path.name.index("-6.") + 1:].rsplit(".ko", 1)[0]
        assert d["kernel_source"] == "vermagic" and d["types"] in ("5.17", "6.0")
        got = []
        for e in d["entries"]:
            word = e["data"] if d["format"] == "linux-x86_64" else (
                e["type_number"] | e["data"] << 16)
            got.append((e["insn"]["section"], e["insn"]["offset"], e["fixup"]["section"],
                        e["fixup"]["offset"], word))
        assert got == expected
        assert all(e["type"] is not None for e in d["entries"])


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_verify_passes_and_leaves_the_file_alone(path: Path) -> None:
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    p = run_cli("verify", path)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith(f"{path}: ok, ") and p.stderr == ""
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


def test_kvm_amd_entries() -> None:
    """Two sections, MSR types with registers, checked against objdump -d by hand."""
    d = extable_json("dump", KERNEL_FIXTURES / "kvm-amd-6.1.0-50-amd64.ko.xz")
    e = d["entries"]
    assert len(e) == 19
    assert e[3]["insn"] == {"section": ".text", "offset": 0x4b82,
                            "symbol": "svm_hardware_enable+0x152"}      # rdmsr
    assert (e[3]["type"], e[3]["type_number"], e[3]["reg"], e[3]["imm"]) == (
        "RDMSR_SAFE", 11, "rbx", 0)
    assert (e[4]["type"], e[4]["reg"], e[4]["insn"]["offset"]) == ("WRMSR_SAFE", "rax", 0x4bac)
    assert {x["insn"]["section"] for x in e} == {".text", ".noinstr.text"}
    assert {x["type"] for x in e} == {"DEFAULT", "UACCESS", "RDMSR_SAFE", "WRMSR_SAFE"}
    text = run_cli("dump", KERNEL_FIXTURES / "kvm-amd-6.1.0-50-amd64.ko.xz").stdout.splitlines()
    assert text[0].endswith("linux-x86_64 module, kernel 6.1.0-50-amd64 (vermagic), "
                            "5.17+ types, 19 entries")
    assert text[4].split() == ["3", ".text+0x4b82", "<svm_hardware_enable+0x152>", "->",
                               ".text+0x4b86", "<svm_hardware_enable+0x156>", "RDMSR_SAFE",
                               "reg=rbx"]


def test_test_user_copy_init_text() -> None:
    d = extable_json("dump", KERNEL_FIXTURES / "test_user_copy-6.1.0-50-amd64.ko.zst")
    [e] = d["entries"]
    assert e["insn"]["section"] == e["fixup"]["section"] == ".init.text"
    assert e["type"] == "UACCESS"


def test_arm64_registers() -> None:
    d = extable_json("dump", KERNEL_FIXTURES / "evdev-6.1.0-50-cloud-arm64.ko.zst")
    e = d["entries"]
    assert len(e) == 12 and d["types"] == "6.0"
    assert (e[0]["type"], e[0]["type_number"], e[0]["data"]) == ("UACCESS_ERR_ZERO", 2, 0x1)
    assert e[0]["registers"] == {"err": "x1", "zero": "x0"}
    assert e[1]["registers"] == {"err": "x0", "zero": "xzr"}
    assert e[0]["insn"]["symbol"] == "evdev_handle_set_keycode+0xdc"


def test_lookup_by_symbol_section_and_missing() -> None:
    path = KERNEL_FIXTURES / "kvm-amd-6.1.0-50-amd64.ko.xz"
    for where in ("svm_hardware_enable+0x152", ".text+0x4b82"):
        d = extable_json("lookup", path, where)
        assert [x["index"] for x in d["entries"]] == [3], where
    p = run_cli("lookup", path, "svm_hardware_enable+0x153")
    assert p.returncode == 1 and p.stdout == ""
    assert p.stderr.strip() == (f"extable: {path}: no entry for the instruction at .text+0x4b83")
    p = run_cli("lookup", path, "0x4b82")
    assert p.returncode == 2 and "a module has no addresses" in p.stderr
    p = run_cli("lookup", path, "no_such_function")
    assert p.returncode == 2 and "no section or symbol 'no_such_function'" in p.stderr


def test_kernel_version_override_changes_the_types() -> None:
    """5.16 kept the whole word as the type: kvm-amd's RDMSR_SAFE word 0x30b means nothing."""
    path = KERNEL_FIXTURES / "kvm-amd-6.1.0-50-amd64.ko.xz"
    d = extable_json("dump", path, "--kernel-version", "5.16")
    assert d["kernel"] == "5.16" and d["kernel_source"] == "--kernel-version"
    assert d["types"] == "5.16" and d["types_note"] is None
    assert (d["entries"][3]["type"], d["entries"][3]["type_number"]) == (None, 0x30b)
    p = run_cli("verify", path, "--kernel-version", "5.16")
    assert p.returncode == 1
    assert p.stderr.startswith(f"extable: {path}: entry 3: unknown type 779 for kernel 5.16+ ")
    assert "(+4 more; --json lists them)" in p.stderr and len(p.stderr.splitlines()) == 1


def test_unknown_versions_use_the_nearest_table_and_say_so() -> None:
    path = KERNEL_FIXTURES / "evdev-6.1.0-50-cloud-arm64.ko.zst"
    p = run_cli("verify", path, "--kernel-version", "9.3")
    assert p.returncode == 0
    assert p.stderr == (f"extable: note: {path}: kernel 9.3 is newer than any table checked "
                        "(through 6.18); using the nearest, 6.0+\n")
    d = extable_json("dump", path, "--kernel-version", "4.19")
    assert d["types"] == "5.16" and "predates typed entries" in d["types_note"]
    p = run_cli("dump", path, "--kernel-version", "banana")
    assert p.returncode == 2 and "is not a kernel version" in p.stderr
