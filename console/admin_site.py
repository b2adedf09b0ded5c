"""The Django admin's site, with a platform overview on its index page.

Staff open the admin first when something is wrong, so its index shows what needs them before the
list of models: organisations, the last day's traffic and revenue, deployments that failed,
refused requests, and the parts of billing and webhooks that are waiting or failing. Like
``console.urls``, this is project-level glue: each app reads its own data (billing's
``platform_usage``, inference's ``platform_deployments`` and ``platform_refusals``) and the site
only puts them on one page.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.contrib import admin
from django.contrib.admin.apps import AdminConfig
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.utils import timezone


class PlatformAdminSite(admin.AdminSite):
    site_header = "Inference platform administration"
    site_title = "Inference platform admin"
    index_template = "admin/platform_index.html"

    def index(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> TemplateResponse:
        context = {**(extra_context or {}), "overview": platform_overview()}
        return super().index(request, extra_context=context)


class PlatformAdminConfig(AdminConfig):
    default_site = "console.admin_site.PlatformAdminSite"


def platform_overview() -> dict[str, Any]:
    from billing.selectors import platform_usage
    from console.models import DeliveryStatus, Organisation, WebhookDelivery
    from inference.selectors.deployments import platform_deployments
    from inference.selectors.refusals import platform_refusals

    now = timezone.now()
    orgs = Organisation.objects.all()
    open_orgs = orgs.filter(closed_at=None)
    day_ago = now - timedelta(hours=24)
    return {
        "orgs": {
            "open": open_orgs.count(),
            "suspended": open_orgs.exclude(suspended_at=None).count(),
            "closed": orgs.exclude(closed_at=None).count(),
            "new_7d": orgs.filter(created_at__gte=now - timedelta(days=7)).count(),
        },
        "usage": platform_usage(now=now),
        "deployments": platform_deployments(),
        "refusals": platform_refusals(now=now),
        "webhooks": {
            "failed_24h": WebhookDelivery.objects.filter(
                status=DeliveryStatus.FAILED, finished_at__gte=day_ago
            ).count(),
            "pending": WebhookDelivery.objects.filter(status=DeliveryStatus.PENDING).count(),
        },
    }
