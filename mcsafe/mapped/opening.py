"""Opening a file for MappedFile, and refusing what cannot be mapped."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import stat

from ._sys import libc, oserror

HUGETLBFS_MAGIC = 0x958458F6
# File systems whose files have no pages to map, by statfs f_type.
_PSEUDO_FS = {0x9FA0: "procfs", 0x62656572: "sysfs", 0x64626720: "debugfs",
              0x74726163: "tracefs", 0x27E0EB: "cgroup", 0x63677270: "cgroup2",
              0x73636673: "securityfs", 0x6E736673: "nsfs", 0xCAFE4A11: "bpf"}
_KINDS = {stat.S_IFDIR: "a directory", stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device",
          stat.S_IFSOCK: "a socket", stat.S_IFLNK: "a symbolic link"}


def open_file(file: str | os.PathLike[str] | int, mode: str) -> tuple[int, str]:
    """Open without blocking (a FIFO would), and refuse what is not a file: the
    descriptor (MappedFile's own, also for a descriptor passed in, which is
    opened again through /proc/self/fd) and the path to name in errors."""
    flags = (os.O_RDONLY if mode == "r" else os.O_RDWR) | os.O_CLOEXEC | os.O_NONBLOCK | \
        os.O_NOCTTY
    if isinstance(file, int):
        path = _fd_path(file, mode)
        _check_kind(os.fstat(file), path)
        fd = os.open(f"/proc/self/fd/{file}", flags)
    else:
        path = os.fspath(file)
        fd = os.open(path, flags)
    try:
        _check_kind(os.fstat(fd), path)
        _check_fs(fd, path)
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd, path


def fs_type(fd: int) -> int:
    """The statfs f_type of fd's file system (0 if unknown)."""
    buf = ctypes.create_string_buffer(256)       # struct statfs; f_type comes first
    if libc.fstatfs(fd, buf) != 0:
        return 0
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


def _fd_path(fd: int, mode: str) -> str:
    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    except OSError as exc:
        raise oserror(exc.errno or errno.EBADF, f"fd {fd}", "fcntl") from None
    # The file is opened again through /proc, which would grant what the
    # descriptor was not opened for: use it only for that, as open(fd) would.
    if flags & os.O_ACCMODE == os.O_WRONLY:
        raise oserror(errno.EBADF, f"fd {fd}", "not open for reading (O_WRONLY)")
    if mode == "r+" and flags & os.O_ACCMODE != os.O_RDWR:
        raise oserror(errno.EBADF, f"fd {fd}", "mode 'r+' needs a descriptor open O_RDWR")
    if mode == "r+" and flags & os.O_APPEND:
        # FileIO.write and pwrite(2) on it write at the end; a mapping never extends
        # the file, so it would write elsewhere
        raise oserror(errno.EBADF, f"fd {fd}", "mode 'r+' of an O_APPEND descriptor, whose "
                      "writes go at the end (a mapping never extends the file)")
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return f"fd {fd}"


def _check_kind(st: os.stat_result, path: str) -> None:
    if stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode):
        return
    kind = _KINDS.get(stat.S_IFMT(st.st_mode), "not a regular file")
    raise OSError(errno.ENODEV if stat.S_ISCHR(st.st_mode) else errno.EINVAL,
                  f"{kind}, not a regular file or a block device: cannot be mapped", path)


def _check_fs(fd: int, path: str) -> None:
    """Refuse a file of procfs, sysfs and the like: its size is not its contents,
    and mapping it fails or shows nothing."""
    fs = _PSEUDO_FS.get(fs_type(fd))
    if fs:
        raise OSError(errno.ENODEV, f"a {fs} file, whose size is not its contents: "
                                    "cannot be mapped", path)
