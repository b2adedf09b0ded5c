from __future__ import annotations

from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from console.forms import OrgForm, SignupForm, apply_service_error
from console.requests import AuthedRequest
from console.services.members import invitation_accept, invitation_lookup
from console.services.orgs import org_create


@require_http_methods(["GET", "POST"])
def signup(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        return redirect("home")
    form = SignupForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = form.save()
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        next_url = request.GET.get("next", "")
        if next_url.startswith("/") and not next_url.startswith("//"):
            return redirect(next_url)
        return redirect("org_create")
    return render(request, "accounts/signup.html", {"form": form})


@login_required
def home(request: AuthedRequest) -> HttpResponse:
    membership = request.user.memberships.select_related("org").order_by("created_at").first()
    if membership is None:
        return redirect("org_create")
    return redirect("org_overview", org_slug=membership.org.slug)


@login_required
@require_http_methods(["GET", "POST"])
def org_create_view(request: AuthedRequest) -> HttpResponse:
    form = OrgForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            org = org_create(
                name=form.cleaned_data["name"],
                slug=form.cleaned_data["slug"] or None,
                owner=request.user,
            )
        except ValidationError as error:
            apply_service_error(form, error)
        else:
            messages.success(request, f"Created {org.name}.")
            return redirect("org_overview", org_slug=org.slug)
    return render(request, "accounts/org_create.html", {"form": form})


@require_http_methods(["GET", "POST"])
def invitation_accept_view(request: HttpRequest, token: str) -> HttpResponse:
    invitation = invitation_lookup(token)
    if not request.user.is_authenticated:
        return render(
            request, "accounts/invitation.html", {"invitation": invitation, "token": token}
        )
    error = None
    if request.method == "POST":
        try:
            membership = invitation_accept(token=token, user=request.user)
        except ValidationError as exc:
            error = " ".join(exc.messages)
        else:
            messages.success(request, f"You joined {membership.org.name}.")
            return redirect("org_overview", org_slug=membership.org.slug)
    return render(
        request,
        "accounts/invitation.html",
        {"invitation": invitation, "token": token, "error": error},
        status=400 if error else 200,
    )
