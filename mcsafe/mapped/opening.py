"""Opening a file for MappedFile, and refusing what cannot be mapped."""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from collections import namedtuple

from ._sys import fs_type, oserror

TYPE_CHECKING = False           # typing: milliseconds a rescue need not pay

HUGETLBFS_MAGIC = 0x958458F6
# File systems whose files' size can change behind the kernel's back, by statfs
# f_type: another client (of the server, or a node of the cluster) cuts a file,
# and the kernel learns of it at its next look at the server (a short read, new
# attributes), setting the size without unmapping the pages past the cut
# (truncate_pagecache() runs only for a cut the kernel itself makes). On these
# no probe proves anything: every read asks the size after its copy.
SIZE_FROM_ELSEWHERE = frozenset({
    0x65735546,     # FUSE (fuseblk and virtiofs too): fuse_short_read() sets i_size alone
    0x6969,         # NFS: nfs_update_inode() sets it from the server's attributes
    0xFF534D42, 0xFE534D42, 0x517B,     # CIFS, SMB2/3, smbfs
    0x01021997,     # 9p (v9fs_stat2inode)
    0x00C36400,     # Ceph (its truncation of the page cache is queued, done later)
    0x6B414653, 0x5346414F,             # kAFS, OpenAFS
    0x73757245,     # Coda
    0x20030528,     # OrangeFS
    0x0BD00BD0,     # Lustre (out of tree)
    0x47504653,     # IBM Storage Scale (GPFS, out of tree)
    0x01161970, 0x7461636F,             # GFS2, OCFS2: a cut on another node
    0x786F4256,     # vboxsf: the host cuts a shared folder's file (vbsf_update_inode)
    0x19830326,     # BeeGFS (out of tree): another client, through the metadata server
})
# File systems whose files have no pages to map, by statfs f_type.
_PSEUDO_FS = {0x9FA0: "procfs", 0x62656572: "sysfs", 0x64626720: "debugfs",
              0x74726163: "tracefs", 0x27E0EB: "cgroup", 0x63677270: "cgroup2",
              0x73636673: "securityfs", 0x6E736673: "nsfs", 0xCAFE4A11: "bpf"}
_KINDS = {stat.S_IFDIR: "a directory", stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device",
          stat.S_IFSOCK: "a socket", stat.S_IFLNK: "a symbolic link"}


if TYPE_CHECKING:
    from typing import NamedTuple

    class Opened(NamedTuple):
        """A file open for MappedFile: its descriptor (MappedFile's own), the path to
        name in errors, whether it is a regular file (else a block device), and its
        file system's statfs f_type (0 if unknown)."""

        fd: int
        path: str
        regular: bool
        fs: int
else:
    Opened = namedtuple("Opened", "fd path regular fs")


def open_file(file: str | os.PathLike[str] | int, mode: str) -> Opened:
    """Open without blocking (a FIFO would), and refuse what is not a file. A
    descriptor passed in stays the caller's: its file is opened again through
    /proc/self/fd."""
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
        st = os.fstat(fd)
        _check_kind(st, path)
        fs = fs_type(fd)
        _check_fs(fs, path)
        # O_NONBLOCK is the only flag F_SETFL changes that was asked for
        fcntl.fcntl(fd, fcntl.F_SETFL, 0)
    except BaseException:
        os.close(fd)
        raise
    return Opened(fd, path, stat.S_ISREG(st.st_mode), fs)


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


def _check_fs(magic: int, path: str) -> None:
    """Refuse a file of procfs, sysfs and the like (by statfs f_type): its size is
    not its contents, and mapping it fails or shows nothing."""
    fs = _PSEUDO_FS.get(magic)
    if fs:
        raise OSError(errno.ENODEV, f"a {fs} file, whose size is not its contents: "
                                    "cannot be mapped", path)
