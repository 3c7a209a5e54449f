"""mcsafe: a machine-check-safe copy for Python, recovered through compiled exception tables.

``copy(dst, src)`` copies like memcpy; when a page of either buffer faults
(poisoned memory, a mapping of a file that shrank, a protected page) it returns
the number of bytes copied before the fault instead of killing the process.
The recovery goes through the exception table that ``extable`` compiled into
this package's extension: the signal handler looks the faulting instruction up
and resumes the copy at its landing pad.

``import mcsafe`` loads the extension and its records only (PEP 562): MappedFile,
register() and the submodules (``arrays``, ``fileio``, ``formats``, ``inject``)
are imported when first used, so storage code pays at start-up for the copy alone.
"""

import _thread
import os as _os
import sys as _sys


def _is_the_command_starting() -> bool:
    """Whether this process is the ``mcsafe`` command being started: ``python -m
    mcsafe`` (runpy imports the package while argv[0] is still "-m"), or the console
    script an installer generates for ``mcsafe.cli:main``. A program of one's own
    that is merely named mcsafe and imports the library is not the command."""
    argv = getattr(_sys, "argv", None)      # an embedding host may have none
    if not argv:
        return False
    if argv[0] == "-m":
        return _module_run(getattr(_sys, "orig_argv", [])) == "mcsafe"
    if _os.path.basename(argv[0]) != "mcsafe":
        return False
    main = _sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if path is None or getattr(main, "__spec__", None) is not None:
        return False
    try:        # the script is a few lines: pip's, uv's, installer's template
        with open(path, "rb") as script:
            return b"\nfrom mcsafe.cli import main\n" in script.read(4096)
    except OSError:
        return False


def _module_run(orig_argv: list[str]) -> str | None:
    """The module `python -m MODULE` runs, found in the interpreter's own command
    line as CPython's getopt reads it: options in clusters ("-um", "-Bm"); -c, -m,
    -W and -X take an argument, the rest of the word or the next one; the first
    non-option ends the options; None if no -m comes first."""
    args = orig_argv[1:]
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg in ("-", "--") or not arg.startswith("-"):
            return None                 # a script, stdin, or "--" then a script
        if arg.startswith("--"):
            if arg == "--check-hash-based-pycs":    # the one long option taking a word
                i += 1
            continue
        for j in range(1, len(arg)):
            if arg[j] in "cmWX":
                value = arg[j + 1:]
                if not value and i < len(args):
                    value, i = args[i], i + 1
                if arg[j] in "cm":
                    return value if arg[j] == "m" else None
                break                   # -W, -X: the word's rest was the value
    return None


# A SIGINT before the command installs its stop handling (cli.stop) kills it as it
# kills cat: no KeyboardInterrupt and traceback from whichever import it hit. Only
# when Python's own handler is there: a SIGINT ignored since exec stays ignored.
# cli.main gives Python's handler back to a command without stop handling of its own.
_sigint_deferred = False
_gc_deferred = False
if _is_the_command_starting():
    import gc as _gc
    import signal as _signal

    # The command's start makes thousands of objects (modules, classes, the parser)
    # and none is garbage: the cyclic collector finds nothing there, in about 3 ms of
    # a 30 ms start. cli.main turns it on again before the command runs.
    if _gc.isenabled():
        _gc.disable()
        _gc_deferred = True

    if _signal.getsignal(_signal.SIGINT) is _signal.default_int_handler:
        _signal.signal(_signal.SIGINT, _signal.SIG_DFL)
        _sigint_deferred = True

from ._mcsafe import (GIL_RELEASE_BYTES, SMALL_COPY_BYTES, claimed_faults, copy, copy_report,
                      handler_installed, install, poison_log, published_table_count,
                      table_status)
from ._types import CopyResult, FaultInfo, MemoryFaultError, PoisonNotice

# typing costs more than the rest of import mcsafe: a name mypy knows instead.
TYPE_CHECKING = False
if TYPE_CHECKING:               # what the lazy names below are, for type checkers
    from typing_extensions import deprecated

    from . import arrays, fileio, formats, inject
    from .mapped import MappedFile
    from .registry import TableError, register, unregister

    @deprecated("published_tables() returns a count: use published_table_count()")
    def published_tables() -> int: ...

__version__ = "0.1.0"

# A name imported when first asked for: name -> (module, attribute or None for the module).
_LAZY = {
    "MappedFile": (".mapped", "MappedFile"),
    "TableError": (".registry", "TableError"),
    "register": (".registry", "register"),
    "unregister": (".registry", "unregister"),
    "arrays": (".arrays", None),
    "fileio": (".fileio", None),
    "formats": (".formats", None),
    "inject": (".inject", None),
}

# A lazy import runs under this lock, which a fork waits for: a child forked while
# another thread was half way through one would find the module half initialised,
# its import lock held forever (CPython resets only the global import lock in a
# child). Reentrant: a module imported lazily may ask for another lazy name.
# registry holds it too while it first imports pyelftools.
_lazy_lock = _thread.RLock()
_os.register_at_fork(before=_lazy_lock.acquire, after_in_parent=_lazy_lock.release,
                     after_in_child=_lazy_lock.release)

# Old name -> new name; each still works, with a DeprecationWarning.
_DEPRECATED = {"published_tables": "published_table_count"}


def _lazy_attribute(name: str) -> object:
    if name in _LAZY:
        import importlib

        module, attribute = _LAZY[name]
        with _lazy_lock:
            value: object = importlib.import_module(module, __name__)
            if attribute is not None:
                value = getattr(value, attribute)
            globals()[name] = value
        return value
    if name in _DEPRECATED:
        import warnings

        new = _DEPRECATED[name]
        warnings.warn(f"mcsafe.{name}() is deprecated: it returns a count; use "
                      f"mcsafe.{new}()", DeprecationWarning, stacklevel=2)
        return globals()[new]
    raise AttributeError(f"module 'mcsafe' has no attribute {name!r}")


if not TYPE_CHECKING:   # hidden from type checkers, so a misspelt name stays an error
    __getattr__ = _lazy_attribute
del TYPE_CHECKING


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


def get_include() -> list[str]:
    """Include folders for C or Cython code using mcsafe.h, _mcsafe.pxd or extable.h."""
    import os

    import extable

    here = os.path.dirname(os.path.abspath(__file__))
    return [os.path.join(here, "_core"), extable.include_dir()]


__all__ = ["GIL_RELEASE_BYTES", "SMALL_COPY_BYTES", "CopyResult", "FaultInfo", "MappedFile",
           "MemoryFaultError", "PoisonNotice", "TableError", "claimed_faults", "copy",
           "copy_report", "get_include", "handler_installed", "inject", "install", "poison_log",
           "published_table_count", "register", "table_status", "unregister"]
