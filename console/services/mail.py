"""Sending the emails that follow a change.

A change stands whatever the mail server does: an email that cannot be sent is logged (its kind
and the error, never its text, which may hold a link) and reported as not sent, so that a view
can tell the person in front of it instead of answering 500 for a change already made.

Services send most of their emails once their transaction commits (``transaction.on_commit``),
so the view cannot see the outcome in what the service returns; it wraps the call in
``mail_unsent()`` instead, which collects the kinds of email that could not be sent inside it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from django.core.mail import send_mail

logger = logging.getLogger(__name__)

_unsent: ContextVar[list[str] | None] = ContextVar("mail_unsent", default=None)


def mail_send(*, kind: str, subject: str, message: str, to: list[str]) -> bool:
    """Send one plain-text email; False, and a log line, when it could not be sent."""
    try:
        send_mail(subject=subject, message=message, from_email=None, recipient_list=to)
    except Exception as error:  # SMTP refusals, a server that is down or slow, bad settings
        logger.error(
            "could not send an email",
            extra={
                "kind": kind,
                "recipients": len(to),
                "error": f"{type(error).__name__}: {error}"[:300],
            },
        )
        unsent = _unsent.get()
        if unsent is not None:
            unsent.append(kind)
        return False
    return True


@contextmanager
def mail_unsent() -> Iterator[list[str]]:
    """The kinds of email that could not be sent within the block, in order."""
    unsent: list[str] = []
    token = _unsent.set(unsent)
    try:
        yield unsent
    finally:
        _unsent.reset(token)
