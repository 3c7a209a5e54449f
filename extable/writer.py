"""The writer: a table's bytes into an ELF file, atomically.

Two ways, as docs/FORMAT.md describes:

* into an existing section of the file (the reservation that ``extable.h``
  makes at compile time, or a section an earlier ``--add-section`` run added):
  the bytes are overwritten in a copy of the file and nothing else moves, as
  the kernel's ``scripts/sorttable.c`` does for ``__ex_table``;
* into a new non-loaded section appended after everything else, for files
  built without a reservation (:mod:`extable.append`, the layout of
  ``objcopy --add-section``): no segment and no loaded section moves, and the
  result is checked with an independent reader before it is kept.

Either way the output is written to a temporary file in the target folder,
fsynced and renamed into place; on any error nothing is left behind. The copy
is streamed (the kernel copies the file), so a 600 MB vmlinux costs neither
its size in memory nor more than a few seconds.
"""

from __future__ import annotations

import os
import tempfile
from typing import Callable

from .append import append_section, check_unchanged, copy_file
from .elf import ET_REL, ElfImage
from .errors import ExtableError
from .table import DEFAULT_SECTION, FLAG_LOADED, Table, encode, encoded_size, is_table

__all__ = ["DEFAULT_SECTION", "atomic_write", "check_target", "write_added_section",
           "write_into_section"]


def atomic_write(target: str, produce: Callable[[str], None],
                 like: os.stat_result | None = None, in_place: bool = False,
                 before_commit: Callable[[], None] | None = None) -> None:
    """Call produce(tmp_path) to fill a temporary file, then put it at target.

    The temporary file takes the mode of ``like`` (the input's stat). When target is
    that same file (``--in-place``) it also keeps the owner, and a file with several
    hard links is rewritten through its inode, as objcopy, strip and patchelf do, so
    that every name sees the result; otherwise the temporary file is renamed onto
    target, atomically. With ``in_place``, a target that is no longer that file (it was
    replaced or removed meanwhile) is refused rather than overwritten. ``before_commit``
    runs once the result is complete, just before it is put in place: if it raises,
    nothing is written.
    """
    folder = os.path.dirname(os.path.abspath(target))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".extable-", dir=folder)
    except OSError as exc:
        raise ExtableError(f"cannot write: {exc.strerror}", target) from None
    os.close(fd)
    try:
        produce(tmp)
        same = _same_file(target, like)
        if in_place and same is None:
            raise ExtableError("the file was replaced or removed while extable read it: "
                               "nothing written", target)
        if same is not None:
            _chown(tmp, same)              # before chmod: chown clears set-id bits
        if like is not None:
            os.chmod(tmp, like.st_mode & 0o7777)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        if before_commit is not None:
            before_commit()
        if same is not None and same.st_nlink > 1:
            _rewrite_inode(tmp, target)
            os.unlink(tmp)
        else:
            os.replace(tmp, target)
    except OSError as exc:
        _unlink(tmp)
        raise ExtableError(f"cannot write: {exc.strerror}", target) from None
    except BaseException:
        _unlink(tmp)
        raise
    try:
        dirfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)
    except OSError:
        pass


def _same_file(target: str, like: os.stat_result | None) -> os.stat_result | None:
    """target's stat if it is the file ``like`` describes (an in-place rewrite), else None."""
    try:
        st = os.stat(target)
    except OSError:
        return None
    if like is None or (st.st_dev, st.st_ino) != (like.st_dev, like.st_ino):
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


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


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


def table_bytes_for(image: ElfImage, table: Table, section_name: str) -> tuple[int, bytes]:
    """(file offset, bytes padded to the section) for writing into an existing section."""
    sec = image.section(section_name)
    if sec is None:
        raise ExtableError(f"no section {section_name!r} to write into: reserve one with "
                           "EXTABLE_RESERVE() from extable.h, or use --add-section", image.path)
    if not sec.has_file_bytes:
        raise ExtableError(f"section {section_name!r} is NOBITS: the reservation must be "
                           "const and occupy file bytes", image.path)
    current = image.section_bytes(sec)
    if not is_table(current) and current.count(0) != len(current):
        raise ExtableError(f"section {section_name!r} holds other data (neither an empty "
                           "reservation nor a table): refusing to overwrite it", image.path)
    table.flags = FLAG_LOADED if sec.alloc else 0
    table.self_vaddr = sec.addr if sec.alloc else 0
    blob = encode(table)
    if len(blob) > sec.size:
        raise ExtableError(f"table needs {len(blob)} bytes but section {section_name!r} holds "
                           f"{sec.size}: enlarge the reservation", image.path)
    return sec.offset, blob + b"\0" * (sec.size - len(blob))


def write_into_section(image: ElfImage, table: Table, target: str,
                       section_name: str = DEFAULT_SECTION, in_place: bool = False,
                       before_commit: Callable[[], None] | None = None) -> None:
    """Overwrite the named section's bytes in a copy of the file written to target."""
    offset, blob = table_bytes_for(image, table, section_name)

    def produce(tmp: str) -> None:
        with open(tmp, "wb") as out:
            if copy_file(image.file, out) != image.size:
                raise ExtableError("the file changed size while it was being copied",
                                   image.path)
            out.seek(offset)
            out.write(blob)

    atomic_write(target, produce, like=os.fstat(image.file.fileno()), in_place=in_place,
                 before_commit=before_commit)


def write_added_section(image: ElfImage, table: Table, target: str,
                        section_name: str = DEFAULT_SECTION, in_place: bool = False,
                        before_commit: Callable[[], None] | None = None) -> None:
    """Append a non-loaded section holding the table; refuse unless nothing else changed."""
    existing = image.section(section_name)
    if existing is not None and existing.size >= encoded_size(table):
        write_into_section(image, table, target, section_name, in_place,   # a re-run
                           before_commit)
        return
    if existing is not None:
        raise ExtableError(f"section {section_name!r} exists but is too small for the table",
                           image.path)
    table.flags, table.self_vaddr = 0, 0
    blob = encode(table)

    def produce(tmp: str) -> None:
        with open(tmp, "wb") as out:
            append_section(image, out, section_name, blob)
        try:
            check_unchanged(image.file, tmp, section_name, blob)
        except ExtableError as exc:
            raise ExtableError(f"--add-section failed, nothing written: {exc.message}",
                               image.path) from None

    atomic_write(target, produce, like=os.fstat(image.file.fileno()), in_place=in_place,
                 before_commit=before_commit)
