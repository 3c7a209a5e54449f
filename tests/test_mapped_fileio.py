"""MappedFileIO where the standard library expects a file (item 10 of issue 10)."""

from __future__ import annotations

import errno
import io
import os
import pickle
import shutil
import tarfile
import zipfile

import pytest

from mcsafe import MappedFile, MemoryFaultError, inject
from mcsafe import fileio
from mcsafe.fileio import MappedFileIO

PAGE = inject.PAGE


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "data.bin"
    data = inject.pattern(10 * PAGE + 123)
    path.write_bytes(data)
    return path, data


def test_raw_file_protocol(data_file) -> None:
    path, data = data_file
    with MappedFileIO(path) as f:
        assert (f.readable(), f.writable(), f.seekable()) == (True, False, True)
        assert f.name == str(path) and f.mode == "rb" and isinstance(f.fileno(), int)
        assert f.read(10) == data[:10] and f.tell() == 10
        assert f.seek(-3, io.SEEK_END) == len(data) - 3 and f.read() == data[-3:]
        assert f.read(5) == b"" and f.tell() == len(data)
        assert f.seek(100) == 100 and f.seek(7, io.SEEK_CUR) == 107
        buf = bytearray(20)
        assert f.readinto(buf, 5) == 20 and buf == data[5:25] and f.tell() == 107  # pread
        assert f.readinto(buf) == 20 and buf == data[107:127] and f.tell() == 127
        f.seek(0)
        assert f.readall() == data
        with pytest.raises(io.UnsupportedOperation):
            f.write(b"x")
        with pytest.raises(io.UnsupportedOperation):
            f.truncate(0)
        with pytest.raises(OSError):
            f.seek(-1)
    assert f.closed
    with pytest.raises(ValueError):
        f.read(1)


def test_buffered_reader_and_copyfileobj(data_file, tmp_path) -> None:
    path, data = data_file
    with io.BufferedReader(MappedFileIO(path), 4096) as f:
        assert f.read(5) == data[:5] and f.peek(1)[:1] == data[5:6]
        assert f.read() == data[5:]
    with fileio.open(path) as src, open(tmp_path / "copy", "wb") as dst:
        shutil.copyfileobj(src, dst)
    assert (tmp_path / "copy").read_bytes() == data


def test_text_wrapper(tmp_path) -> None:
    path = tmp_path / "t.txt"
    text = "".join(f"línea {i}\n" for i in range(2000))
    path.write_text(text, encoding="utf-8")
    with io.TextIOWrapper(io.BufferedReader(MappedFileIO(path)), encoding="utf-8") as f:
        lines = f.readlines()
    assert "".join(lines) == text and len(lines) == 2000
    with fileio.open(path, "r", encoding="utf-8") as f:
        assert next(iter(f)) == "línea 0\n"


def test_pickle_tarfile_zipfile(tmp_path) -> None:
    obj = {"weights": list(range(5000)), "name": "x" * 10000}
    (tmp_path / "obj.pkl").write_bytes(pickle.dumps(obj))
    with fileio.open(tmp_path / "obj.pkl") as f:
        assert pickle.load(f) == obj
    with MappedFileIO(tmp_path / "obj.pkl") as raw:      # unbuffered works too
        assert pickle.load(raw) == obj

    members = {"a.bin": os.urandom(3 * PAGE + 1), "b.txt": b"hello\n" * 1000}
    with tarfile.open(tmp_path / "t.tar", "w") as tar:
        for name, payload in members.items():
            (tmp_path / name).write_bytes(payload)
            tar.add(tmp_path / name, arcname=name)
    with fileio.open(tmp_path / "t.tar") as f, tarfile.open(fileobj=f) as tar:
        assert {m.name: tar.extractfile(m).read() for m in tar.getmembers()} == members

    with zipfile.ZipFile(tmp_path / "z.zip", "w", zipfile.ZIP_DEFLATED) as z:
        for name, payload in members.items():
            z.writestr(name, payload)
    with MappedFileIO(tmp_path / "z.zip") as raw, zipfile.ZipFile(raw) as z:
        assert {n: z.read(n) for n in z.namelist()} == members
        assert z.testzip() is None


def test_a_bad_page_inside_a_tar_member_raises_not_kills(tmp_path) -> None:
    payload = inject.pattern(8 * PAGE)
    (tmp_path / "m.bin").write_bytes(payload)
    with tarfile.open(tmp_path / "t.tar", "w") as tar:
        tar.add(tmp_path / "m.bin", arcname="m.bin")
    with MappedFile(tmp_path / "t.tar") as mf:
        assert inject._libc.mprotect(mf.address + 5 * PAGE, PAGE, 0) == 0
        with io.BufferedReader(MappedFileIO(mf, closefd=False)) as f, \
                tarfile.open(fileobj=f) as tar:
            member = tar.extractfile("m.bin")
            with pytest.raises(MemoryFaultError) as info:
                member.read()
        assert info.value.offset == 5 * PAGE and info.value.cause == "protection"
        assert not mf.closed                   # closefd=False: the MappedFile stays


def test_write_through_the_file_object_and_an_open_descriptor(data_file) -> None:
    path, data = data_file
    fd = os.open(path, os.O_RDWR)
    try:
        with fileio.open(fd, "rb+", closefd=False) as f:
            f.seek(len(data) - 4)
            f.write(b"ABCD")
            f.flush()
            f.raw.sync()
            f.seek(0)
            assert f.read(3) == data[:3]
        with MappedFileIO(fd, "r+", closefd=False) as raw:
            assert raw.seek(0, io.SEEK_END) == len(data)
            raw.seek(-8, io.SEEK_END)
            assert raw.write(b"1234567890") == 8                # short: never extends
            with pytest.raises(OSError) as info:
                raw.write(b"9")
            assert info.value.errno == errno.EFBIG and info.value.filename == str(path)
        f = fileio.open(fd, "rb+", closefd=False)               # buffered: raises, no hang
        f.seek(-2, io.SEEK_END)
        f.write(b"xyz")
        with pytest.raises(OSError):
            f.flush()
        with pytest.raises(OSError):
            f.close()                                           # the buffer still holds z
        assert f.closed
    finally:
        os.close(fd)
    assert path.read_bytes() == data[:-8] + b"123456xy"
