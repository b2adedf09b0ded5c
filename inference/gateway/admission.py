"""What one request asks of the limiter: its rate counters and its budget reservation."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from inference.gateway import bodies
from inference.gateway.config import GatewayConfig
from inference.gateway.exchange import Target
from inference.gateway.ledger import cost_micros
from inference.gateway.limits import BUDGET_TTL_S, RATE_TTL_S, Admission, Counter, minute_window
from inference.gateway.snapshot import DeploymentEntry, KeyEntry, OrgEntry, Snapshot

# (minute window, its "YYYYMM"): months start on a minute boundary, so one value per one-minute
# window is exact, and the date is formatted once a minute instead of once a request.
_month_of_window: tuple[int, str] = (-1, "")


def _month(window: int) -> str:
    """The UTC month ("YYYYMM") of a one-minute window (`limits.minute_window`)."""
    global _month_of_window
    cached, month = _month_of_window
    if cached != window:
        month = datetime.fromtimestamp(window * 60, UTC).strftime("%Y%m")
        _month_of_window = (window, month)
    return month


def reservation_micros(
    snapshot: Snapshot,
    config: GatewayConfig,
    org: OrgEntry,
    parsed: bodies.ParsedRequest,
    targets: list[Target],
) -> int:
    """The most this request can cost at any target it may go to, in micro-dollars."""
    worst = 0
    for target in targets:
        if parsed.kind == bodies.EMBEDDING:
            completion = 0
        elif parsed.max_tokens is not None:
            completion = parsed.max_tokens
        elif isinstance(target, DeploymentEntry) and target.max_model_len:
            completion = target.max_model_len * parsed.sequences
        else:
            completion = config.default_max_tokens * parsed.sequences
        price = snapshot.price(org.id, target)
        worst = max(worst, cost_micros(price, parsed.prompt_tokens_bound, completion, 0))
    return worst


def admission_build(
    snapshot: Snapshot,
    config: GatewayConfig,
    key: KeyEntry,
    org: OrgEntry,
    parsed: bodies.ParsedRequest,
    reserve: int,
) -> Admission:
    now = time.time()
    window, _ = minute_window(now)
    adm = Admission()
    tokens = parsed.prompt_tokens_estimate
    # The org's own limits, else the platform default; 0 (either way) means none.
    org_rpm = config.org_rpm_limit if org.rpm_limit is None else org.rpm_limit
    org_tpm = config.org_tpm_limit if org.tpm_limit is None else org.tpm_limit
    for scope_name, ident, rpm, tpm in (
        ("key", key.id, key.rpm_limit, key.tpm_limit),
        ("org", org.id, org_rpm, org_tpm),
    ):
        if rpm:
            label = f"this {scope_name}'s limit of {rpm} requests per minute"
            adm.rates.append(
                Counter(f"gw:rpm:{scope_name}:{ident}:{window}", rpm, 1, RATE_TTL_S, label)
            )
        if tpm:
            label = f"this {scope_name}'s limit of {tpm} tokens per minute"
            counter_key = f"gw:tpm:{scope_name}:{ident}:{window}"
            adm.rates.append(Counter(counter_key, tpm, tokens, RATE_TTL_S, label))
            adm.token_keys.append(counter_key)
    month = _month(window)
    if org.budget_micros is not None:
        adm.budgets.append(
            Counter(
                f"gw:spend:org:{org.id}:{month}",
                org.budget_micros,
                reserve,
                BUDGET_TTL_S,
                "the organisation's monthly spend limit",
                seed=org.month_spend_micros,
            )
        )
    if key.budget_micros is not None:
        adm.budgets.append(
            Counter(
                f"gw:spend:key:{key.id}:{month}",
                key.budget_micros,
                reserve,
                BUDGET_TTL_S,
                "this key's monthly budget",
                seed=snapshot.key_spend.get(key.id, 0),
            )
        )
    return adm
