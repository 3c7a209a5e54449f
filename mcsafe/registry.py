"""Other modules' tables: register a shared object built with extable.h and
``extable build``, so that faults in its own protected routines are recovered
through its own table.

The object is the one that is loaded, never what a name resolves to now: a
``ctypes.CDLL`` is found by its handle (its link map), an extension module by
an address inside it (its ``PyModuleDef``), a path by the file's identity (its
device and inode, as the loaded mapping has them), and only a path that no
loaded object is mapped from is loaded first. Anything but a regular file is
refused before it is opened. The file is read only through the mapping's own
file (``/proc/self/map_files``; without the capability that needs, the path,
once its device and inode are proved to be the mapping's), and checked once
more against the object as loaded (the same program headers, and the same GNU
build-id where either has one). The table is then taken from the
loaded memory (a loaded section; the C core proves every byte lies in one
readable segment before reading it) or from that file (a section ``extable
build --add-section`` added), and the C core publishes a private, read-only
copy.
"""

from __future__ import annotations

import ctypes
import os
import stat
import struct
import threading
from dataclasses import dataclass
from types import ModuleType
from typing import BinaryIO, NamedTuple, Union

from . import _lazy_lock, _mcsafe

ModuleOrPath = Union[ModuleType, ctypes.CDLL, str, "os.PathLike[str]"]

TABLE_SECTION = "extable_table"
SHF_ALLOC = 0x2
NT_GNU_BUILD_ID = 3
MAX_TABLE_BYTES = 64 << 20
PT_LOAD = 1
RTLD_DI_LINKMAP = 2


class TableError(ValueError):
    """A module's table was refused; nothing of it was published."""


# Guards only the two dicts, never I/O; a forked child gets a fresh one.
_lock = threading.Lock()
_handles: dict[int, ctypes.CDLL] = {}         # objects we dlopen'ed, kept loaded, by anchor
_keys: dict[int, int] = {}                    # an object's anchor -> the C registry's key


# Held while pyelftools is first imported, and across fork(): a child forked
# while another thread was inside that import would find the module half
# initialised and its import lock held forever (CPython resets only the global
# import lock in a child). It is the lock of mcsafe's lazy imports, whose fork
# hooks are registered by import mcsafe: this module is itself imported lazily,
# maybe while another thread forks, so hooks of its own could miss a fork's start.
# Imported lazily: it doubles the time of import mcsafe.
_elf: tuple[type, type[Exception]] | None = None


def _elftools() -> tuple[type, type[Exception]]:
    """pyelftools' ELFFile and ELFError."""
    global _elf
    if _elf is None:
        with _lazy_lock:
            from elftools.common.exceptions import ELFError
            from elftools.elf.elffile import ELFFile

            _elf = (ELFFile, ELFError)
    return _elf


def _reset_after_fork() -> None:
    global _lock
    _lock = threading.Lock()
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


os.register_at_fork(after_in_child=_reset_after_fork)


@dataclass(frozen=True)
class LoadedObject:
    """One loaded object, as the dynamic linker mapped it."""

    name: str
    bias: int
    anchor: int                  # an address inside it: its lowest PT_LOAD
    phdrs: bytes                 # its program headers, as loaded
    build_id: bytes | None

    def contains(self, address: int) -> bool:
        """Whether address lies in one of its PT_LOAD segments."""
        for i in range(0, len(self.phdrs) - 55, 56):              # Elf64_Phdr
            p_type, _flags, _off, vaddr, _paddr, _filesz, memsz = struct.unpack_from(
                "<IIQQQQQ", self.phdrs, i)
            if p_type == PT_LOAD and 0 <= address - (self.bias + vaddr) < memsz:
                return True
        return False


class Mapping(NamedTuple):
    """One line of /proc/self/maps."""

    start: int
    end: int
    dev: int
    inode: int
    path: str


def _mappings() -> list[Mapping]:
    out = []
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split(maxsplit=5)
            start, end = (int(x, 16) for x in fields[0].split("-"))
            major, minor = (int(x, 16) for x in fields[3].split(":"))
            path = fields[5].rstrip("\n") if len(fields) > 5 else ""
            out.append(Mapping(start, end, os.makedev(major, minor), int(fields[4]), path))
    return out


def _objects() -> list[LoadedObject]:
    return [LoadedObject(*o) for o in _mcsafe._loaded_objects()]


def _object_at(address: int) -> LoadedObject | None:
    return next((o for o in _objects() if o.contains(address)), None)


class _LinkMap(ctypes.Structure):           # <link.h>: the fields every libc has
    _fields_ = [("l_addr", ctypes.c_size_t), ("l_name", ctypes.c_char_p),
                ("l_ld", ctypes.c_void_p), ("l_next", ctypes.c_void_p),
                ("l_prev", ctypes.c_void_p)]


def _of_handle(lib: ctypes.CDLL) -> tuple[LoadedObject, str]:
    """The object a dlopen handle is, by its link map (dlinfo), and its name."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.dlinfo.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
    link = ctypes.POINTER(_LinkMap)()
    if libc.dlinfo(lib._handle, RTLD_DI_LINKMAP, ctypes.byref(link)) != 0 or not link:
        raise TableError(f"{lib._name}: not a loaded object (dlinfo refused its handle)")
    name = (link.contents.l_name or b"").decode("utf-8", "surrogateescape") or str(lib._name)
    obj = _object_at(link.contents.l_ld or 0)
    if obj is None:
        raise TableError(f"{name}: loaded, but not found among the loaded objects")
    return obj, name


def _of_module(module: ModuleType) -> tuple[LoadedObject, str]:
    """An extension module's object: the one its PyModuleDef lies in."""
    get_def = ctypes.pythonapi.PyModule_GetDef
    get_def.restype, get_def.argtypes = ctypes.c_void_p, [ctypes.py_object]
    address = get_def(module)
    obj = _object_at(address) if address else None
    if obj is None:
        raise TableError(f"module {module.__name__} is not an extension module: it has no "
                         "loaded object of its own")
    return obj, getattr(module, "__file__", None) or obj.name


def _replaced(path: str) -> TableError:
    return TableError(f"{path}: the file is not the loaded object (another file is at its "
                      "path now): was it replaced after it was loaded?")


def _of_path(path: str, load: bool) -> tuple[LoadedObject, str]:
    """The object mapped from the file at path (by device and inode), loading it
    first if none is and `load` says so; anything but a regular file is refused
    before it is opened (dlopen would wait forever on a FIFO)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise TableError(f"{path}: cannot read: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise TableError(f"{path}: not a regular file ({_file_kind(st.st_mode)})")
    for m in _mappings():
        if (m.dev, m.inode) == (st.st_dev, st.st_ino):
            obj = _object_at(m.start)
            if obj is not None:
                return obj, path
    real = os.path.realpath(path)
    if any(o.name and os.path.realpath(o.name) == real for o in _objects()):
        raise _replaced(path)
    if not load:
        raise TableError(f"{path}: not loaded")
    try:
        handle = ctypes.CDLL(path)
    except OSError as exc:
        raise TableError(f"{path}: cannot load: {exc}") from None
    obj, _ = _of_handle(handle)
    with _lock:
        _handles.setdefault(obj.anchor, handle)
    return obj, path


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return f"mode {mode:o}"


def _identify(module: ModuleOrPath, load: bool = True) -> tuple[LoadedObject, str]:
    """The loaded object module names, and the name to give it in messages."""
    if isinstance(module, ModuleType):
        return _of_module(module)
    if isinstance(module, ctypes.CDLL):
        return _of_handle(module)
    return _of_path(os.fspath(module), load)


def _open_mapped(obj: LoadedObject, path: str) -> BinaryIO:
    """The file the object is mapped from: through /proc/self/map_files, which
    opens exactly that file; without the capability that needs, the file at
    path, once its device and inode are the mapping's."""
    m = next((m for m in _mappings() if m.start <= obj.anchor < m.end), None)
    if m is None or m.inode == 0:
        raise TableError(f"{path}: the loaded object is not mapped from a file")
    try:
        return open(os.open(f"/proc/self/map_files/{m.start:x}-{m.end:x}",
                            os.O_RDONLY | os.O_CLOEXEC), "rb")
    except OSError:
        pass
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise TableError(f"{path}: cannot read: {exc.strerror}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != (m.dev, m.inode):
        os.close(fd)
        raise _replaced(path)
    return open(fd, "rb")


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


def _register_object(path: str, obj: LoadedObject) -> int:
    """Prove the object's file, find its table and publish it; the C registry's key."""
    ELFFile, ELFError = _elftools()
    name = os.path.basename(path)
    try:
        with _open_mapped(obj, path) as f:
            elf = ELFFile(f)
            _prove_identity(f, elf, path, obj)
            sec = elf.get_section_by_name(TABLE_SECTION)
            if sec is None:
                raise TableError(f"{path}: no {TABLE_SECTION!r} section: reserve one with "
                                 "EXTABLE_RESERVE() and run extable build (or extable build "
                                 "--add-section)")
            if sec["sh_flags"] & SHF_ALLOC:
                address, size = obj.bias + int(sec["sh_addr"]), int(sec["sh_size"])
                if not 0 < address < 1 << 64:
                    raise TableError(f"{path}: section {TABLE_SECTION!r} is at an impossible "
                                     f"address {address:#x}")
                blob = None
            else:
                size = sec["sh_size"]
                if size > MAX_TABLE_BYTES or sec["sh_offset"] + size > os.fstat(f.fileno()).st_size:
                    raise TableError(f"{path}: section {TABLE_SECTION!r} reaches past the file")
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

    module is an extension module, a ctypes.CDLL, or a path (loaded first if no
    loaded object is mapped from that file, and then kept loaded). Raises
    TableError, publishing nothing, if it is not a regular file, if the file is
    not the object that is loaded, or if the table is missing, damaged, outside
    the object's memory, for another machine, unsafe, or points outside the
    module's code. Each registration holds the module loaded (a dlclose leaves it
    mapped) until its unregister(); registering twice needs two.
    """
    obj, path = _identify(module)
    key = _register_object(path, obj)
    with _lock:
        _keys[obj.anchor] = key


def unregister(module: ModuleOrPath) -> bool:
    """Drop one registration, and its hold on the module; False if none was held.

    mcsafe's own table is never removed."""
    try:
        obj, _ = _identify(module, load=False)
    except TableError:
        return False
    key = _keys.get(obj.anchor)
    return key is not None and _mcsafe._unregister_table(key)


def _key_of(module: ModuleOrPath) -> int | None:
    """The C registry's key of module's registration (for tests), or None."""
    return _keys.get(_identify(module, load=False)[0].anchor)
