from __future__ import annotations

from typing import cast

from django import forms
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpResponse, QueryDict
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from console.decorators import member_can, requires
from console.forms import InviteForm, RoleForm, apply_service_error
from console.permissions import Action, Role, role_may_assign
from console.requests import OrgRequest
from console.services.mail import mail_unsent
from console.services.members import (
    invitation_create,
    invitation_revoke,
    membership_change_role,
    membership_remove,
)


def _assignable(request: OrgRequest) -> list[tuple[str, str]]:
    """The roles this member may give (admins manage non-owners; owners every role)."""
    return [
        (value, label)
        for value, label in Role.choices
        if role_may_assign(request.membership.role, None, value)
    ]


def _invite_form(request: OrgRequest, data: QueryDict | None = None) -> InviteForm:
    form = InviteForm(data) if data is not None else InviteForm()
    cast(forms.ChoiceField, form.fields["role"]).choices = _assignable(request)
    return form


def _context(request: OrgRequest, form: InviteForm, **extra: object) -> dict[str, object]:
    org = request.org
    return {
        "form": form,
        # Rows whose role this member may change or remove: an admin leaves owners to owners.
        "manages_owners": request.membership.role == Role.OWNER,
        "members": org.memberships.select_related("user").order_by("user__email"),
        "invitations": org.invitations.filter(
            accepted_at=None, revoked_at=None, expires_at__gt=timezone.now()
        ),
        "roles": _assignable(request),
        "can_invite": member_can(request, Action.MEMBERS_INVITE),
        "can_change_role": member_can(request, Action.MEMBERS_CHANGE_ROLE),
        "can_remove": member_can(request, Action.MEMBERS_REMOVE),
        **extra,
    }


def _render_panel(
    request: OrgRequest, form: InviteForm, status: int = 200, **extra: object
) -> HttpResponse:
    template = "console/members.html#members-panel" if request.htmx else "console/members.html"
    return render(request, template, _context(request, form, **extra), status=status)


@requires(Action.MEMBERS_VIEW)
def member_list(request: OrgRequest, org_slug: str) -> HttpResponse:
    return render(request, "console/members.html", _context(request, _invite_form(request)))


@requires(Action.MEMBERS_INVITE)
@require_POST
def member_invite(request: OrgRequest, org_slug: str) -> HttpResponse:
    form = _invite_form(request, request.POST)
    if form.is_valid():
        try:
            with mail_unsent() as unsent:
                created = invitation_create(
                    org=request.org, actor=request.user, **form.cleaned_data
                )
        except ValidationError as error:
            apply_service_error(form, error)
        else:
            return _render_panel(
                request,
                _invite_form(request),
                invited=created.invitation,
                invite_unsent=bool(unsent),
            )
    return _render_panel(request, form, status=400)


@requires(Action.MEMBERS_INVITE)
@require_POST
def invitation_revoke_view(request: OrgRequest, org_slug: str, invitation_id: str) -> HttpResponse:
    invitation = get_object_or_404(request.org.invitations, id=invitation_id)
    try:
        invitation_revoke(invitation=invitation, actor=request.user)
    except ValidationError as exc:
        error = " ".join(exc.messages)
        if request.htmx:  # the swapped panel shows it; a message would wait for another page
            return _render_panel(request, _invite_form(request), status=400, member_error=error)
        messages.error(request, error)
        return redirect("member_list", org_slug=org_slug)
    done = f"The invitation to {invitation.email} is revoked."
    if request.htmx:
        return _render_panel(request, _invite_form(request), member_done=done)
    messages.success(request, done)
    return redirect("member_list", org_slug=org_slug)


@requires(Action.MEMBERS_CHANGE_ROLE)
@require_POST
def member_role(request: OrgRequest, org_slug: str, member_id: str) -> HttpResponse:
    membership = get_object_or_404(request.org.memberships.select_related("user"), id=member_id)
    form = RoleForm(request.POST)
    error = None
    if form.is_valid():
        try:
            membership_change_role(
                membership=membership,
                actor=request.membership,
                role=form.cleaned_data["role"],
            )
        except ValidationError as exc:
            error = " ".join(exc.messages)
    else:
        error = "Choose a valid role."
    done = None if error else f"{membership.user.email} is now {form.cleaned_data['role']}."
    if request.htmx:
        return _render_panel(
            request,
            _invite_form(request),
            status=400 if error else 200,
            member_error=error,
            member_done=done,
        )
    if error:
        messages.error(request, error)
    else:
        messages.success(request, str(done))
    return redirect("member_list", org_slug=org_slug)


@requires(Action.MEMBERS_REMOVE)
@require_POST
def member_remove(request: OrgRequest, org_slug: str, member_id: str) -> HttpResponse:
    membership = get_object_or_404(request.org.memberships.select_related("user"), id=member_id)
    try:
        membership_remove(membership=membership, actor=request.membership)
    except ValidationError as exc:
        error = " ".join(exc.messages)
        if request.htmx:
            return _render_panel(request, _invite_form(request), status=400, member_error=error)
        messages.error(request, error)
        return redirect("member_list", org_slug=org_slug)
    done = f"{membership.user.email} is no longer a member."
    if request.htmx:
        return _render_panel(request, _invite_form(request), member_done=done)
    messages.success(request, done)
    return redirect("member_list", org_slug=org_slug)


@requires(Action.ORG_VIEW)
@require_POST
def org_leave(request: OrgRequest, org_slug: str) -> HttpResponse:
    """Any member may leave, except the last owner."""
    membership = request.membership
    try:
        membership_remove(membership=membership, actor=membership)
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
        return redirect("org_settings", org_slug=org_slug)
    messages.success(request, f"You left {membership.org.name}.")
    return redirect("home")
