"""mcsafe's pytest plugin (entry point ``pytest11``, name ``mcsafe``).

pytest enables faulthandler in ``pytest_configure``, after conftest files and
plugins were imported: where one of them imported mcsafe, faulthandler's handler
would be in front of mcsafe's for the whole session, so that a copy's fault
reached faulthandler (a report, and death) until a large copy or a MappedFile
put mcsafe in front again, with a RuntimeWarning. This puts it in front once
every plugin is configured, as ``mcsafe.install()`` after installing handlers
does. It lives outside the package, and does nothing unless mcsafe was already
imported: a session that never uses mcsafe is left as it was.
"""

from __future__ import annotations

import sys

import pytest


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    core = sys.modules.get("mcsafe._mcsafe")
    if core is not None:
        core.install()
