"""The one place that builds a ``StripeClient``, and the retry policy for Stripe calls.

With no ``STRIPE_API_KEY`` the platform is in local-ledger mode and nothing here is called.
Our own retries (not the library's) so that 429s are retried too, with exponential backoff, and so
that tests can replace the sleep.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import stripe
from django.conf import settings

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Tests swap in a recording ``stripe.HTTPClient``; production leaves it None (the library's own).
_http_client: stripe.HTTPClient | None = None


class StripeDisabledError(RuntimeError):
    """Raised when a Stripe call is attempted in local-ledger mode."""


def stripe_enabled() -> bool:
    return bool(settings.STRIPE_API_KEY)


@contextmanager
def http_client_override(client: stripe.HTTPClient) -> Iterator[None]:
    global _http_client
    previous, _http_client = _http_client, client
    try:
        yield
    finally:
        _http_client = previous


def stripe_client() -> stripe.StripeClient:
    if not stripe_enabled():
        raise StripeDisabledError("STRIPE_API_KEY is not set: billing runs in local-ledger mode")
    base = settings.STRIPE_API_BASE
    return stripe.StripeClient(
        settings.STRIPE_API_KEY,
        http_client=_http_client,
        max_network_retries=0,
        base_addresses={"api": base} if base else None,
    )


def is_retryable(error: Exception) -> bool:
    """429, 409 (lock conflicts), 5xx and connection failures are worth another try."""
    if isinstance(error, stripe.RateLimitError | stripe.APIConnectionError):
        return True
    if isinstance(error, stripe.StripeError):
        status = error.http_status or 0
        return status == 409 or status >= 500
    return False


def backoff_seconds(attempt: int) -> float:
    """0.5 s, 1 s, 2 s, ... capped at 8 s (attempt counts from 1)."""
    return float(min(0.5 * 2 ** (attempt - 1), 8.0))


def pause(seconds: float) -> None:
    """Wait between retries (a module function, so that tests can replace it)."""
    time.sleep(seconds)


def with_retries(
    call: Callable[[], T],
    *,
    attempts: int | None = None,
    sleep: Callable[[float], None] | None = None,
) -> T:
    """Run ``call``; on a retryable error wait and run it again, up to ``attempts`` times in all.

    The call must carry an idempotency key, so that a request that did reach Stripe is not
    repeated by the retry."""
    total = attempts if attempts is not None else settings.STRIPE_MAX_RETRIES + 1
    for attempt in range(1, total + 1):
        try:
            return call()
        except stripe.StripeError as error:
            if attempt == total or not is_retryable(error):
                raise
            delay = backoff_seconds(attempt)
            logger.warning(
                "stripe call failed (%s, status %s); retry %d in %.1fs",
                type(error).__name__,
                error.http_status,
                attempt,
                delay,
            )
            (sleep or pause)(delay)
    raise AssertionError("unreachable")  # pragma: no cover
