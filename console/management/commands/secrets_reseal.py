"""Encrypt every stored secret again with the current key, so that older keys can be dropped."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from console.services.two_factor import two_factor_secrets_reseal
from console.services.webhooks import webhook_secrets_reseal
from inference.routing.secrets import endpoint_keys_reseal


class Command(BaseCommand):
    help = (
        "Encrypt external endpoint keys, webhook signing secrets and two-factor secrets again "
        "with the current key of each (the first of ENDPOINT_KEY_ENCRYPTION_KEY, "
        "WEBHOOK_ENCRYPTION_KEY, TWO_FACTOR_ENCRYPTION_KEY, or the one derived from "
        "DJANGO_SECRET_KEY). Safe to run again; afterwards older keys may be removed."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        unreadable = 0
        for reseal in (endpoint_keys_reseal, webhook_secrets_reseal, two_factor_secrets_reseal):
            done = reseal()
            self.stdout.write(f"{done.what}: {done.resealed} resealed")
            for pk in done.unreadable:
                self.stderr.write(f"{done.what}: {pk}: no configured key can read it")
            unreadable += len(done.unreadable)
        if unreadable:
            raise CommandError(
                f"{unreadable} stored secret(s) could not be read with any configured key: keep "
                "the older keys (DJANGO_SECRET_KEY_FALLBACKS, or later entries of the encryption "
                "key variables) that sealed them, or have their owners set them again."
            )
