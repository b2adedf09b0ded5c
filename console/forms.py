from __future__ import annotations

import uuid
from typing import Any

from django import forms
from django.contrib.auth.forms import PasswordChangeForm, PasswordResetForm, UserCreationForm
from django.core.exceptions import ValidationError
from django.template.loader import render_to_string

from console.days import day_validators
from console.envvars import comma_list
from console.models import ApiKey, Organisation, Scope, User
from console.permissions import Role
from console.services.keys import MAX_KEY_LIMIT
from console.services.mail import mail_send


class SignupForm(UserCreationForm[User]):
    class Meta:
        model = User
        fields = ("email",)

    def clean_email(self) -> str:
        # Addresses are kept in lower case and compared without case: Ann@ and ann@ are one
        # mailbox, so one account.
        email = (self.cleaned_data.get("email") or "").strip().lower()
        if User.objects.filter(email__iexact=email).exists():
            raise forms.ValidationError("An account with this email address already exists.")
        return email


class ResetPasswordForm(PasswordResetForm):
    """Django's, sending through ``mail_send``: ``unsent`` tells the view that the link could not
    be sent, where Django's form would only log it."""

    unsent = False

    def send_mail(
        self,
        subject_template_name: str,
        email_template_name: str,
        context: dict[str, Any],
        from_email: str | None,
        to_email: str,
        html_email_template_name: str | None = None,
    ) -> None:
        subject = "".join(render_to_string(subject_template_name, context).splitlines())
        message = render_to_string(email_template_name, context)
        if not mail_send(kind="password reset", subject=subject, message=message, to=[to_email]):
            self.unsent = True


class AccountNameForm(forms.Form):
    # The lengths of AbstractUser's columns; either name may be left empty.
    first_name = forms.CharField(max_length=150, required=False)
    last_name = forms.CharField(max_length=150, required=False)


class CurrentPasswordForm(forms.Form):
    """A form that also asks for the signed-in person's current password (changes that an
    unattended, signed-in browser must not be enough for). Its other fields come first."""

    password = forms.CharField(
        label="Current password",
        strip=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "current-password"}),
    )
    # Where the page has several such forms, each gets a prefix so that ids stay unique.
    default_prefix: str | None = None

    def __init__(self, user: User, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("prefix", self.default_prefix)
        super().__init__(*args, **kwargs)
        self.user = user
        self.order_fields([name for name in self.fields if name != "password"] + ["password"])

    def clean_password(self) -> str:
        password: str = self.cleaned_data.get("password", "")
        if not self.user.check_password(password):
            raise forms.ValidationError("Your current password was entered incorrectly.")
        return password


class AccountEmailForm(CurrentPasswordForm):
    email = forms.EmailField(label="New email address", max_length=254)


class AccountDeleteForm(CurrentPasswordForm):
    confirm = forms.CharField(label="Type your email address to confirm")
    default_prefix = "delete"

    def clean_confirm(self) -> str:
        confirm: str = self.cleaned_data.get("confirm", "").strip()
        if confirm.lower() != self.user.email.lower():
            raise forms.ValidationError(f"Type {self.user.email} to confirm.")
        return confirm


class AccountPasswordForm(PasswordChangeForm):
    """Django's password change form, minus the autofocus that would pull the account page
    down to it from the name form above."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["old_password"].widget.attrs.pop("autofocus", None)
        self.fields["old_password"].label = "Current password"


class OrgForm(forms.Form):
    name = forms.CharField(max_length=100)
    slug = forms.SlugField(
        max_length=50, required=False, help_text="Used in URLs. Leave empty to derive it."
    )


class OrgRenameForm(forms.Form):
    name = forms.CharField(max_length=100)


class OrgCloseForm(CurrentPasswordForm):
    """Closing is for good: the owner types the slug and their password."""

    confirm = forms.CharField(max_length=50, label="Type the organisation's slug to confirm")


class DayRangeForm(forms.Form):
    """Filters over a range of UTC days, both included; a backwards range names ``start``."""

    start = forms.DateField(
        required=False,
        label="From (UTC)",
        widget=forms.DateInput(attrs={"type": "date"}),
        validators=day_validators(),
    )
    end = forms.DateField(
        required=False,
        label="To (UTC)",
        widget=forms.DateInput(attrs={"type": "date"}),
        validators=day_validators(),
    )

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("start") and data.get("end") and data["start"] > data["end"]:
            self.add_error("start", "The start must not be after the end.")
        return data


class ApiKeyForm(forms.Form):
    name = forms.CharField(max_length=100)
    scopes = forms.MultipleChoiceField(
        choices=Scope.choices, widget=forms.CheckboxSelectMultiple, initial=[Scope.INFERENCE]
    )
    allowed_models = forms.CharField(
        required=False,
        help_text="Comma-separated model or route names. Empty allows every model.",
    )
    expires_at = forms.DateTimeField(
        required=False,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
        help_text="Optional expiry (UTC).",
    )
    rpm_limit = forms.IntegerField(
        required=False, min_value=1, max_value=MAX_KEY_LIMIT, label="Requests per minute"
    )
    tpm_limit = forms.IntegerField(
        required=False, min_value=1, max_value=MAX_KEY_LIMIT, label="Tokens per minute"
    )
    allowed_ips = forms.CharField(
        required=False,
        label="Allowed IP addresses",
        help_text="Comma-separated addresses or networks (203.0.113.7, 10.0.0.0/8). Empty allows "
        "every address.",
    )

    def clean_allowed_models(self) -> list[str]:
        raw: str = self.cleaned_data.get("allowed_models") or ""
        return comma_list(raw)

    def clean_allowed_ips(self) -> list[str]:
        raw: str = self.cleaned_data.get("allowed_ips") or ""
        return comma_list(raw.replace("\n", ","))


class ApiKeyEditForm(ApiKeyForm):
    """The creation form's fields, prefilled from a key (``initial_for``)."""

    # Seconds in the value and the step, so that the prefilled expiry survives a save unchanged
    # (datetime-local otherwise shows and sends minutes only).
    expires_at = forms.DateTimeField(
        required=False,
        widget=forms.DateTimeInput(
            attrs={"type": "datetime-local", "step": "1"}, format="%Y-%m-%dT%H:%M:%S"
        ),
        help_text="Optional expiry (UTC). Empty: the key never expires.",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        scopes = self.fields["scopes"]
        scopes.help_text = (
            "Scopes can be removed but not added: create a new key for a wider scope."
        )

    @staticmethod
    def initial_for(key: ApiKey) -> dict[str, Any]:
        return {
            "name": key.name,
            "scopes": list(key.scopes),
            "allowed_models": ", ".join(key.allowed_models),
            "expires_at": key.expires_at,
            "rpm_limit": key.rpm_limit,
            "tpm_limit": key.tpm_limit,
            "allowed_ips": ", ".join(key.allowed_ips),
        }


class InviteForm(forms.Form):
    email = forms.EmailField(max_length=254)
    role = forms.ChoiceField(choices=Role.choices, initial=Role.DEVELOPER)


class RoleForm(forms.Form):
    role = forms.ChoiceField(choices=Role.choices)


# Above this many keys a filter by key is a text field rather than a list of every key, which
# made the usage and request pages hundreds of kilobytes for an organisation with thousands.
KEY_CHOICES_MAX = 200


class KeyFilterField(forms.CharField):
    """One of ``org``'s keys, typed as the start shown for it (``sk-…``) or its id. Cleans to the
    key's id as text, as the list of keys does."""

    def __init__(self, org: Organisation) -> None:
        super().__init__(
            required=False,
            max_length=100,
            label="API key",
            widget=forms.TextInput(attrs={"placeholder": "All keys, or sk-… or a key's id"}),
        )
        self.org = org

    def clean(self, value: Any) -> str:
        text = (super().clean(value) or "").strip().rstrip("…").strip()
        if not text:
            return ""
        keys = self.org.api_keys
        try:
            return str(keys.get(pk=uuid.UUID(text)).pk)
        except (ValueError, ApiKey.DoesNotExist):
            pass
        found = list(keys.filter(prefix__startswith=text).values_list("pk", flat=True)[:2])
        if len(found) == 1:
            return str(found[0])
        if found:
            raise ValidationError(f"More than one key starts with {text}: type more of it.")
        raise ValidationError(f"No key of this organisation starts with {text}.")


def key_filter_field(org: Organisation) -> forms.Field:
    """A filter by one of ``org``'s keys: a list of them (name and start), or, past
    ``KEY_CHOICES_MAX`` keys, a ``KeyFilterField``."""
    keys = list(
        org.api_keys.order_by("name").values_list("id", "name", "prefix")[: KEY_CHOICES_MAX + 1]
    )
    if len(keys) > KEY_CHOICES_MAX:
        return KeyFilterField(org)
    choices = [(str(pk), f"{name} ({prefix}…)") for pk, name, prefix in keys]
    return forms.ChoiceField(required=False, label="API key", choices=[("", "All keys"), *choices])


def apply_service_error(form: forms.Form, error: ValidationError) -> None:
    """Show a service's ValidationError beside the field it names, or above the form."""
    if hasattr(error, "error_dict"):
        for field, errors in error.error_dict.items():
            form.add_error(field if field in form.fields else None, errors)
    else:
        form.add_error(None, error)


def form_kwargs(form: forms.Form) -> dict[str, Any]:
    return dict(form.cleaned_data)
