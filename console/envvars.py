"""Typed readers for environment variables. They fail loudly on values they cannot parse."""

from __future__ import annotations

import os
import re

from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
# What Django REST framework's throttles read: a count, a slash, a unit it knows by its first
# letter (second, minute, hour, day).
_RATE = re.compile(r"[0-9]+/[smhd][a-z]*")


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (1/0, true/false), got {raw!r}")


def env_int(
    name: str, default: int, *, minimum: int | None = None, maximum: int | None = None
) -> int:
    """An integer, refused unless ``minimum <= value <= maximum`` (where they are given)."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, got {raw!r}") from None
    too_low = minimum is not None and value < minimum
    too_high = maximum is not None and value > maximum
    if too_low or too_high:
        if maximum is None:
            allowed = f"at least {minimum}"
        elif minimum is None:
            allowed = f"at most {maximum}"
        else:
            allowed = f"between {minimum} and {maximum}"
        raise ImproperlyConfigured(f"{name} must be {allowed}, got {value}")
    return value


def comma_list(raw: str) -> list[str]:
    """``"a, b,,c "`` -> ``["a", "b", "c"]``: settings and form fields alike."""
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_list(name: str, default: list[str] | None = None) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return list(default or [])
    return comma_list(raw)


def env_fernet_keys(name: str) -> list[str]:
    """Comma-separated Fernet keys (32 url-safe base64-encoded bytes each); none when unset.
    A malformed one is refused by its place in the list, never echoed: it is a secret."""
    keys = comma_list(os.environ.get(name, ""))
    for place, key in enumerate(keys, 1):
        try:
            Fernet(key.encode())
        except ValueError:
            raise ImproperlyConfigured(
                f"{name} must be comma-separated Fernet keys (32 url-safe base64-encoded bytes "
                f"each, as Fernet.generate_key() makes them); key {place} is not one"
            ) from None
    return keys


def env_rate(name: str, default: str) -> str:
    """A request rate for Django REST framework's throttles, such as ``1200/min``."""
    raw = os.environ.get(name, default)
    if not _RATE.fullmatch(raw):
        raise ImproperlyConfigured(
            f"{name} must look like 1200/min (a number of requests, then /second, /min, /hour "
            f"or /day), got {raw!r}"
        )
    return raw
