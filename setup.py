"""setuptools entry point; the build logic lives in build.py."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from build import setup_kwargs  # noqa: E402  (this repository's build.py)
from setuptools import setup  # noqa: E402

setup(**setup_kwargs())
