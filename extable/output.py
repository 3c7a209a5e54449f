"""A build's output file: a copy of the input, changed, then put in place atomically.

The output starts as a copy of the input in a temporary file next to the target.
The copy is the kernel's (``copy_file_range``) and needs nothing from the table,
so it runs in a thread from the moment the output is opened, and is flushed to
disk there: while the table is compiled (and numpy imported), the 100 MB of a
large library are copied and written out on the other core, and the commit's
fsync has only the table left to write. :mod:`extable.writer` writes the table
into the copy, and :meth:`Output.commit` fsyncs it and renames it onto the
target; leaving the ``with`` block any other way removes it. Nothing is ever
half written.
"""

from __future__ import annotations

import os
import tempfile
import threading

from .append import copy_file
from .elf import ET_REL, ElfImage
from .errors import ExtableError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import IO, Callable


class Output:
    """The output of ``build``, being written: a context manager.

    The temporary file takes the input's mode. When the target is the input itself
    (``--in-place``) it also keeps the owner, and a file with several hard links is
    rewritten through its inode, as objcopy, strip and patchelf do, so that every name
    sees the result; otherwise the temporary file is renamed onto the target,
    atomically. With ``in_place``, a target that is no longer that file (it was
    replaced or removed meanwhile) is refused rather than overwritten.
    """

    def __init__(self, image: ElfImage, target: str, in_place: bool = False) -> None:
        self.image, self.target, self.in_place = image, target, in_place
        #: The input as it was opened: the file that is copied, whatever its path names now.
        self.like = os.fstat(image.file.fileno())
        self.folder = os.path.dirname(os.path.abspath(target))
        try:
            fd, self.path = tempfile.mkstemp(prefix=".extable-", dir=self.folder)
        except OSError as exc:
            raise ExtableError(f"cannot write: {exc.strerror}", target) from None
        self._file: IO[bytes] = open(fd, "r+b")
        self._copied: int | BaseException = 0
        self._copier = threading.Thread(target=self._copy, name="extable: copy the input")
        self._copier.start()
        self._done = False

    def _copy(self) -> None:
        try:
            self._copied = copy_file(self.image.file, self._file)
            # On disk already, so that the commit's fsync has only the table to write.
            os.fdatasync(self._file.fileno())
        except BaseException as exc:        # raised again in the thread that waits for it
            self._copied = exc

    def __enter__(self) -> Output:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if not self._done:
            self.discard()

    def copy(self) -> IO[bytes]:
        """The temporary file, once it holds the whole input (an error if the input
        changed size meanwhile, or the copy failed)."""
        self._copier.join()
        if isinstance(self._copied, OSError):
            raise ExtableError(f"cannot write: {self._copied.strerror}", self.target)
        if isinstance(self._copied, BaseException):
            raise self._copied
        if self._copied != self.image.size:
            raise ExtableError("the file changed size while it was being copied",
                               self.image.path)
        return self._file

    def commit(self, before_commit: Callable[[], None] | None = None) -> None:
        """Put the finished temporary file in place. ``before_commit`` runs once the
        result is complete, just before it is put in place: if it raises, nothing is
        written."""
        try:
            self.copy()
            self._file.flush()
            same = self._same_file()
            if self.in_place and same is None:
                raise ExtableError("the file was replaced or removed while extable read it: "
                                   "nothing written", self.target)
            if same is not None:
                _chown(self.path, same)        # before chmod: chown clears set-id bits
            os.chmod(self.path, self.like.st_mode & 0o7777)
            os.fsync(self._file.fileno())
            self._file.close()
            if before_commit is not None:
                before_commit()
            if same is not None and same.st_nlink > 1:
                _rewrite_inode(self.path, self.target)
                os.unlink(self.path)
            else:
                os.replace(self.path, self.target)
        except OSError as exc:
            self.discard()
            raise ExtableError(f"cannot write: {exc.strerror}", self.target) from None
        except BaseException:
            self.discard()
            raise
        self._done = True
        try:
            dirfd = os.open(self.folder, os.O_RDONLY)
            try:
                os.fsync(dirfd)
            finally:
                os.close(dirfd)
        except OSError:
            pass

    def discard(self) -> None:
        """Remove the temporary file (after the copy into it has ended)."""
        self._done = True
        self._copier.join()
        self._file.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass

    def _same_file(self) -> os.stat_result | None:
        """The target's stat if it is the input (an in-place rewrite), else None."""
        try:
            st = os.stat(self.target)
        except OSError:
            return None
        if (st.st_dev, st.st_ino) != (self.like.st_dev, self.like.st_ino):
            return None
        return st


def _chown(path: str, like: os.stat_result) -> None:
    try:
        os.chown(path, like.st_uid, like.st_gid)
    except PermissionError:          # not root and not our file: keep our own ownership
        pass


def _rewrite_inode(src: str, target: str) -> None:
    """Overwrite target's bytes with src's, keeping target's inode (and so its other
    names). Not atomic: binutils' smart_rename makes the same trade for linked files."""
    with open(src, "rb") as s, open(target, "r+b") as t:
        size, old = os.fstat(s.fileno()).st_size, os.fstat(t.fileno()).st_size
        if size > old:
            # Claim the space first: running out of it half way would leave the file
            # neither old nor new.
            try:
                os.posix_fallocate(t.fileno(), 0, size)
            except OSError:
                t.truncate(old)
                raise
        copy_file(s, t)
        t.truncate(size)
        os.fsync(t.fileno())


def check_target(image: ElfImage, output: str | None, in_place: bool) -> str:
    """The path to write: the input only with in_place, never by accident."""
    if image.type == ET_REL:
        raise ExtableError("a relocatable object (ET_REL) has no final addresses: build the "
                           "table into the linked library or executable", image.path)
    if image.is_separate_debug:
        raise ExtableError("a separate debug file (its code sections hold no bytes): build "
                           "the table into the binary it was split from", image.path)
    if in_place:
        if output is not None:
            raise ExtableError("give either -o OUT or --in-place, not both", image.path)
        return os.path.realpath(image.path)    # a symlink stays one: its target is rewritten
    if output is None:
        raise ExtableError("no output: give -o OUT or --in-place", image.path)
    if os.path.exists(output) and os.path.samefile(output, image.path):
        raise ExtableError("output is the input file: use --in-place to modify it", output)
    if os.path.exists(output) and not os.path.isfile(output):
        # The result is renamed into place: that would replace a device or FIFO (as
        # root, -o /dev/null) with a regular file.
        raise ExtableError("output exists and is not a regular file", output)
    return output
