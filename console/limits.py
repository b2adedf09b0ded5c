"""An organisation's gateway rate limits as they apply: its own, or the platform default.

Platform staff set ``Organisation.rpm_limit`` / ``tpm_limit`` in the admin; empty means the
platform default (``GATEWAY_ORG_RPM_LIMIT`` / ``GATEWAY_ORG_TPM_LIMIT``) and 0 means no limit.
The gateway applies the same rule (``inference.gateway.admission``).
"""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings

from console.models import Organisation


@dataclass(frozen=True, slots=True)
class RateLimit:
    per_minute: int | None  # None: no limit
    own: bool  # set for this organisation (False: the platform default applies)


def _limit(own: int | None, default: int) -> RateLimit:
    value = default if own is None else own
    return RateLimit(per_minute=value or None, own=own is not None)


def org_rate_limits(org: Organisation) -> tuple[RateLimit, RateLimit]:
    """(requests per minute, tokens per minute) for all of ``org``'s keys together."""
    return (
        _limit(org.rpm_limit, settings.GATEWAY_ORG_RPM_LIMIT),
        _limit(org.tpm_limit, settings.GATEWAY_ORG_TPM_LIMIT),
    )
