from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.auth import update_session_auth_hash
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.contrib.auth.forms import UserChangeForm
from django.core.paginator import Paginator
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.functional import cached_property

from console.models import (
    ApiKey,
    AuditEvent,
    ControlPlaneVersion,
    Invitation,
    Membership,
    Organisation,
    RecoveryCode,
    User,
    WebhookDelivery,
    WebhookEndpoint,
)
from console.services.audit import audit_record
from console.services.keys import api_key_revoke
from console.services.mail import mail_unsent
from console.services.orgs import org_reactivate, org_suspend
from console.services.two_factor import two_factor_disable
from console.services.users import sessions_end, user_email_verified
from console.snapshot import snapshot_bump


class EmailConfirmedFilter(admin.SimpleListFilter):
    title = "email confirmed"
    parameter_name = "email_confirmed"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "Yes"), ("no", "No")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() in ("yes", "no"):
            return queryset.filter(email_verified_at__isnull=self.value() == "no")
        return queryset


class ReadOnlyAdmin(admin.ModelAdmin[Any]):
    """Rows written by services or background work, with their checks, audits and
    notifications: staff see them and act through admin actions, never by editing fields,
    which would skip all of that."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class StaffUserChangeForm(UserChangeForm[User]):
    def clean_email(self) -> str:
        # As everywhere: addresses in lower case, one account per address whatever its case.
        email = (self.cleaned_data.get("email") or "").strip().lower()
        others = User.objects.filter(email__iexact=email).exclude(pk=self.instance.pk)
        if others.exists():
            raise forms.ValidationError("Another account uses this address.")
        return email


@admin.register(User)
class UserAdmin(BaseUserAdmin):
    """People's accounts. People delete their own (anonymised, so audit trails keep an actor:
    docs/permissions.md); staff delete only staff accounts that belong to no organisation, and
    deactivate the others."""

    form = StaffUserChangeForm
    ordering = ["email"]
    list_display = [
        "email",
        "first_name",
        "last_name",
        "email_verified_at",
        "totp_enabled_at",
        "is_staff",
        "is_active",
        "date_joined",
    ]
    list_filter = [
        EmailConfirmedFilter,
        ("totp_enabled_at", admin.EmptyFieldListFilter),
        "is_staff",
        "is_superuser",
        "is_active",
    ]
    search_fields = ["email", "first_name", "last_name"]
    readonly_fields = ["email_verified_at", "totp_enabled_at"]
    actions = ["confirm_email", "two_factor_reset", "sign_out_everywhere"]
    fieldsets = (
        (None, {"fields": ("email", "email_verified_at", "totp_enabled_at", "password")}),
        ("Personal info", {"fields": ("first_name", "last_name")}),
        (
            "Permissions",
            {"fields": ("is_active", "is_staff", "is_superuser", "groups", "user_permissions")},
        ),
        ("Dates", {"fields": ("last_login", "date_joined")}),
    )
    add_fieldsets = ((None, {"classes": ("wide",), "fields": ("email", "password1", "password2")}),)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if obj is not None and (not obj.is_staff or obj.memberships.exists()):
            return False
        return super().has_delete_permission(request, obj)

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # it would not ask the question above per account
        return actions

    @admin.action(description="Mark their email addresses as confirmed")
    def confirm_email(self, request: HttpRequest, queryset: QuerySet[User]) -> None:
        count = 0
        for user in queryset.filter(email_verified_at=None):
            user_email_verified(user=user)
            count += 1
        self.message_user(request, f"Confirmed {count} email address(es).", messages.SUCCESS)

    @admin.action(
        description="Turn off two-factor authentication (lost app and recovery codes; "
        "check who is asking first)"
    )
    def two_factor_reset(self, request: HttpRequest, queryset: QuerySet[User]) -> None:
        count = 0
        with mail_unsent() as unsent:
            for user in queryset.exclude(totp_enabled_at=None):
                two_factor_disable(user=user, code=None, by_staff=request.user)  # type: ignore[arg-type]
                count += 1
        emailed = "each was emailed" if not unsent else f"{len(unsent)} could not be emailed"
        self.message_user(
            request,
            f"Turned off two-factor authentication for {count} account(s); {emailed}.",
            messages.SUCCESS,
        )

    @admin.action(description="Sign out of every session (a stolen session or laptop)")
    def sign_out_everywhere(self, request: HttpRequest, queryset: QuerySet[User]) -> None:
        count = 0
        for user in queryset:
            sessions_end(user=user)
            count += 1
        me = queryset.filter(pk=request.user.pk or 0).first()
        if me is not None:  # staff who picked themselves stay signed in here
            update_session_auth_hash(request, me)
        self.message_user(request, f"Signed {count} account(s) out everywhere.", messages.SUCCESS)

    def save_model(self, request: HttpRequest, obj: User, form: Any, change: bool) -> None:
        # A new address has not been confirmed by anyone: its owner confirms it again (or staff
        # do, with the action, when support has checked it).
        if change and "email" in form.changed_data:
            obj.email_verified_at = None
        super().save_model(request, obj, form, change)


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(admin.ModelAdmin[WebhookEndpoint]):
    """Read-only: tenants manage their webhooks; staff see where events go."""

    list_display = ["url", "org", "events", "created_at", "disabled_at"]
    list_filter = [("disabled_at", admin.EmptyFieldListFilter)]
    search_fields = ["url", "org__slug"]
    exclude = ["secret_encrypted"]
    readonly_fields = ["org", "url", "events", "created_by", "created_at", "disabled_at"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(
        self, request: HttpRequest, obj: WebhookEndpoint | None = None
    ) -> bool:
        return False  # its deliveries would go with it; tenants delete (disable) their own


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(admin.ModelAdmin[WebhookDelivery]):
    """Read-only: the tenant's delivery history (old ones are pruned daily, by age)."""

    list_display = ["event_type", "endpoint", "status", "attempts", "response_status", "created_at"]
    list_filter = ["status"]
    search_fields = ["event_type", "endpoint__url", "endpoint__org__slug"]
    readonly_fields = [
        "endpoint",
        "event_type",
        "payload",
        "status",
        "attempts",
        "next_attempt_at",
        "response_status",
        "error",
        "created_at",
        "finished_at",
    ]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(
        self, request: HttpRequest, obj: WebhookDelivery | None = None
    ) -> bool:
        return False


@admin.register(RecoveryCode)
class RecoveryCodeAdmin(admin.ModelAdmin[RecoveryCode]):
    """Read-only: which recovery codes a person has used (the codes themselves are not kept)."""

    list_display = ["user", "used_at"]
    list_filter = [("used_at", admin.EmptyFieldListFilter)]
    search_fields = ["user__email"]
    fields = ["user", "used_at"]
    readonly_fields = ["user", "used_at"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class MembershipInline(admin.TabularInline[Membership, Organisation]):
    """Who belongs, for reading: roles and removals go through the console, whose rules (an
    organisation keeps an owner) and audit log an edit here would skip."""

    model = Membership
    extra = 0
    fields = ["user", "role", "created_at"]
    readonly_fields = ["user", "role", "created_at"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Membership]:
        # Each row shows its person (and names the organisation): read them with the rows,
        # not one query a member.
        return super().get_queryset(request).select_related("user", "org")

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Organisation)
class OrganisationAdmin(admin.ModelAdmin[Organisation]):
    list_display = [
        "name",
        "slug",
        "created_at",
        "suspended_at",
        "closed_at",
        "max_gpus",
        "max_replicas",
        "rpm_limit",
        "tpm_limit",
    ]
    list_filter = [
        ("suspended_at", admin.EmptyFieldListFilter),
        ("closed_at", admin.EmptyFieldListFilter),
    ]
    search_fields = ["name", "slug"]
    # The slug is in every console address and REST path the tenant's programs use, and is
    # checked (reserved words, case) only where an organisation is created, in the console.
    readonly_fields = [
        "slug",
        "public_id",
        "created_at",
        "suspended_at",
        "suspended_reason",
        "closed_at",
    ]
    inlines = [MembershipInline]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # people create organisations (and become their owners) in the console

    actions = ["suspend", "reactivate"]

    def save_model(self, request: HttpRequest, obj: Organisation, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        if change:
            for action, data in _org_changes(form):
                audit_record(
                    org=obj,
                    action=action,
                    actor=request.user,  # type: ignore[arg-type]
                    target=obj,
                    data={"by": "platform staff", **data},
                )
        # Rate limits travel to the gateways in their snapshot.
        snapshot_bump()

    @admin.action(description="Suspend selected organisations (their keys stop working)")
    def suspend(self, request: HttpRequest, queryset: QuerySet[Organisation]) -> None:
        for org in queryset:
            org_suspend(org=org, reason="Suspended by platform staff", actor=request.user)  # type: ignore[arg-type]
        self.message_user(
            request, f"Suspended {queryset.count()} organisation(s).", messages.SUCCESS
        )

    @admin.action(description="Reactivate selected organisations")
    def reactivate(self, request: HttpRequest, queryset: QuerySet[Organisation]) -> None:
        for org in queryset:
            org_reactivate(org=org, actor=request.user)  # type: ignore[arg-type]
        self.message_user(
            request, f"Reactivated {queryset.count()} organisation(s).", messages.SUCCESS
        )


def _org_changes(form: Any) -> list[tuple[str, dict[str, Any]]]:
    """A staff edit of an organisation as audit events: the tenant's own actions where it has
    them (renaming, requiring two-factor authentication), and the limits only staff set with
    their values before and after."""
    changed = {
        name: (form.initial.get(name), form.cleaned_data.get(name))
        for name in form.changed_data
        if form.initial.get(name) != form.cleaned_data.get(name)
    }
    events: list[tuple[str, dict[str, Any]]] = []
    if "name" in changed:
        events.append(("org.renamed", {"from": changed["name"][0]}))
    if "require_two_factor" in changed:
        required = changed["require_two_factor"][1]
        events.append(
            ("org.two_factor_required" if required else "org.two_factor_not_required", {})
        )
    for action, names in (
        ("org.quota_changed", ("max_gpus", "max_replicas")),
        ("org.rate_limits_changed", ("rpm_limit", "tpm_limit")),
    ):
        values = {
            name: {"before": changed[name][0], "after": changed[name][1]}
            for name in names
            if name in changed
        }
        if values:
            events.append((action, values))
    return events


@admin.register(Membership)
class MembershipAdmin(ReadOnlyAdmin):
    """Read only: see MembershipInline."""

    list_display = ["user", "org", "role", "created_at"]
    list_filter = ["role"]
    search_fields = ["user__email", "org__name", "org__slug"]
    autocomplete_fields = ["user", "org"]


@admin.register(Invitation)
class InvitationAdmin(admin.ModelAdmin[Invitation]):
    """Invitations are sent from an organisation's Members page (a token, an email, an audit
    event); here staff see them."""

    list_display = ["email", "org", "role", "created_at", "expires_at", "accepted_at", "revoked_at"]
    list_filter = ["role"]
    search_fields = ["email", "org__name"]
    exclude = ["token_digest"]
    readonly_fields = [
        "org",
        "email",
        "role",
        "invited_by",
        "created_at",
        "expires_at",
        "accepted_at",
        "accepted_by",
        "revoked_at",
    ]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


class CappedCountPaginator(Paginator):
    """Counts at most ``cap`` rows plus one (a LIMIT inside the count), so that a changelist over
    a table of hundreds of millions of rows never counts them all. ``capped`` tells the page
    that there are more than it says."""

    cap = 10_000

    @cached_property
    def count(self) -> int:
        items = self.object_list
        if isinstance(items, QuerySet):
            return items[: self.cap + 1].count()
        return min(len(items), self.cap + 1)

    @property
    def capped(self) -> bool:
        return self.count > self.cap

    @property
    def cap_text(self) -> str:
        return f"{self.cap:,}"


class LedgerAdmin(ReadOnlyAdmin):
    """For tables that grow with traffic (a row per request): the changelist never scans the
    whole table. No full count, a capped count of the filtered rows, newest first by primary key,
    no date hierarchy (which reads every row's date) and no filters that list the column's
    distinct values."""

    show_full_result_count = False
    paginator = CappedCountPaginator
    ordering = ["-pk"]


class SnapshotAdmin(admin.ModelAdmin[Any]):
    """For rows the gateways hold in their snapshot (keys, endpoints...): a staff change reaches
    every gateway process within about a second, as a tenant's change does, and appears in the
    organisation's audit log under ``audit_action`` with the fields it changed."""

    audit_action = ""

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        changes = {
            name: {"before": before, "after": after}
            for name in form.changed_data
            # A form may call a field changed that is not (a JSON list posted back as text).
            if (before := _plain(form.initial.get(name)))
            != (after := _plain(form.cleaned_data.get(name)))
        }
        if change and changes and self.audit_action:
            audit_record(
                org=obj.org,
                action=self.audit_action,
                actor=request.user,  # type: ignore[arg-type]
                target=obj,
                data={"by": "platform staff", **changes},
            )
        snapshot_bump()

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        super().delete_model(request, obj)
        snapshot_bump()

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        super().delete_queryset(request, queryset)
        snapshot_bump()


def _plain(value: Any) -> Any:
    """A form value as the audit log's JSON can hold it."""
    if value is None or isinstance(value, bool | int | float | str | list | dict):
        return value
    return str(value)


class ApiKeyAdminForm(forms.ModelForm[ApiKey]):
    def clean_allowed_models(self) -> list[str]:
        """What the console and the API accept: a list of model names (the gateways' snapshot
        reads it as one)."""
        value = self.cleaned_data.get("allowed_models") or []
        if not isinstance(value, list) or not all(
            isinstance(name, str) and 0 < len(name.strip()) <= 200 for name in value
        ):
            raise forms.ValidationError(
                'Enter a JSON list of model names, e.g. ["tiny-llama"], or [] for every model.'
            )
        return sorted({name.strip() for name in value})


@admin.register(ApiKey)
class ApiKeyAdmin(SnapshotAdmin):
    form = ApiKeyAdminForm
    list_display = [
        "name",
        "prefix",
        "org",
        "scopes",
        "created_at",
        "last_used_at",
        "revoked_at",
        "expires_at",
    ]
    list_filter = [("revoked_at", admin.EmptyFieldListFilter)]
    search_fields = ["name", "prefix", "org__name", "org__slug"]
    # The digest is not secret, but there is nothing a person can do with it: keep it out of view.
    exclude = ["digest"]
    # Scopes only through the tenant (a key's holders must not gain powers behind their
    # owner's back); revocation through the action below, which is audited as the console's is.
    readonly_fields = [
        "org",
        "prefix",
        "scopes",
        "created_by",
        "created_at",
        "last_used_at",
        "revoked_at",
    ]
    actions = ["revoke"]
    audit_action = "key.updated"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # keys are created by tenants, where the secret can be shown once

    def has_delete_permission(self, request: HttpRequest, obj: ApiKey | None = None) -> bool:
        return False  # revoke instead: usage, spend and the audit log keep naming the key

    @admin.action(description="Revoke selected keys (they stop working within a second)")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        revoked = 0
        for key in queryset.filter(revoked_at=None):
            api_key_revoke(key=key, actor=request.user)  # type: ignore[arg-type]
            revoked += 1
        self.message_user(request, f"Revoked {revoked} key(s).", messages.SUCCESS)


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin[AuditEvent]):
    """Every organisation's log, a row per action, so it grows for good: the changelist reads
    each row's organisation and person with the page, counts no more than it must and filters
    by date with fixed choices instead of a date hierarchy (which reads every row's date), as
    the ledger's pages do."""

    list_display = ["created_at", "org", "action", "actor", "target_repr", "ip_address"]
    list_select_related = ["org", "actor"]
    show_full_result_count = False
    paginator = CappedCountPaginator
    list_filter = ["action", ("created_at", admin.DateFieldListFilter)]
    search_fields = ["org__name", "actor__email", "target_repr", "target_id"]

    def has_delete_permission(self, request: HttpRequest, obj: AuditEvent | None = None) -> bool:
        return False  # a record of who did what is not staff's to remove

    def has_change_permission(self, request: HttpRequest, obj: AuditEvent | None = None) -> bool:
        return False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(ControlPlaneVersion)
class ControlPlaneVersionAdmin(ReadOnlyAdmin):
    """The counters every change bumps and the gateways poll: shown, never set by hand."""

    list_display = ["id", "version", "keys_version"]
