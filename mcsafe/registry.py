"""Other modules' tables: register a shared object built with extable.h and
``extable build``, so that faults in its own protected routines are recovered
through its own table.

The object is identified by what is loaded, never by what its path names now:
the loaded object whose name is the path is found among the loaded objects, and
the file is read only once it is proved to be that object (the same program
headers, and the same GNU build-id where either has one; for a table read from
the file of an object with no build-id, the same bytes in every executable
segment, as program headers alone do not tell two builds apart). The table is then
taken from the loaded memory (a loaded section; the C core proves every byte
lies in one readable segment before reading it) or from the file (a section
``extable build --add-section`` added), and the C core publishes a private,
read-only copy.
"""

from __future__ import annotations

import ctypes
import os
import threading
from dataclasses import dataclass
from types import ModuleType
from typing import BinaryIO, Union

from . import _mcsafe

ModuleOrPath = Union[ModuleType, ctypes.CDLL, str, "os.PathLike[str]"]

TABLE_SECTION = "extable_table"
SHF_ALLOC = 0x2
NT_GNU_BUILD_ID = 3
MAX_TABLE_BYTES = 64 << 20


class TableError(ValueError):
    """A module's table was refused; nothing of it was published."""


# Guards only the two dicts, never I/O; a forked child gets a fresh one.
_lock = threading.Lock()
_handles: dict[str, ctypes.CDLL] = {}         # objects we dlopen'ed, kept loaded
_keys: dict[str, int] = {}                    # real path -> the C registry's key


# Held while pyelftools is first imported, and across fork(): a child forked
# while another thread was inside that import would find the module half
# initialised and its import lock held forever (CPython resets only the global
# import lock in a child). Imported lazily: it doubles the time of import mcsafe.
_import_lock = threading.Lock()
_elf: tuple[type, type[Exception]] | None = None


def _elftools() -> tuple[type, type[Exception]]:
    """pyelftools' ELFFile and ELFError."""
    global _elf
    if _elf is None:
        with _import_lock:
            from elftools.common.exceptions import ELFError
            from elftools.elf.elffile import ELFFile

            _elf = (ELFFile, ELFError)
    return _elf


def _hold_for_fork() -> None:
    _import_lock.acquire()


def _release_after_fork() -> None:
    _import_lock.release()


def _reset_after_fork() -> None:
    global _lock, _import_lock
    _lock = threading.Lock()
    _import_lock = threading.Lock()
    # On Python < 3.12 every functools.cached_property holds one class-wide RLock
    # while it computes (CPython gh-87634), and pyelftools reads the file inside
    # two of them: a thread forked away mid-read would leave it held forever.
    import sys
    from functools import cached_property

    for name in ("elftools.elf.elffile", "elftools.elf.sections"):
        module = sys.modules.get(name)
        for cls in vars(module).values() if module else ():
            for attr in vars(cls).values() if isinstance(cls, type) else ():
                if isinstance(attr, cached_property) and hasattr(attr, "lock"):
                    attr.lock = threading.RLock()


os.register_at_fork(before=_hold_for_fork, after_in_parent=_release_after_fork,
                    after_in_child=_reset_after_fork)


@dataclass(frozen=True)
class LoadedObject:
    """One loaded object, as the dynamic linker mapped it."""

    name: str
    bias: int
    anchor: int                  # an address inside it: its lowest PT_LOAD
    phdrs: bytes                 # its program headers, as loaded
    build_id: bytes | None


def _path_of(obj: ModuleOrPath) -> str:
    if isinstance(obj, ModuleType):
        path = getattr(obj, "__file__", None)
        if not path:
            raise TableError(f"module {obj.__name__} has no file")
    elif isinstance(obj, ctypes.CDLL):
        path = obj._name
    else:
        path = os.fspath(obj)
    return os.path.realpath(path)


def _find_loaded(path: str) -> LoadedObject | None:
    for name, bias, anchor, phdrs, build_id in _mcsafe._loaded_objects():
        if name and os.path.realpath(name) == path:
            return LoadedObject(name, bias, anchor, phdrs, build_id)
    return None


def _loaded(path: str) -> LoadedObject:
    """The loaded object named by path, loading it first if it is not loaded."""
    obj = _find_loaded(path)
    if obj is None:
        try:
            handle = ctypes.CDLL(path)
        except OSError as exc:
            raise TableError(f"{path}: cannot load: {exc}") from None
        with _lock:
            _handles.setdefault(path, handle)
        obj = _find_loaded(path)
        if obj is None:
            raise TableError(f"{path}: loaded, but not found among the loaded objects")
    return obj


def _file_build_id(elf: object) -> bytes | None:
    for seg in elf.iter_segments():                      # type: ignore[attr-defined]
        if seg["p_type"] != "PT_NOTE":
            continue
        for note in seg.iter_notes():
            if note["n_type"] == "NT_GNU_BUILD_ID" and note["n_name"] == "GNU":
                return bytes.fromhex(note["n_desc"])
    return None


def _prove_identity(f: BinaryIO, elf: object, path: str, obj: LoadedObject) -> None:
    """Refuse unless the open file is the object that is loaded."""
    h = elf.header                                       # type: ignore[attr-defined]
    f.seek(h["e_phoff"])
    phdrs = f.read(h["e_phnum"] * h["e_phentsize"])
    why = None
    if phdrs != obj.phdrs:
        why = "its program headers differ"
    elif _file_build_id(elf) != obj.build_id:
        why = "its build-id differs"
    if why:
        raise TableError(f"{path}: the file is not the loaded object ({why}): was it "
                         "replaced after it was loaded?")


PF_X = 0x1


def _prove_code(f: BinaryIO, elf: object, path: str, obj: LoadedObject) -> None:
    """Refuse unless every executable segment of the file is, byte for byte, the
    code that is loaded: for a table read from a file with no build-id, whose
    program headers alone do not tell two builds apart."""
    from ._mcsafe import copy

    for seg in elf.iter_segments():                      # type: ignore[attr-defined]
        if seg["p_type"] != "PT_LOAD" or not seg["p_flags"] & PF_X:
            continue
        size = seg["p_filesz"]
        f.seek(seg["p_offset"])
        on_disk = f.read(size)
        loaded = bytearray(size)
        # mcsafe's own copy: a page gone from the mapping is a refusal, not a crash
        got = copy(loaded, (ctypes.c_char * size).from_address(obj.bias + seg["p_vaddr"]))
        if got != size or on_disk != loaded:
            raise TableError(f"{path}: the file is not the loaded object (it has no build-id, "
                             "and its code differs from the loaded code): was it replaced "
                             "after it was loaded?")


def _register_path(path: str, obj: LoadedObject) -> int:
    """Prove the file, find its table and publish it; the C registry's key."""
    ELFFile, ELFError = _elftools()
    name = os.path.basename(path)
    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            _prove_identity(f, elf, path, obj)
            sec = elf.get_section_by_name(TABLE_SECTION)
            if sec is None:
                raise TableError(f"{path}: no {TABLE_SECTION!r} section: reserve one with "
                                 "EXTABLE_RESERVE() and run extable build (or extable build "
                                 "--add-section)")
            if sec["sh_flags"] & SHF_ALLOC:
                address, size = obj.bias + sec["sh_addr"], sec["sh_size"]
                if not 0 < address < 1 << 64:
                    raise TableError(f"{path}: section {TABLE_SECTION!r} is at an impossible "
                                     f"address {address:#x}")
                blob = None
            else:
                size = sec["sh_size"]
                if size > MAX_TABLE_BYTES or sec["sh_offset"] + size > os.fstat(f.fileno()).st_size:
                    raise TableError(f"{path}: section {TABLE_SECTION!r} reaches past the file")
                if obj.build_id is None:
                    _prove_code(f, elf, path, obj)
                f.seek(sec["sh_offset"])
                blob = f.read(size)
    except OSError as exc:
        raise TableError(f"{path}: cannot read: {exc.strerror}") from None
    except (ELFError, ValueError, KeyError, IndexError, AttributeError) as exc:
        if isinstance(exc, TableError):
            raise
        raise TableError(f"{path}: not a readable ELF file: {exc}") from None
    try:
        if blob is None:
            _mcsafe._register_table(address, size, name)
            return address
        _mcsafe._register_file_table(blob, obj.anchor, name)
        return obj.anchor
    except ValueError as exc:
        raise TableError(f"{path}: {exc}") from None


def register(module: ModuleOrPath) -> None:
    """Validate the module's table and let the handler search a private copy of it.

    The module is loaded first if it is a path that is not loaded yet (and then
    stays loaded). Raises TableError, publishing nothing, if the file is not the
    object that is loaded, or the table is missing, damaged, outside the
    object's memory, for another machine, unsafe, or points outside the
    module's code. Registering twice needs two unregister() calls.
    """
    path = _path_of(module)
    key = _register_path(path, _loaded(path))
    with _lock:
        _keys[path] = key


def unregister(module: ModuleOrPath) -> bool:
    """Drop one registration (before unloading the module); False if none was held.

    mcsafe's own table is never removed."""
    key = _keys.get(_path_of(module))
    return key is not None and _mcsafe._unregister_table(key)
