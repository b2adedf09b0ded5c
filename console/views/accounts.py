from __future__ import annotations

import re

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login, logout, update_session_auth_hash
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import SetPasswordForm
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import redirect, render
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from console.forms import (
    AccountDeleteForm,
    AccountEmailForm,
    AccountNameForm,
    AccountPasswordForm,
    OrgForm,
    ResetPasswordForm,
    SignupForm,
    apply_service_error,
)
from console.models import Invitation, User
from console.requests import AuthedRequest
from console.services.mail import mail_unsent
from console.services.members import invitation_accept, invitation_lookup
from console.services.orgs import org_create
from console.services.users import (
    account_delete,
    email_change_confirm,
    email_change_request,
    email_verification_send,
    email_verify,
    password_reset_allowed,
    sessions_end,
    sign_in_succeeded,
    user_password_change,
    user_update,
)
from console.views.two_factor import account_context as two_factor_account_context


class PasswordResetView(auth_views.PasswordResetView):
    """Its email's link starts with SITE_URL, as every other email's does, rather than with the
    scheme and Host the request came with; a link that could not be sent is said so."""

    form_class = ResetPasswordForm

    @property
    def extra_email_context(self) -> dict[str, str]:
        return {"site_url": settings.SITE_URL}

    def form_valid(self, form: ResetPasswordForm) -> HttpResponse:
        if not password_reset_allowed(
            email=form.cleaned_data["email"], client=self.request.META.get("REMOTE_ADDR", "")
        ):
            # The same answer as when an email went, whether the address has an account or not.
            return HttpResponseRedirect(self.get_success_url())
        response = super().form_valid(form)
        if form.unsent:
            form.add_error(
                None, "The email could not be sent just now; try again in a few minutes."
            )
            return self.form_invalid(form)
        return response


class PasswordResetConfirmView(auth_views.PasswordResetConfirmView):
    """Django's, and a new password set from the emailed link ends the wrong-password refusal for
    the address from this client: the sign-in page says to wait or reset the password, and the
    one who opened the link reads the mailbox."""

    def form_valid(self, form: SetPasswordForm[User]) -> HttpResponse:
        response = super().form_valid(form)
        sign_in_succeeded(email=form.user.email, client=self.request.META.get("REMOTE_ADDR", ""))
        return response


def _invitation_of(next_url: str) -> Invitation | None:
    """The pending invitation a sign-up came from (``?next=/invitations/<token>/``), if any."""
    match = re.fullmatch(r"/invitations/([^/]+)/", next_url)
    invitation = invitation_lookup(match.group(1)) if match else None
    return invitation if invitation is not None and invitation.is_pending else None


@require_http_methods(["GET", "POST"])
def signup(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        return redirect("home")
    next_url = request.GET.get("next", "")
    invitation = _invitation_of(next_url)
    form = SignupForm(
        request.POST or None, initial={"email": invitation.email} if invitation else None
    )
    if request.method == "POST" and form.is_valid():
        user = form.save()
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        if invitation is None or invitation.email.lower() != user.email.lower():
            # Accepting an invitation confirms the address it was sent to by itself (its link
            # went there); any other address gets its own link.
            try:
                email_verification_send(user=user)
            except ValidationError:
                messages.warning(
                    request,
                    "Your account was created, but we could not send the confirmation email. "
                    "Send it again from your Account page in a few minutes.",
                )
        if next_url.startswith("/") and not next_url.startswith("//"):
            return redirect(next_url)
        return redirect("org_create")
    return render(request, "accounts/signup.html", {"form": form})


@login_required
def home(request: AuthedRequest) -> HttpResponse:
    """The first organisation the person joined, of those that let them in: one that requires
    two-factor authentication they lack is passed over while another opens (else its refusal
    says why)."""
    memberships = list(
        request.user.memberships.filter(org__closed_at=None)
        .select_related("org")
        .order_by("created_at")
    )
    if not memberships:
        return redirect("org_create")
    opens = [m for m in memberships if request.user.has_two_factor or not m.org.require_two_factor]
    return redirect("org_overview", org_slug=(opens or memberships)[0].org.slug)


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


def _name_form(user: User) -> AccountNameForm:
    return AccountNameForm(initial={"first_name": user.first_name, "last_name": user.last_name})


def _account_page(
    request: AuthedRequest,
    name_form: AccountNameForm,
    password_form: AccountPasswordForm,
    status: int = 200,
    email_form: AccountEmailForm | None = None,
    delete_form: AccountDeleteForm | None = None,
) -> HttpResponse:
    context = {
        "name_form": name_form,
        "password_form": password_form,
        "email_form": email_form or AccountEmailForm(request.user),
        "delete_form": delete_form or AccountDeleteForm(request.user),
        **two_factor_account_context(request.user),
    }
    return render(request, "accounts/account.html", context, status=status)


@login_required
@require_http_methods(["GET", "POST"])
def account(request: AuthedRequest) -> HttpResponse:
    """The signed-in person's own page: their name, their password, their organisations."""
    user = request.user
    if request.method == "GET":
        return _account_page(request, _name_form(user), AccountPasswordForm(user))
    form = AccountNameForm(request.POST)
    if not form.is_valid():
        return _account_page(request, form, AccountPasswordForm(user), status=400)
    user_update(user=user, **form.cleaned_data)
    messages.success(request, "Saved.")
    return redirect("account")


@login_required
# Keeps the passwords out of Django's error reports, should this view ever fail.
@sensitive_post_parameters("old_password", "new_password1", "new_password2")
@require_POST
def account_password(request: AuthedRequest) -> HttpResponse:
    user = request.user
    form = AccountPasswordForm(user, request.POST)
    if form.is_valid():
        # The form has run the service's validators on this password already: this cannot raise.
        user_password_change(user=user, password=form.cleaned_data["new_password1"])
        # The new password hash signs out every session, this one too unless it is re-keyed.
        update_session_auth_hash(request, user)
        messages.success(request, "Password changed. Your other sessions have been signed out.")
        return redirect("account")
    return _account_page(request, _name_form(user), form, status=400)


@require_GET
def email_verify_view(request: HttpRequest, token: str) -> HttpResponse:
    """The link in the confirmation email; works signed in or not, and more than once."""
    try:
        user = email_verify(token=token)
    except ValidationError as exc:
        context = {"error": " ".join(exc.messages)}
        return render(request, "accounts/email_verify.html", context, status=400)
    return render(request, "accounts/email_verify.html", {"verified_email": user.email})


@login_required
@require_POST
def email_verify_send_view(request: AuthedRequest) -> HttpResponse:
    user = request.user
    if user.email_verified_at is not None:
        messages.success(request, "Your email address is already confirmed.")
    else:
        try:
            sent = email_verification_send(user=user)
        except ValidationError as error:
            messages.error(request, " ".join(error.messages))
        else:
            if sent:
                messages.success(request, f"We sent a new link to {user.email}.")
            else:
                messages.error(
                    request, "A link was sent less than a minute ago: check your inbox first."
                )
    next_url = request.POST.get("next", "")
    if next_url.startswith("/") and not next_url.startswith("//"):
        return redirect(next_url)
    return redirect("account")


@login_required
# Keeps the password out of Django's error reports, should this view ever fail.
@sensitive_post_parameters("password")
@require_POST
def account_email(request: AuthedRequest) -> HttpResponse:
    """Ask to sign in with another address: a link goes there, and a notice to the current one."""
    user = request.user
    form = AccountEmailForm(user, request.POST)
    if form.is_valid():
        old_email = user.email
        try:
            with mail_unsent() as unsent:
                sent_to = email_change_request(user=user, new_email=form.cleaned_data["email"])
        except ValidationError as error:
            apply_service_error(form, error)
        else:
            messages.success(
                request,
                f"We sent a link to {sent_to}: your address changes when you open it.",
            )
            if unsent:
                messages.warning(request, f"We could not tell {old_email} about it by email.")
            return redirect("account")
    name_form, password_form = _name_form(user), AccountPasswordForm(user)
    return _account_page(request, name_form, password_form, status=400, email_form=form)


@require_GET
def email_change_confirm_view(request: HttpRequest, token: str) -> HttpResponse:
    try:
        user = email_change_confirm(token=token)
    except ValidationError as exc:
        context = {"error": " ".join(exc.messages)}
        return render(request, "accounts/email_verify.html", context, status=400)
    return render(request, "accounts/email_verify.html", {"changed_email": user.email})


@login_required
@sensitive_post_parameters("password")
@require_POST
def account_delete_view(request: AuthedRequest) -> HttpResponse:
    """Delete one's own account (with the address typed and the password), then sign out."""
    user = request.user
    form = AccountDeleteForm(user, request.POST)
    if form.is_valid():
        try:
            with mail_unsent() as unsent:
                old_email = account_delete(user=user)
        except ValidationError as error:
            apply_service_error(form, error)
        else:
            logout(request)
            messages.success(request, f"The account {old_email} was deleted.")
            if unsent:
                messages.warning(request, f"We could not email {old_email} to confirm it.")
            return redirect("login")
    return _account_page(
        request, _name_form(user), AccountPasswordForm(user), status=400, delete_form=form
    )


@login_required
@require_POST
def sessions_end_view(request: AuthedRequest) -> HttpResponse:
    """Sign out of every other browser; this one stays signed in."""
    user = sessions_end(user=request.user)
    update_session_auth_hash(request, user)
    messages.success(request, "Signed out of every other session.")
    return redirect("account")
