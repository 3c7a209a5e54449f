"""Other modules' tables: register a shared object built with extable.h and
``extable build``, so that faults in its own protected routines are recovered
through its own table."""

from __future__ import annotations

import ctypes
import os
import threading
from types import ModuleType
from typing import Union

from . import _mcsafe

ModuleOrPath = Union[ModuleType, ctypes.CDLL, str, "os.PathLike[str]"]

TABLE_SECTION = "extable_table"


class TableError(ValueError):
    """A module's table was refused; nothing of it was published."""


_lock = threading.Lock()
_loaded: dict[str, ctypes.CDLL] = {}          # objects we dlopen'ed, kept loaded
_registered: dict[str, int] = {}              # real path -> table address


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


def _locate(path: str) -> tuple[int, int]:
    """(address, size) of the loaded table section of the object at path.

    Only the section headers are read (pyelftools), so registering needs neither
    numpy nor the rest of extable."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    try:
        with open(path, "rb") as f:
            sec = ELFFile(f).get_section_by_name(TABLE_SECTION)
            if sec is None or not sec["sh_flags"] & 0x2:          # SHF_ALLOC
                raise TableError(f"{path}: no loaded {TABLE_SECTION!r} section: reserve one "
                                 "with EXTABLE_RESERVE() and run extable build")
            vaddr, size = sec["sh_addr"], sec["sh_size"]
    except OSError as exc:
        raise TableError(f"{path}: cannot read: {exc.strerror}") from None
    except (ELFError, ValueError, KeyError, IndexError) as exc:
        raise TableError(f"{path}: not a readable ELF file: {exc}") from None
    base = _mcsafe._object_base(path)
    if base is None:
        try:
            _loaded[path] = ctypes.CDLL(path)
        except OSError as exc:
            raise TableError(f"{path}: cannot load: {exc}") from None
        base = _mcsafe._object_base(path)
        if base is None:
            raise TableError(f"{path}: loaded, but not found among the loaded objects")
    return base + vaddr, size


def register(module: ModuleOrPath) -> None:
    """Validate the module's table and let the handler search it.

    The module is loaded first if it is a path that is not loaded yet (and then
    stays loaded). Raises TableError, publishing nothing, if the table is
    missing, damaged, for another machine, or points outside the module's code.
    """
    path = _path_of(module)
    with _lock:
        address, size = _locate(path)
        try:
            _mcsafe._register_table(address, size, os.path.basename(path))
        except ValueError as exc:
            raise TableError(f"{path}: {exc}") from None
        _registered[path] = address


def unregister(module: ModuleOrPath) -> bool:
    """Stop searching the module's table (before unloading it); False if it was not registered."""
    path = _path_of(module)
    with _lock:
        address = _registered.pop(path, None)
        return address is not None and _mcsafe._unregister_table(address)
