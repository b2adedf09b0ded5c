"""Django for the benchmarks that use the database: settings from the environment with debug on
(no secret key needed) and quiet logs, set up, and migrated."""

from __future__ import annotations

import os
import sys


def django_start(*, default_database: str = "") -> None:
    """``default_database`` is used when DATABASE_URL is not set; without one, DATABASE_URL is
    required (the benchmark writes rows that belong in a scratch database)."""
    if default_database:
        os.environ.setdefault("DATABASE_URL", default_database)
    elif not os.environ.get("DATABASE_URL"):
        sys.exit("Set DATABASE_URL to a scratch database.")
    os.environ.setdefault("DJANGO_DEBUG", "1")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    os.environ["DJANGO_SETTINGS_MODULE"] = "console.settings"
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
