"""A pytest plugin that puts mcsafe in front of the faulthandler pytest enables.

pytest enables faulthandler in ``pytest_configure``, after conftest files (and
the packages they import) are imported: where one of them imports mcsafe,
faulthandler's handler is in front of mcsafe's for the whole session, and a
copy's fault reaches faulthandler (its report, and death) until a copy of 1 MiB
or more, or a MappedFile, puts mcsafe in front again with a RuntimeWarning.
This plugin calls :func:`mcsafe.install` once every plugin is configured.
Enable it in the root conftest (``pytest_plugins = ["mcsafe.pytest_plugin"]``)
or on the command line (``-p mcsafe.pytest_plugin``).

It is not registered as an entry point on purpose: pytest rewrites the
assertions of every module of a distribution that registers one, and mcsafe's
own modules are not tests.
"""

from __future__ import annotations

import pytest

import mcsafe


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    """After faulthandler's pytest_configure: mcsafe in front of it."""
    mcsafe.install()
