"""Tenancy, accounts, API keys and the audit log.

Every tenant-owned row has an ``org`` foreign key; views reach rows through the org
(``request.org.api_keys``) so that an id from another org simply does not match. URLs carry UUIDs,
never integer primary keys.
"""

from __future__ import annotations

import uuid
from typing import Any, ClassVar

from django.contrib.auth.models import AbstractUser, BaseUserManager
from django.db import models
from django.utils import timezone
from django.utils.crypto import salted_hmac

from console.permissions import Role


class UserManager(BaseUserManager["User"]):
    use_in_migrations = True

    def _create(self, email: str, password: str | None, **extra: Any) -> User:
        if not email:
            raise ValueError("An email address is required")
        user = self.model(email=self.normalize_email(email).lower(), **extra)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def create_user(self, email: str, password: str | None = None, **extra: Any) -> User:
        extra.setdefault("is_staff", False)
        extra.setdefault("is_superuser", False)
        return self._create(email, password, **extra)

    def create_superuser(self, email: str, password: str | None = None, **extra: Any) -> User:
        extra["is_staff"] = True
        extra["is_superuser"] = True
        return self._create(email, password, **extra)

    def get_by_natural_key(self, username: str | None) -> User:
        """Signing in finds the account whatever the case the address is typed in (an exact
        match first, for any older accounts that differ only in case)."""
        email = username or ""
        exact = self.filter(email=email).first()
        if exact is not None:
            return exact
        matches = list(self.filter(email__iexact=email)[:2])
        if len(matches) != 1:
            raise self.model.DoesNotExist
        return matches[0]


class User(AbstractUser):
    """A person. Signs in with an email address; belongs to organisations through memberships."""

    username = None  # type: ignore[assignment]
    email = models.EmailField("email address", unique=True)
    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    # Set when the person opened the link emailed to their address (or accepted an invitation
    # sent there). Until then they can look around but change nothing in an organisation.
    email_verified_at = models.DateTimeField(null=True, blank=True)
    # Two-factor authentication: the authenticator's secret, encrypted at rest (console/crypto.py),
    # set once the person proved their app with a code; the last step a code was accepted for,
    # so that no code works twice.
    totp_secret_encrypted = models.TextField(blank=True)
    totp_enabled_at = models.DateTimeField(null=True, blank=True)
    totp_last_step = models.BigIntegerField(default=0)
    # Bumped to sign the person out of every session (all but the one asking, which is re-keyed).
    session_epoch = models.PositiveIntegerField(default=0)
    # The address an email change was last asked for, until its link is opened: only that link
    # works, once (an earlier request's link, or a used one, must not move the account again).
    email_change_to = models.EmailField(blank=True)

    USERNAME_FIELD = "email"
    REQUIRED_FIELDS: ClassVar[list[str]] = []

    objects = UserManager()  # type: ignore[misc,assignment]

    def __str__(self) -> str:
        return self.email

    def _get_session_auth_hash(self, secret: str | None = None) -> str:
        """Sessions carry an HMAC of the password hash (a new password signs every session
        out); the session epoch joins it, so that bumping it does the same. Epoch 0 gives
        Django's own value, so existing sessions survive the field's arrival."""
        value = self.password if not self.session_epoch else f"{self.password}:{self.session_epoch}"
        return salted_hmac(
            "django.contrib.auth.models.AbstractBaseUser.get_session_auth_hash",
            value,
            secret=secret,
            algorithm="sha256",
        ).hexdigest()

    @property
    def has_two_factor(self) -> bool:
        return self.totp_enabled_at is not None

    @property
    def is_deleted(self) -> bool:
        """The person deleted their account; the row stays, anonymised, for audit trails."""
        return not self.is_active and self.email.endswith("@deleted.invalid")


class Organisation(models.Model):
    """A tenant. Owns deployments, routes, keys, usage and a bill."""

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    name = models.CharField(max_length=100)
    slug = models.SlugField(max_length=50, unique=True)
    created_at = models.DateTimeField(default=timezone.now)
    suspended_at = models.DateTimeField(null=True, blank=True)
    suspended_reason = models.CharField(max_length=200, blank=True)
    # Set when an owner closed the organisation: its keys were revoked, its deployments deleted,
    # its members removed. The row and its records stay for billing and the audit trail.
    closed_at = models.DateTimeField(null=True, blank=True)
    require_two_factor = models.BooleanField(
        default=False,
        help_text="Members must sign in with two-factor authentication to open the "
        "organisation in the console or the REST API (API keys are not affected).",
    )
    # Quotas enforced when deployments are created or scaled.
    max_gpus = models.PositiveIntegerField(default=8)
    max_replicas = models.PositiveIntegerField(default=8)
    # Gateway rate limits for the whole organisation, set by platform staff.
    rpm_limit = models.PositiveIntegerField(
        "requests per minute",
        null=True,
        blank=True,
        help_text="For all of the organisation's keys together. Empty: the platform default "
        "(GATEWAY_ORG_RPM_LIMIT); 0: no limit.",
    )
    tpm_limit = models.PositiveIntegerField(
        "tokens per minute",
        null=True,
        blank=True,
        help_text="For all of the organisation's keys together. Empty: the platform default "
        "(GATEWAY_ORG_TPM_LIMIT); 0: no limit.",
    )

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def is_suspended(self) -> bool:
        return self.suspended_at is not None

    @property
    def is_closed(self) -> bool:
        return self.closed_at is not None


class Membership(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    org = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["org", "user"], name="membership_unique_org_user")
        ]
        ordering = ["created_at"]

    def __str__(self) -> str:
        return f"{self.user} in {self.org} ({self.role})"


class RecoveryCode(models.Model):
    """A single-use code that stands in for the authenticator app. Only its digest is kept."""

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="recovery_codes")
    digest = models.CharField(max_length=64)
    used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "digest"], name="recovery_code_unique")
        ]

    def __str__(self) -> str:
        return f"recovery code of {self.user}"


class Invitation(models.Model):
    """An emailed, single-use, expiring invitation. Only the token's SHA-256 digest is stored."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    org = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="invitations")
    email = models.EmailField()
    role = models.CharField(max_length=16, choices=Role.choices)
    token_digest = models.CharField(max_length=64, unique=True)
    invited_by = models.ForeignKey(User, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    accepted_at = models.DateTimeField(null=True, blank=True)
    accepted_by = models.ForeignKey(
        User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.email} to {self.org}"

    @property
    def is_pending(self) -> bool:
        return (
            self.accepted_at is None
            and self.revoked_at is None
            and self.expires_at > timezone.now()
        )


class Scope(models.TextChoices):
    INFERENCE = "inference", "Inference (/v1 gateway)"
    MANAGE = "manage", "Manage (REST API, read and write)"
    READ = "read", "Read (REST API, GET only)"


class ApiKey(models.Model):
    """A programmatic credential. The key itself is shown once; only its digest is kept."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    org = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16)
    digest = models.CharField(max_length=64, unique=True)
    scopes = models.JSONField(default=list)
    allowed_models = models.JSONField(default=list, blank=True)
    # Networks (CIDR) the key may be used from; empty: anywhere.
    allowed_ips = models.JSONField(default=list, blank=True)
    rpm_limit = models.PositiveIntegerField(null=True, blank=True)
    tpm_limit = models.PositiveIntegerField(null=True, blank=True)
    monthly_budget_micros = models.BigIntegerField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(User, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    # After a roll, the replaced secret's digest keeps working until previous_expires_at, so that
    # programs can move to the new secret without an outage.
    previous_digest = models.CharField(max_length=64, blank=True, db_index=True)
    previous_prefix = models.CharField(max_length=16, blank=True)
    previous_expires_at = models.DateTimeField(null=True, blank=True)
    rolled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def previous_active(self) -> bool:
        return (
            bool(self.previous_digest)
            and self.previous_expires_at is not None
            and self.previous_expires_at > timezone.now()
        )

    @property
    def is_active(self) -> bool:
        if self.revoked_at is not None:
            return False
        return self.expires_at is None or self.expires_at > timezone.now()


class AuditEvent(models.Model):
    """A security-relevant action: who did what to which object, and when."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    org = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="audit_events")
    actor = models.ForeignKey(User, null=True, on_delete=models.SET_NULL, related_name="+")
    actor_key = models.ForeignKey(ApiKey, null=True, on_delete=models.SET_NULL, related_name="+")
    action = models.CharField(max_length=64, db_index=True)
    target_type = models.CharField(max_length=32, blank=True)
    target_id = models.CharField(max_length=64, blank=True)
    target_repr = models.CharField(max_length=200, blank=True)
    data = models.JSONField(default=dict, blank=True)
    ip_address = models.GenericIPAddressField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.action} {self.target_repr}"

    @property
    def actor_label(self) -> str:
        if self.actor_id is not None and self.actor is not None:
            return "deleted user" if self.actor.is_deleted else self.actor.email
        if self.actor_key_id is not None and self.actor_key is not None:
            return f"key {self.actor_key.prefix}…"
        return "system"


class ControlPlaneVersion(models.Model):
    """A single counter bumped whenever keys, orgs, routes or replicas change.

    Gateway processes poll it (one tiny query a second, never one per request) and rebuild their
    in-memory snapshot when it moves.
    """

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    version = models.BigIntegerField(default=0)
    # Moves with ``version`` unless a change declared it cannot concern API keys (replicas,
    # deployments, routes): gateways read every key again only when this one moves.
    keys_version = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return f"control plane v{self.version} (keys v{self.keys_version})"


class WebhookEndpoint(models.Model):
    """A tenant's URL that is sent the organisation's events (its audit log's actions), signed
    with a secret only the tenant and the platform know (stored encrypted)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    org = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="webhooks")
    url = models.URLField(max_length=500)
    # Action prefixes to send ("deployment.", "key.revoked"); empty: every event.
    events = models.JSONField(default=list, blank=True)
    secret_encrypted = models.TextField()
    created_by = models.ForeignKey(User, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    disabled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at"]

    def __str__(self) -> str:
        return self.url

    def wants(self, action: str) -> bool:
        return not self.events or any(action.startswith(prefix) for prefix in self.events)


class DeliveryStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    DELIVERED = "delivered", "Delivered"
    FAILED = "failed", "Failed"


class WebhookDelivery(models.Model):
    """One event sent (or being sent) to one endpoint: retried with backoff until it is
    answered 2xx or runs out of attempts."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    endpoint = models.ForeignKey(
        WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries"
    )
    event_type = models.CharField(max_length=64)
    payload = models.JSONField()
    status = models.CharField(
        max_length=16, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING
    )
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now, db_index=True)
    response_status = models.PositiveIntegerField(null=True, blank=True)
    error = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["status", "next_attempt_at"])]

    def __str__(self) -> str:
        return f"{self.event_type} to {self.endpoint}"
