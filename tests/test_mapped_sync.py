"""MappedFile.sync()/flush() (item 8 of issue 10), on a file system whose
write-back fails: ext4 on a loop device whose backing file lives on a tmpfs too
small for it. (This kernel has no device mapper, so no dm-error target.)"""

from __future__ import annotations

import errno
import shutil
import subprocess
from pathlib import Path

import pytest

from mcsafe import MappedFile, inject
from mcsafe.fileio import MappedFileIO

PAGE = inject.PAGE


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True)


@pytest.fixture
def failing_fs(tmp_path):
    """A mounted ext4 of 64 MiB whose disk can take only about 4 MiB of writes:
    the page cache accepts dirty pages that write-back then cannot store."""
    if shutil.which("losetup") is None or shutil.which("mkfs.ext4") is None:
        pytest.skip("losetup or mkfs.ext4 missing on this machine")
    small, mnt = tmp_path / "small", tmp_path / "mnt"
    small.mkdir()
    mnt.mkdir()
    undo: list[list[str]] = []
    try:
        done = _run("mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(small))
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()!r}")
        undo.append(["umount", "-l", str(small)])
        with open(small / "disk", "wb") as f:
            f.truncate(64 << 20)
        done = _run("losetup", "--find", "--show", str(small / "disk"))
        if done.returncode:
            pytest.skip(f"no loop device on this machine: {done.stderr.strip()!r}")
        dev = done.stdout.strip()
        undo.append(["losetup", "-d", dev])
        done = _run("mkfs.ext4", "-q", "-F", "-O", "^has_journal", "-E",
                    "lazy_itable_init=1,nodiscard", dev)
        assert done.returncode == 0, done.stderr
        done = _run("mount", "-o", "errors=continue", dev, str(mnt))
        if done.returncode:
            pytest.skip(f"cannot mount ext4 from a loop device: {done.stderr.strip()!r}")
        undo.append(["umount", "-l", str(mnt)])
        yield mnt
    finally:
        for cmd in reversed(undo):
            _run(*cmd)


def test_a_write_back_error_is_an_oserror_from_sync(failing_fs: Path) -> None:
    path = failing_fs / "data"
    with open(path, "wb") as f:
        f.truncate(16 << 20)
    with MappedFile(path, "r+") as mf:
        assert mf.write(b"d" * (16 << 20), 0) == 16 << 20      # the page cache takes it
        with pytest.raises(OSError) as info:
            mf.sync()
        assert info.value.errno in (errno.EIO, errno.ENOSPC)
        assert info.value.filename == str(path) and "msync" in str(info.value)
        with pytest.raises(OSError):
            mf.flush()                                           # still not on the disk
        assert mf.bad_ranges() == []


def test_sync_and_flush_on_a_healthy_file(tmp_path) -> None:
    path = tmp_path / "f"
    path.write_bytes(bytes(8 * PAGE))
    with MappedFile(path, "r+") as mf:
        assert mf.write(b"x" * 10, 3 * PAGE + 5) == 10
        mf.sync(3 * PAGE + 5, 10)
        mf.sync(0, 0)
        mf.sync(7 * PAGE, 100 * PAGE)                           # clamped to the file
        mf.flush()
        with pytest.raises(ValueError):
            mf.sync(-1)
    with MappedFile(path) as mf:
        mf.flush()                                              # mode 'r': nothing to do
        assert mf.read(10, 3 * PAGE + 5) == b"x" * 10
    with MappedFileIO(path, "r+") as f:
        f.write(b"y")
        f.flush()
        f.sync()
    assert path.read_bytes()[:1] == b"y"
