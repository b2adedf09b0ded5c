from __future__ import annotations

from urllib.parse import urlencode

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.db.models import Q
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods, require_POST

from console.decorators import member_can, requires
from console.forms import ApiKeyEditForm, ApiKeyForm, apply_service_error
from console.permissions import Action
from console.requests import OrgRequest
from console.services.keys import (
    CreatedKey,
    api_key_create,
    api_key_revoke,
    api_key_roll,
    api_key_update,
)

KEYS_PER_PAGE = 50


def _context(request: OrgRequest, form: ApiKeyForm, created: CreatedKey | None) -> dict:
    """The form, and one page of the keys: newest first, narrowed by ``?q=`` (a name, or the
    start of a key as it is shown, ``sk-...``) and ``?page=``. A revoke keeps the page it was
    clicked on, as its form posts to the page's own query."""
    org = request.org
    if not member_can(request, Action.AUDIT_VIEW):  # read and manage keys read the audit log
        form.fields["scopes"].help_text = (
            "Your role may create inference keys; keys with the read or manage scope need an "
            "owner or admin, as they reach further than your role."
        )
    # The id breaks ties, so that keys created in the same instant never move between pages.
    keys = org.api_keys.select_related("created_by").order_by("-created_at", "-id")
    search = request.GET.get("q", "").strip()[:100]
    if search:
        keys = keys.filter(Q(name__icontains=search) | Q(prefix__startswith=search))
    page = Paginator(keys, KEYS_PER_PAGE).get_page(request.GET.get("page"))
    query = {"q": search} if search else {}
    return {
        "form": form,
        "created": created,
        "keys": page.object_list,
        "page": page,
        "search": search,
        "search_query": urlencode(query),
        "list_query": urlencode({**query, "page": page.number} if page.number > 1 else query),
        "any_keys": bool(search) or page.paginator.count > 0,
        "can_manage": member_can(request, Action.KEYS_MANAGE),
    }


@requires(Action.KEYS_VIEW)
def key_list(request: OrgRequest, org_slug: str) -> HttpResponse:
    return render(request, "console/keys.html", _context(request, ApiKeyForm(), None))


@requires(Action.KEYS_MANAGE)
@require_http_methods(["POST"])
def key_create(request: OrgRequest, org_slug: str) -> HttpResponse:
    form = ApiKeyForm(request.POST)
    created = None
    if form.is_valid():
        try:
            created = api_key_create(org=request.org, actor=request.user, **form.cleaned_data)
        except ValidationError as error:
            apply_service_error(form, error)
        else:
            form = ApiKeyForm()
    status = 200 if created else 400
    # The full key is in this one response only; it must never be cached.
    template = "console/keys.html#key-panel" if request.htmx else "console/keys.html"
    response = render(request, template, _context(request, form, created), status=status)
    response["Cache-Control"] = "no-store"
    return response


@requires(Action.KEYS_MANAGE)
@require_http_methods(["GET", "POST"])
def key_edit(request: OrgRequest, org_slug: str, key_id: str) -> HttpResponse:
    """Change a key's name, scopes (fewer only), models, limits or expiry; the secret stays."""
    key = get_object_or_404(request.org.api_keys, id=key_id)
    form = ApiKeyEditForm(request.POST or None, initial=ApiKeyEditForm.initial_for(key))
    status = 200
    if request.method == "POST":
        if form.is_valid():
            # Only what the person changed: a field sent back as it was shown is left alone, so
            # that saving a new name never rewrites an expiry the browser rounded.
            changes = {name: form.cleaned_data[name] for name in form.changed_data}
            try:
                api_key_update(key=key, actor=request.user, **changes)
            except ValidationError as error:
                apply_service_error(form, error)
            else:
                messages.success(request, f"Key “{key.name}” saved.")
                return redirect("key_list", org_slug=org_slug)
        status = 400
        key.refresh_from_db()  # the page shows what is stored, not the refused values
    context = {"key": key, "form": form, "grace": ROLL_GRACE_CHOICES}
    return render(request, "console/key_edit.html", context, status=status)


ROLL_GRACE_CHOICES = [
    (0, "Stop the old key now (it leaked)"),
    (1, "Keep the old key working for 1 hour"),
    (24, "Keep the old key working for 24 hours"),
    (168, "Keep the old key working for 7 days"),
]


@requires(Action.KEYS_MANAGE)
@require_POST
def key_roll(request: OrgRequest, org_slug: str, key_id: str) -> HttpResponse:
    """A new secret for the same key (settings, budget and usage history stay); the page shows
    it once."""
    key = get_object_or_404(request.org.api_keys, id=key_id)
    try:
        grace_hours = int(request.POST.get("grace_hours", ""))
        rolled = api_key_roll(key=key, actor=request.user, grace_hours=grace_hours)
    except (ValueError, ValidationError) as error:
        reason = " ".join(error.messages) if isinstance(error, ValidationError) else ""
        messages.error(request, reason or "Choose how long the old key keeps working.")
        return redirect("key_edit", org_slug=org_slug, key_id=key_id)
    form = ApiKeyEditForm(initial=ApiKeyEditForm.initial_for(rolled.key))
    context = {"key": rolled.key, "form": form, "rolled": rolled, "grace": ROLL_GRACE_CHOICES}
    response = render(request, "console/key_edit.html", context)
    response["Cache-Control"] = "no-store"
    return response


@requires(Action.KEYS_MANAGE)
@require_POST
def key_revoke(request: OrgRequest, org_slug: str, key_id: str) -> HttpResponse:
    key = get_object_or_404(request.org.api_keys, id=key_id)
    api_key_revoke(key=key, actor=request.user)
    if request.htmx:
        return render(request, "console/keys.html#key-list", _context(request, ApiKeyForm(), None))
    # Back to the page the key was revoked from (its search and page number).
    query = request.GET.urlencode()
    return redirect(reverse("key_list", args=[org_slug]) + (f"?{query}" if query else ""))
