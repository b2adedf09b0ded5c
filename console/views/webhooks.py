"""The Webhooks page: an organisation's endpoints, their secrets (shown once) and deliveries."""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from console.decorators import member_can, requires
from console.envvars import comma_list
from console.forms import apply_service_error
from console.models import WebhookDelivery, WebhookEndpoint
from console.permissions import Action
from console.requests import OrgRequest
from console.services.webhooks import (
    delivery_resend,
    webhook_create,
    webhook_delete,
    webhook_test,
)


class WebhookForm(forms.Form):
    url = forms.CharField(
        max_length=500,
        label="URL",
        widget=forms.URLInput(attrs={"placeholder": "https://example.com/hooks/inference"}),
    )
    events = forms.CharField(
        required=False,
        label="Events",
        help_text="Comma-separated event types or prefixes (deployment., key.revoked). Empty "
        "sends every event.",
    )

    def clean_events(self) -> list[str]:
        raw: str = self.cleaned_data.get("events") or ""
        return comma_list(raw)


def _page(
    request: OrgRequest, form: WebhookForm, *, secret: str = "", status: int = 200
) -> HttpResponse:
    org = request.org
    context = {
        "form": form,
        "endpoints": WebhookEndpoint.objects.filter(org=org, disabled_at=None),
        "deliveries": WebhookDelivery.objects.filter(endpoint__org=org)
        .select_related("endpoint")
        .order_by("-created_at")[:30],
        "secret": secret,
        "can_manage": member_can(request, Action.WEBHOOKS_MANAGE),
    }
    response = render(request, "console/webhooks.html", context, status=status)
    if secret:
        response["Cache-Control"] = "no-store"
    return response


@requires(Action.WEBHOOKS_MANAGE)
@require_http_methods(["GET", "POST"])
def webhook_list(request: OrgRequest, org_slug: str) -> HttpResponse:
    form = WebhookForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            _, secret = webhook_create(
                org=request.org,
                actor=request.user,
                url=form.cleaned_data["url"],
                events=form.cleaned_data["events"],
            )
        except ValidationError as error:
            apply_service_error(form, error)
        else:
            return _page(request, WebhookForm(), secret=secret)
    return _page(request, form, status=400 if form.errors else 200)


@requires(Action.WEBHOOKS_MANAGE)
@require_POST
def webhook_test_view(request: OrgRequest, org_slug: str, webhook_id: str) -> HttpResponse:
    endpoint = get_object_or_404(request.org.webhooks, id=webhook_id, disabled_at=None)
    webhook_test(endpoint=endpoint)
    messages.success(request, f"Sent a webhook.test event to {endpoint.url}; see below.")
    return redirect("webhook_list", org_slug=org_slug)


@requires(Action.WEBHOOKS_MANAGE)
@require_POST
def webhook_delete_view(request: OrgRequest, org_slug: str, webhook_id: str) -> HttpResponse:
    endpoint = get_object_or_404(request.org.webhooks, id=webhook_id, disabled_at=None)
    webhook_delete(endpoint=endpoint, actor=request.user)
    messages.success(request, f"Deleted the webhook to {endpoint.url}.")
    return redirect("webhook_list", org_slug=org_slug)


@requires(Action.WEBHOOKS_MANAGE)
@require_POST
def delivery_resend_view(request: OrgRequest, org_slug: str, delivery_id: str) -> HttpResponse:
    delivery = get_object_or_404(
        WebhookDelivery.objects.select_related("endpoint"),
        endpoint__org=request.org,
        id=delivery_id,
    )
    try:
        delivery_resend(delivery=delivery)
    except ValidationError as error:
        messages.error(request, " ".join(error.messages))
    else:
        what = f"{delivery.event_type} to {delivery.endpoint.url}"
        messages.success(request, f"Sending {what} again.")
    return redirect("webhook_list", org_slug=org_slug)
