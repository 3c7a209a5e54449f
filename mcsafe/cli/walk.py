"""The paths ``mcsafe scan`` is given, turned into the files it scans.

A named path is followed if it is a symbolic link (as ``find -H`` does); a named
directory is walked, depth first, each directory's entries in name order. While
walking, symbolic links are not followed (so no loop can form), and FIFOs,
sockets and devices are skipped with a note: a block device is scanned only when
named. ``--one-file-system`` keeps the walk on the file system of the path it
started from; ``--exclude`` patterns match an entry's name, or its whole path
when they hold a ``/``, and keep excluded directories unvisited.
"""

from __future__ import annotations

import errno
import os
import stat
from collections import namedtuple
from operator import itemgetter

_TARGET_DOC = """A file to scan: path as the user sees it; opened as name relative to dir_fd
(an open directory of the walk, valid until the next item is asked for) when
dir_fd is not None. named: given on the command line (followed if a link; a
block device is scanned). root_dev: the device the walk must stay on
(--one-file-system), or None."""
_FILES_DOC = """Regular files of one folder, in the walk's order (when the walk is asked for
batches): each at prefix + name, opened as name relative to dir_fd (valid until
the next item is asked for); root_dev as in Target."""
_NOTE_DOC = """Something the walk did not scan. status: 'skipped' (not a file to scan: said,
not an error) or 'error' (a path that could not be scanned)."""

# typing costs a scan's start more than the rest of its modules: type checkers read
# the records below, the interpreter builds them with collections.namedtuple (as
# mcsafe._types does). A name mypy knows: only checkers take this branch.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Iterator, NamedTuple, Sequence, Union

    class Target(NamedTuple):
        path: str
        name: str
        dir_fd: int | None = None
        named: bool = False
        root_dev: int | None = None

    class Note(NamedTuple):
        path: str
        status: str
        message: str
        kind: str | None = None

    class Files(NamedTuple):
        prefix: str
        names: list[str]
        dir_fd: int
        root_dev: int | None

    Item = Union[Target, Note, Files]
else:
    Target = namedtuple("Target", "path name dir_fd named root_dev", defaults=(None, False, None))
    Note = namedtuple("Note", "path status message kind", defaults=(None,))
    Files = namedtuple("Files", "prefix names dir_fd root_dev")
Target.__doc__, Note.__doc__, Files.__doc__ = _TARGET_DOC, _NOTE_DOC, _FILES_DOC

#: What a walk found that it does not scan, by the kind of file.
KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device",
         stat.S_IFBLK: "a block device", stat.S_IFLNK: "a symbolic link",
         stat.S_IFDIR: "a directory"}

_REG, _DIR, _LNK = stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK
_by_name = itemgetter(0)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW

#: File systems whose files' sizes are not their contents (or that hold none): a
#: walk that reaches one of their mount points does not go in.
PSEUDO_FS = {"proc", "sysfs", "debugfs", "tracefs", "securityfs", "cgroup", "cgroup2", "bpf",
             "configfs", "pstore", "efivarfs", "fusectl", "devpts", "mqueue", "binfmt_misc",
             "nsfs", "rpc_pipefs", "selinuxfs", "autofs"}


class Walk:
    """Iterate the targets and notes for some paths; counts what it passes over
    silently (symbolic links, other file systems, excluded entries). batch: the
    regular files met in a row in a folder come as one Files item instead of a
    Target each (named files are always Targets)."""

    def __init__(self, paths: Sequence[str], *, one_file_system: bool = False,
                 exclude: Sequence[str] = (), batch: bool = False) -> None:
        self.paths = list(paths)
        self.batch = batch
        self.one_file_system = one_file_system
        self.exclude = list(exclude)
        self.symlinks = 0
        self.other_fs = 0
        self.excluded = 0
        self._fs_types: dict[int, str] | None = None

    def excluded_name(self, path: str, name: str) -> bool:
        import fnmatch

        for pattern in self.exclude:
            if fnmatch.fnmatchcase(path if "/" in pattern else name, pattern):
                return True
        return False

    def __iter__(self) -> Iterator[Item]:
        for path in self.paths:
            yield from self._named(path)

    def _named(self, path: str) -> Iterator[Item]:
        if self.exclude and self.excluded_name(path, os.path.basename(path.rstrip("/")) or path):
            self.excluded += 1
            return
        try:
            st = os.stat(path)
        except OSError as exc:
            yield Note(path, "error", _strerror(exc))
            return
        if stat.S_ISDIR(st.st_mode):
            yield from self._tree(path, st.st_dev if self.one_file_system else None)
        elif stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode):
            yield Target(path, path, None, True, None)
        else:
            kind = KINDS.get(stat.S_IFMT(st.st_mode), "not a regular file")
            yield Note(path, "error", f"{kind}: not a regular file, block device or directory",
                       _kind_name(st.st_mode))

    def fs_type(self, dev: int) -> str | None:
        """The type of the file system on device dev (/proc/self/mountinfo)."""
        if self._fs_types is None or dev not in self._fs_types:
            self._fs_types = _mounted()
        return self._fs_types.get(dev)

    def _tree(self, top: str, root_dev: int | None) -> Iterator[Item]:
        """Depth first, one open directory at a time: a directory's entries are
        listed (and it is closed) before its subdirectories are visited."""
        pending: list[tuple[str, int | None]] = [(top, None)]
        while pending:
            path, parent_dev = pending.pop()
            try:
                # the named top is followed if a link; below it, nothing is
                fd = os.open(path, _DIR_FLAGS & ~os.O_NOFOLLOW if path == top else _DIR_FLAGS)
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP) and path != top:
                    yield Note(path, "vanished", "removed (or replaced) before it could be "
                               "listed")
                else:
                    yield Note(path, "error", f"cannot list: {_strerror(exc)}")
                continue
            try:
                dev = os.fstat(fd).st_dev
                if root_dev is not None and dev != root_dev:
                    self.other_fs += 1
                    continue
                if dev != parent_dev and self.fs_type(dev) in PSEUDO_FS:
                    yield Note(path, "skipped", f"a {self.fs_type(dev)} file system: its "
                               "files' sizes are not their contents", "file system")
                    continue
                try:
                    entries = _list(fd)
                    entries.sort(key=_by_name)   # names differ: a key of str sorts fastest
                except OSError as exc:
                    yield Note(path, "error", f"cannot list: {_strerror(exc)}")
                    continue
                subdirs = []
                prefix = path if path.endswith("/") else path + "/"
                files: list[str] = []           # (batch) regular files in a row
                exclude, batch = self.exclude, self.batch
                for name, kind in entries:
                    if exclude and self.excluded_name(prefix + name, name):
                        self.excluded += 1
                        continue
                    if kind == _REG:
                        if batch:
                            files.append(name)
                        else:
                            yield Target(prefix + name, name, fd, False, root_dev)
                        continue
                    if kind == _DIR:
                        subdirs.append((prefix + name, dev))
                        continue
                    if kind == _LNK:
                        self.symlinks += 1
                        continue
                    if files:                   # a note: the files before it come first
                        yield Files(prefix, files, fd, root_dev)
                        files = []
                    if kind is None:
                        yield Note(prefix + name, "vanished", "removed before it could be scanned")
                    else:
                        what = KINDS.get(kind, "not a regular file")
                        if kind == stat.S_IFBLK:
                            what += " (scanned only when named)"
                        yield Note(prefix + name, "skipped", what, _kind_name(kind))
                if files:
                    yield Files(prefix, files, fd, root_dev)
            finally:
                os.close(fd)
            pending.extend(reversed(subdirs))


def _mounted() -> dict[int, str]:
    """Device number -> file system type of every mount (/proc/self/mountinfo)."""
    out: dict[int, str] = {}
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                if " - " not in line or len(fields) < 3:
                    continue
                major, minor = fields[2].split(":")
                out[os.makedev(int(major), int(minor))] = line.split(" - ", 1)[1].split()[0]
    except (OSError, ValueError):
        pass
    return out


def _list(fd: int) -> list[tuple[str, int | None]]:
    """(name, file type) for each entry of the open directory fd; the type is
    None for an entry removed between the listing and its stat."""
    out = []
    with os.scandir(fd) as it:
        for entry in it:
            # A symbolic link is neither a file nor a folder unfollowed: the common
            # kinds are asked first (each a look at d_type, or an lstat where it is
            # DT_UNKNOWN)
            try:
                if entry.is_file(follow_symlinks=False):
                    kind = _REG
                elif entry.is_dir(follow_symlinks=False):
                    kind = _DIR
                elif entry.is_symlink():
                    kind = _LNK
                else:
                    kind = stat.S_IFMT(entry.stat(follow_symlinks=False).st_mode)
            except FileNotFoundError:
                kind = None
            out.append((entry.name, kind))
    return out


def _kind_name(mode: int) -> str:
    return {stat.S_IFIFO: "fifo", stat.S_IFSOCK: "socket", stat.S_IFCHR: "char device",
            stat.S_IFBLK: "block device", stat.S_IFLNK: "symlink",
            stat.S_IFDIR: "directory"}.get(stat.S_IFMT(mode), "other")


def _strerror(exc: OSError) -> str:
    return exc.strerror or str(exc)
