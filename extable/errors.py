"""The errors the extable package raises: bad input, and a missing optional part."""

from __future__ import annotations

import os


class ExtableError(Exception):
    """Bad input: a file that cannot be read as we need, or a table that fails a check.

    ``str()`` is one line that names the file (when there is one) and the problem.
    """

    def __init__(self, message: str, path: str | os.PathLike[str] | None = None) -> None:
        self.path = None if path is None else os.fspath(path)
        self.message = message
        super().__init__(f"{self.path}: {message}" if self.path else message)


class CheckFailed(ExtableError):
    """A well-formed table that fails a consistency check (exit code 1, not 2)."""


class MissingExtra(ImportError):
    """A part of the package whose optional dependency is not installed.

    ``str()`` is one line naming the extra that installs it, as in
    ``an unwind rule needs numpy: pip install 'mcsafe[unwind]'``.
    """

    def __init__(self, feature: str, module: str, extra: str) -> None:
        super().__init__(f"{feature} needs {module}: pip install 'mcsafe[{extra}]'", name=module)
        self.feature = feature
        self.extra = extra


def missing_extra(exc: ModuleNotFoundError, module: str, feature: str, extra: str
                  ) -> ImportError:
    """What to raise when importing `module` failed with `exc`: MissingExtra when it
    is `module` itself that is not installed, else `exc` (a broken installation)."""
    return MissingExtra(feature, module, extra) if exc.name == module else exc
