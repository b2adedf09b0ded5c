"""Counts kept in the cache over a fixed window: failures of the two sign-in steps (passwords and
two-factor codes), and emails sent (password resets, invitations, address changes); each refuses
more once its count is reached."""

from __future__ import annotations

from django.core.cache import cache


def failures(key: str) -> int:
    return int(cache.get(key, 0))


def failure_add(key: str, window_s: int) -> None:
    """One more failure; the window starts with the first one."""
    if not cache.add(key, 1, window_s):
        try:
            cache.incr(key)
        except ValueError:  # expired between the two calls
            cache.add(key, 1, window_s)
