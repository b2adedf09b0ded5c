"""The gateway's side of the door to billing: prices, spend and usage records.

Billing owns all three; the gateway calls these few functions from background threads only
(snapshot rebuilds and the metering flusher), never per request.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from billing.ledger import UsageEvent, usage_record_batch
from billing.pricing import FREE, PriceRates, PriceTable, cost_micros, price_table

logger = logging.getLogger(__name__)

__all__ = [
    "FREE",
    "PriceLookup",
    "PriceRates",
    "Spend",
    "UsageEvent",
    "cost_micros",
    "prices_load",
    "spend_load",
    "usage_write",
]


class PriceLookup(Protocol):
    def get(
        self, org_id: int | None, model: str, *, deployment_id: uuid.UUID | None = None
    ) -> PriceRates: ...


def prices_load() -> PriceTable:
    return price_table()


@dataclass(frozen=True, slots=True)
class Spend:
    """Month-to-date spend and hard caps, in micro-dollars, as billing computes them."""

    org_spend: dict[int, int]
    org_caps: dict[int, int]
    org_cap_messages: dict[int, str]
    key_spend: dict[uuid.UUID, int]


def spend_load(now: datetime) -> Spend:
    from billing import selectors

    limits = selectors.spend_limit_details()
    return Spend(
        org_spend=selectors.month_to_date_spend(now=now),
        org_caps={k: v.cap_micros for k, v in limits.items() if v.cap_micros is not None},
        org_cap_messages={k: v.message for k, v in limits.items() if v.message},
        key_spend=selectors.key_month_to_date_spend(now=now),
    )


def usage_write(events: Sequence[UsageEvent]) -> int:
    return usage_record_batch(events)
