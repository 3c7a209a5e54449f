"""The one error type the extable package raises for bad input."""

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
