"""The Django admin's site, with a platform overview on its index page.

Staff open the admin first when something is wrong, so its index shows what needs them before the
list of models: organisations, the last day's traffic and revenue, deployments that failed,
refused requests, and the parts of billing and webhooks that are waiting or failing. Each line is
shown only to staff who may view the records behind it (a superuser sees all of them), as the
admin's own model list is. Like
``console.urls``, this is project-level glue: each app reads its own data (billing's
``platform_usage``, inference's ``platform_deployments`` and ``platform_refusals``) and the site
only puts them on one page.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any, cast

from django.contrib import admin
from django.contrib.admin.apps import AdminConfig
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.utils import timezone

if TYPE_CHECKING:  # the site is built while the apps load, before models can be imported
    from console.models import User


class PlatformAdminSite(admin.AdminSite):
    site_header = "Inference platform administration"
    site_title = "Inference platform admin"
    index_template = "admin/platform_index.html"

    def index(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> TemplateResponse:
        # The admin lets only signed-in, active staff this far.
        overview = platform_overview(cast("User", request.user))
        context = {**(extra_context or {}), "overview": overview}
        return super().index(request, extra_context=context)


class PlatformAdminConfig(AdminConfig):
    default_site = "console.admin_site.PlatformAdminSite"


# Each part of the overview, and the view permission that shows it.
SECTION_PERMISSIONS = {
    "orgs": "console.view_organisation",
    "usage": "billing.view_usagerecord",
    "meter_events": "billing.view_meterevent",
    "deployments": "inference.view_deployment",
    "refusals": "inference.view_refusalcount",
    "webhooks": "console.view_webhookdelivery",
}


def platform_overview(user: User) -> dict[str, Any]:
    """The parts of the overview ``user`` may see; only those are computed."""
    from billing.selectors import platform_usage
    from console.models import DeliveryStatus, Organisation, WebhookDelivery
    from inference.selectors.deployments import platform_deployments
    from inference.selectors.refusals import platform_refusals

    allowed = {name for name, perm in SECTION_PERMISSIONS.items() if user.has_perm(perm)}
    now = timezone.now()
    day_ago = now - timedelta(hours=24)
    overview: dict[str, Any] = {"sections": allowed}
    if "orgs" in allowed:
        orgs = Organisation.objects.all()
        open_orgs = orgs.filter(closed_at=None)
        overview["orgs"] = {
            "open": open_orgs.count(),
            "suspended": open_orgs.exclude(suspended_at=None).count(),
            "closed": orgs.exclude(closed_at=None).count(),
            "new_7d": orgs.filter(created_at__gte=now - timedelta(days=7)).count(),
        }
    if allowed & {"usage", "meter_events"}:
        overview["usage"] = platform_usage(now=now)
    if "deployments" in allowed:
        overview["deployments"] = platform_deployments()
    if "refusals" in allowed:
        overview["refusals"] = platform_refusals(now=now)
    if "webhooks" in allowed:
        overview["webhooks"] = {
            "failed_24h": WebhookDelivery.objects.filter(
                status=DeliveryStatus.FAILED, finished_at__gte=day_ago
            ).count(),
            "pending": WebhookDelivery.objects.filter(status=DeliveryStatus.PENDING).count(),
        }
    return overview
