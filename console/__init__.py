"""The control plane: settings, tenancy, accounts, API keys, audit log and the web console.

The package is named ``console`` rather than ``platform`` because a top-level ``platform`` package
would shadow Python's standard-library module of that name.
"""

from console.celery import app as celery_app

__all__ = ["celery_app"]
