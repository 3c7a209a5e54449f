"""What a user meets first: the package's names, its command lines, its typing
markers and licence, and the errors of copy() for arguments that cannot work."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import extable
import mcsafe

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent


def test_dir_shows_the_api_and_submodules_only() -> None:
    public = {name for name in dir(mcsafe) if not name.startswith("_")}
    modules = {name for name in public if isinstance(getattr(mcsafe, name), types.ModuleType)}
    assert public - modules == set(mcsafe.__all__) - modules
    assert all(getattr(mcsafe, m).__name__ == f"mcsafe.{m}" for m in modules), modules
    assert not {"annotations", "os", "sys"} & public


def test_inject_is_an_attribute_after_import_mcsafe() -> None:
    p = subprocess.run([sys.executable, "-c", "import mcsafe; print(mcsafe.inject.__name__, "
                        "callable(mcsafe.inject.available))"], capture_output=True, text=True)
    assert (p.returncode, p.stdout.split()) == (0, ["mcsafe.inject", "True"]), p.stderr


@pytest.mark.parametrize("module", ["mcsafe", "extable"])
def test_python_m_help_exits_0(module: str) -> None:
    p = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("usage:") and not p.stderr


def test_python_m_mcsafe_without_a_command_is_a_usage_error() -> None:
    p = subprocess.run([sys.executable, "-m", "mcsafe"], capture_output=True, text=True)
    assert p.returncode == 2 and "demo" in p.stderr and "Traceback" not in p.stderr


def test_importing_main_modules_runs_nothing() -> None:
    p = subprocess.run([sys.executable, "-c", "import mcsafe.__main__, extable.__main__; "
                        "print('imported')"], capture_output=True, text=True)
    assert (p.returncode, p.stdout) == (0, "imported\n"), p.stderr


def test_both_packages_are_typed_and_the_licence_is_the_declared_one() -> None:
    for package in (mcsafe, extable):
        assert (Path(package.__file__).parent / "py.typed").exists(), package.__name__
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["license"] == "MIT" and meta["license-files"] == ["LICENSE"]
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")


@pytest.mark.parametrize("kwargs,words", [
    ({"n": 2**64}, "n=18446744073709551616 is out of range"),
    ({"n": -2**64}, "n=-18446744073709551616 is out of range"),
    ({"dst_offset": 2**64}, "dst_offset=18446744073709551616 is out of range"),
    ({"src_offset": 2**63}, "src_offset=9223372036854775808 is out of range"),
    ({"src_offset": -2**63}, "src_offset=-9223372036854775808 is outside src"),
])
def test_huge_sizes_and_offsets_are_value_errors(kwargs: dict, words: str) -> None:
    dst = bytearray(b"\xaa" * 10)
    for call in (mcsafe.copy, mcsafe.copy_report):
        with pytest.raises(ValueError, match=words):
            call(dst, b"s" * 10, **kwargs)
    assert dst == b"\xaa" * 10


@pytest.mark.parametrize("kwargs,words", [
    ({"n": 1.0}, "n must be an integer, not float"),
    ({"n": "4"}, "n must be an integer, not str"),
    ({"dst_offset": 0.0}, "dst_offset must be an integer, not float"),
    ({"src_offset": None}, "src_offset must be an integer, not NoneType"),
])
def test_non_integer_sizes_are_type_errors_naming_the_argument(kwargs: dict,
                                                              words: str) -> None:
    for call in (mcsafe.copy, mcsafe.copy_report):
        with pytest.raises(TypeError, match=words):
            call(bytearray(10), b"s" * 10, **kwargs)


def test_index_types_are_sizes() -> None:
    dst = bytearray(8)
    assert mcsafe.copy(dst, b"abcdefgh", np.int64(3), dst_offset=np.uint8(2),
                       src_offset=True) == 3
    assert dst == b"\0\0bcd\0\0\0"


@pytest.mark.parametrize("dst,src,words", [
    (None, b"x", "dst must be a writable contiguous buffer .*not NoneType"),
    (bytearray(1), None, "src must be a contiguous buffer .*not NoneType"),
    (bytearray(1), "x", "src must be a contiguous buffer .*not str"),
    (b"x", b"x", "dst must be a writable contiguous buffer .*not bytes"),
    (bytearray(1), 3, "src must be a contiguous buffer .*not int"),
])
def test_a_wrong_buffer_is_named(dst: object, src: object, words: str) -> None:
    for call in (mcsafe.copy, mcsafe.copy_report):
        with pytest.raises(TypeError, match=words):
            call(dst, src)
        with pytest.raises(TypeError, match=words):
            call(dst, src, 1)
