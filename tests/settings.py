"""The test suite's settings (pyproject.toml names them to pytest-django): console.settings with
DJANGO_TESTING on, which relaxes the security defaults as DJANGO_DEBUG does (a built-in secret key,
plain http) without debug pages. Set in the environment, it reaches the processes tests start.

Production never loads this module: importing pytest does not change the settings."""

from __future__ import annotations

import os

os.environ["DJANGO_TESTING"] = "1"

from console.settings import *  # noqa: F403
