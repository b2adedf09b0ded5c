from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from console.decorators import requires
from console.forms import OrgRenameForm, apply_service_error
from console.limits import org_rate_limits
from console.permissions import Action, role_can
from console.requests import OrgRequest
from console.services.orgs import org_update


@requires(Action.ORG_VIEW)
def overview(request: OrgRequest, org_slug: str) -> HttpResponse:
    org = request.org
    context = {
        "member_count": org.memberships.count(),
        "active_key_count": org.api_keys.filter(revoked_at=None).count(),
        "recent_events": org.audit_events.select_related("actor", "actor_key")[:5],
    }
    return render(request, "console/overview.html", context)


@requires(Action.ORG_VIEW)
@require_http_methods(["GET", "POST"])
def org_settings(request: OrgRequest, org_slug: str) -> HttpResponse:
    org = request.org
    form = OrgRenameForm(request.POST or None, initial={"name": org.name})
    if request.method == "POST":
        if not role_can(request.membership.role, Action.ORG_UPDATE):
            raise PermissionDenied("Your role cannot rename the organisation.")
        if form.is_valid():
            try:
                org_update(org=org, actor=request.user, name=form.cleaned_data["name"])
            except ValidationError as error:
                apply_service_error(form, error)
            else:
                messages.success(request, "Saved.")
                return redirect("org_settings", org_slug=org.slug)
    context: dict[str, object] = {"form": form}
    if role_can(request.membership.role, Action.ORG_UPDATE):
        # Owners and admins see the gateway's limits for the org (set by platform staff).
        context["rpm_limit"], context["tpm_limit"] = org_rate_limits(org)
    return render(request, "console/settings.html", context)


@requires(Action.AUDIT_VIEW)
def audit_log(request: OrgRequest, org_slug: str) -> HttpResponse:
    org = request.org
    events = org.audit_events.select_related("actor", "actor_key")
    action = request.GET.get("action", "").strip()
    if action:
        events = events.filter(action__startswith=action)
    page = Paginator(events, 50).get_page(request.GET.get("page"))
    return render(request, "console/audit.html", {"page": page, "action": action})
