"""Create the demo organisation and its owner for the embedded default. Safe to re-run."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import transaction
from django.utils import timezone

from console.models import Organisation, User
from console.services.orgs import org_create

DEMO_EMAIL = "demo@example.com"
DEMO_ORG_SLUG = "demo"


class Command(BaseCommand):
    help = "Create the demo organisation and owner login (idempotent) and print how to sign in."

    def handle(self, *args: Any, **options: Any) -> None:
        login_file = Path(settings.RUN_DIR) / "demo-login.txt"
        with transaction.atomic():
            user = User.objects.filter(email=DEMO_EMAIL).first()
            if user is None:
                password = secrets.token_urlsafe(12)
                # The demo login's address is local: nobody could open a link sent there.
                user = User.objects.create_user(
                    DEMO_EMAIL, password, email_verified_at=timezone.now()
                )
                login_file.parent.mkdir(parents=True, exist_ok=True)
                # The password lives only in this local, owner-readable file, never in a log.
                fd = os.open(login_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w") as handle:
                    handle.write(password + "\n")
            org = Organisation.objects.filter(slug=DEMO_ORG_SLUG).first()
            if org is None:
                org = org_create(name="Demo", slug=DEMO_ORG_SLUG, owner=user)
        password_hint = (
            login_file.read_text().strip() if login_file.exists() else "(set before; unchanged)"
        )
        url = f"{settings.SITE_URL}/o/{org.slug}/"
        self.stdout.write(
            self.style.SUCCESS(
                f"\n  Console:  {url}\n  Login:    {DEMO_EMAIL}\n  Password: {password_hint}\n"
            )
        )
