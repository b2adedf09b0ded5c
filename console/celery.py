import logging.config
import os
from typing import Any

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")

app = Celery("console")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@signals.setup_logging.connect
def logging_configure(**kwargs: Any) -> None:
    """The project's logging (JSON lines on stderr, LOG_LEVEL) in the worker and beat: with a
    receiver here, Celery leaves the root logger alone instead of giving it its own format and
    ``--loglevel``."""
    from django.conf import settings

    logging.config.dictConfig(settings.LOGGING)
