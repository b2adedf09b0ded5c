"""Signing in with a second factor, and turning it on and off on the Account page."""

from __future__ import annotations

import time
from typing import Any

import segno
from django import forms
from django.contrib import messages
from django.contrib.auth import login, update_session_auth_hash
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import urlencode
from django.views.decorators.cache import never_cache
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_http_methods, require_POST

from console.decorators import requires
from console.forms import CurrentPasswordForm, apply_service_error
from console.models import User
from console.permissions import Action
from console.requests import AuthedRequest, OrgRequest
from console.services.mail import mail_unsent
from console.services.two_factor import (
    TOO_MANY,
    code_check,
    code_throttled,
    enrolment_start,
    org_two_factor_require,
    recovery_codes_left,
    recovery_codes_regenerate,
    secret_seal,
    secret_unseal,
    two_factor_disable,
    two_factor_enable,
)
from console.services.users import (
    SIGN_IN_THROTTLED,
    sessions_end,
    sign_in_failed,
    sign_in_succeeded,
    sign_in_throttled,
)

PENDING = "two_factor_pending"
SETUP = "two_factor_setup_secret"
# How long the password step stays good while the code is asked for.
PENDING_TTL_S = 300
NOTICE_UNSENT = "We could not email you a notice of this change to your account's security."


class CodeForm(forms.Form):
    code = forms.CharField(
        max_length=20,
        label="Code",
        help_text="The six digits your authenticator app shows, or one of your recovery codes.",
        widget=forms.TextInput(attrs={"autocomplete": "one-time-code", "inputmode": "numeric"}),
    )

    def focused(self) -> CodeForm:
        """The same form, with the cursor in it (pages where it is the only form)."""
        self.fields["code"].widget.attrs["autofocus"] = True
        return self


class CodeAndPasswordForm(CurrentPasswordForm, CodeForm):
    default_prefix = "off"


class LoginView(auth_views.LoginView):
    """Django's sign-in, with a second step for people who turned two-factor on: the password
    alone signs nobody in; it only earns a few minutes to enter a code."""

    def _who(self) -> tuple[str, str]:
        return self.request.POST.get("username", ""), self.request.META.get("REMOTE_ADDR", "")

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        email, client = self._who()
        if sign_in_throttled(email=email, client=client):
            # Refused without checking the password, so that guessing on gets nowhere.
            form = self.get_form_class()(request, initial={"username": email})
            form.cleaned_data = {}
            form.full_clean()  # unbound: nothing is checked, least of all the password
            form.add_error(None, SIGN_IN_THROTTLED)
            return self.render_to_response(self.get_context_data(form=form), status=429)
        return super().post(request, *args, **kwargs)

    def form_invalid(self, form: Any) -> HttpResponse:
        email, client = self._who()
        sign_in_failed(email=email, client=client)
        return super().form_invalid(form)

    def form_valid(self, form: Any) -> HttpResponse:
        user = form.get_user()
        email, client = self._who()
        sign_in_succeeded(email=email, client=client)
        if not user.has_two_factor:
            return super().form_valid(form)
        self.request.session[PENDING] = {
            "user": user.pk,
            "backend": user.backend,
            "at": time.time(),
            "next": self.get_success_url(),
        }
        return redirect("login_two_factor")


@never_cache
@sensitive_post_parameters("code")
@require_http_methods(["GET", "POST"])
def login_two_factor(request: HttpRequest) -> HttpResponse:
    pending: dict[str, Any] = request.session.get(PENDING) or {}
    user = None
    if pending and time.time() - pending["at"] <= PENDING_TTL_S:
        user = User.objects.filter(pk=pending["user"], is_active=True).first()
    if user is None or not user.has_two_factor:
        request.session.pop(PENDING, None)
        messages.error(request, "Sign in again: that took too long.")
        return redirect("login")
    form = CodeForm(request.POST or None).focused()
    if request.method == "POST" and form.is_valid():
        with mail_unsent() as unsent:  # a recovery code's use is emailed
            good = code_check(user=user, code=form.cleaned_data["code"])
        if good:
            del request.session[PENDING]
            login(request, user, backend=pending["backend"])
            if unsent:
                messages.warning(request, NOTICE_UNSENT)
            return redirect(pending["next"])
        form.add_error("code", TOO_MANY if code_throttled(user) else "That code is wrong.")
    status = 400 if form.errors else 200
    return render(request, "registration/login_two_factor.html", {"form": form}, status=status)


def admin_login(request: HttpRequest) -> HttpResponse:
    """The admin signs in through the console's sign-in, so staff get the same second step."""
    query = urlencode({"next": request.GET.get("next", reverse("admin:index"))})
    return redirect(f"{reverse('login')}?{query}")


def _qr_svg(uri: str) -> str:
    return str(segno.make(uri, error="m").svg_inline(scale=4, dark="#111", light="#fff"))


@login_required
@never_cache
@sensitive_post_parameters("code")
@require_http_methods(["GET", "POST"])
def two_factor_setup(request: AuthedRequest) -> HttpResponse:
    """Scan a new secret, prove it with a code, get the recovery codes (shown once)."""
    user = request.user
    if user.has_two_factor:
        messages.info(request, "Two-factor authentication is already on.")
        return redirect("account")
    form = CodeForm(request.POST or None).focused()
    sealed = request.session.get(SETUP)
    secret = secret_unseal(sealed) if sealed else None
    if request.method == "POST" and secret and form.is_valid():
        try:
            with mail_unsent() as unsent:
                codes = two_factor_enable(user=user, secret=secret, code=form.cleaned_data["code"])
        except ValidationError as error:
            apply_service_error(form, error)
        else:
            if unsent:
                messages.warning(request, NOTICE_UNSENT)
            del request.session[SETUP]
            # Sessions opened with the password alone end; this one stays.
            update_session_auth_hash(request, sessions_end(user=user))
            return render(
                request, "accounts/recovery_codes.html", {"codes": codes, "first_time": True}
            )
    # A new secret on each visit; a wrong code keeps the one already scanned.
    enrolment = enrolment_start(user=user, secret=secret if request.method == "POST" else None)
    request.session[SETUP] = secret_seal(enrolment.secret)
    context = {
        "form": form,
        "secret": enrolment.secret,
        "uri": enrolment.uri,
        "qr": _qr_svg(enrolment.uri),
    }
    return render(
        request, "accounts/two_factor_setup.html", context, status=400 if form.errors else 200
    )


@login_required
@never_cache
@sensitive_post_parameters("code")
@require_POST
def recovery_codes_new(request: AuthedRequest) -> HttpResponse:
    form = CodeForm(request.POST)
    if form.is_valid():
        try:
            codes = recovery_codes_regenerate(user=request.user, code=form.cleaned_data["code"])
        except ValidationError as error:
            messages.error(request, " ".join(error.messages))
        else:
            return render(request, "accounts/recovery_codes.html", {"codes": codes})
    else:
        messages.error(request, "Enter a code to make new recovery codes.")
    return redirect("account")


@login_required
@sensitive_post_parameters("code", "password")
@require_POST
def two_factor_off(request: AuthedRequest) -> HttpResponse:
    form = CodeAndPasswordForm(request.user, request.POST)
    if form.is_valid():
        try:
            with mail_unsent() as unsent:
                two_factor_disable(user=request.user, code=form.cleaned_data["code"])
        except ValidationError as error:
            apply_service_error(form, error)
        else:
            messages.success(request, "Two-factor authentication is off.")
            if unsent:
                messages.warning(request, NOTICE_UNSENT)
            return redirect("account")
    messages.error(
        request,
        "Two-factor authentication is still on: "
        + " ".join(str(e) for errors in form.errors.values() for e in errors),
    )
    return redirect("account")


def account_context(user: User) -> dict[str, object]:
    """What the Account page's two-factor card shows."""
    if not user.has_two_factor:
        return {}
    return {
        "recovery_codes_left": recovery_codes_left(user),
        "two_factor_off_form": CodeAndPasswordForm(user),
        "recovery_form": CodeForm(),
    }


@requires(Action.ORG_UPDATE)
@require_POST
def org_two_factor(request: OrgRequest, org_slug: str) -> HttpResponse:
    required = request.POST.get("require_two_factor") == "on"
    try:
        org_two_factor_require(org=request.org, actor=request.user, required=required)
    except ValidationError as error:
        messages.error(request, " ".join(error.messages))
    else:
        messages.success(
            request,
            "Every member now needs two-factor authentication."
            if required
            else "Two-factor authentication is no longer required.",
        )
    return redirect("org_settings", org_slug=org_slug)
