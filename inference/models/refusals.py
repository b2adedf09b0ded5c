"""Requests the gateway refused before they reached a model, counted per minute.

A refused request (a revoked key, a rate limit, an exhausted budget, an invalid body, a model the
key may not use) costs no tokens and gets no usage record: a key that floods the gateway would
otherwise cost the database a row per refusal. Instead each gateway process counts refusals per
key, status, error code and minute, and adds the counts to these rows every few seconds. Requests
with no valid key (401 ``invalid_api_key``, ``missing_api_key``) belong to no organisation and are
counted in the gateway's metrics only.
"""

from __future__ import annotations

from django.db import models

from console.models import ApiKey, Organisation


class RefusalCount(models.Model):
    org = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="refusal_counts")
    api_key = models.ForeignKey(ApiKey, on_delete=models.CASCADE, related_name="refusal_counts")
    minute = models.DateTimeField(help_text="The start of the minute (UTC).")
    status_code = models.PositiveSmallIntegerField()
    error_code = models.CharField(max_length=64)
    count = models.PositiveIntegerField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["org", "api_key", "minute", "status_code", "error_code"],
                name="refusal_count_unique",
            )
        ]
        indexes = [models.Index(fields=["org", "minute"], name="refusal_org_minute")]

    def __str__(self) -> str:
        return (
            f"{self.count} x {self.status_code} {self.error_code} at {self.minute:%Y-%m-%d %H:%M}"
        )
