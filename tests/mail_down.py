"""An email backend for a mail server that is down (the ``mail_down`` fixture)."""

from __future__ import annotations

from collections.abc import Sequence

from django.core.mail import EmailMessage
from django.core.mail.backends.base import BaseEmailBackend


class DownBackend(BaseEmailBackend):
    def send_messages(self, email_messages: Sequence[EmailMessage]) -> int:
        if self.fail_silently:
            return 0
        raise ConnectionRefusedError(111, "Connection refused")
