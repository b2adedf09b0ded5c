"""Prices as a plain in-memory table, and the pure functions that turn usage into money.

The gateway keeps a ``PriceTable`` in its snapshot (no ORM query per request); the ledger uses the
same table to rate each usage record at the price in force when it was served.

Rounding: a request's cost is ``sum(tokens x micro-dollars per million) / 1,000,000`` computed in
integers and rounded half up to a whole micro-dollar, once per request. Uptime is charged by the
second: ``seconds x units x micro-dollars per hour / 3,600``, rounded half up, once per replica
and hour at a price (``billing.ledger.uptime_record_batch`` spreads it over the hour's reports).
"""

from __future__ import annotations

import bisect
import logging
import uuid
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from itertools import pairwise

from django.utils import timezone

from billing.models import Price, PriceUnit

logger = logging.getLogger(__name__)

MILLION = 1_000_000
SECONDS_PER_HOUR = 3_600


@dataclass(frozen=True, slots=True)
class PriceRates:
    """One price version, resolved: the cached-input rate is filled in from the input rate."""

    unit: str
    input_micros_per_million: int
    output_micros_per_million: int
    cached_input_micros_per_million: int
    micros_per_unit_hour: int = 0
    effective_from: datetime | None = None
    price_id: uuid.UUID | None = None

    @property
    def is_uptime(self) -> bool:
        return self.unit != PriceUnit.TOKENS

    @classmethod
    def from_price(cls, price: Price) -> PriceRates:
        cached = price.cached_input_micros_per_million
        return cls(
            unit=price.unit,
            input_micros_per_million=price.input_micros_per_million,
            output_micros_per_million=price.output_micros_per_million,
            cached_input_micros_per_million=(
                price.input_micros_per_million if cached is None else cached
            ),
            micros_per_unit_hour=price.micros_per_unit_hour or 0,
            effective_from=price.effective_from,
            price_id=price.id,
        )


# Rates nothing: used only when staff have deleted the platform fallback price.
FREE = PriceRates(PriceUnit.TOKENS, 0, 0, 0)


def _whole(name: str, value: object) -> int:
    # bool is an int subclass; a float or Decimal here would mean money leaking out of integers.
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must not be negative, got {value}")
    return value


def cost_micros(
    price: PriceRates, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0
) -> int:
    """The cost of one request in micro-dollars. ``cached_tokens`` are part of ``prompt_tokens``
    (as engines report them) and are charged at the cached-input rate. Uptime-priced
    deployments cost nothing per token: their replicas' uptime is billed instead."""
    prompt = _whole("prompt_tokens", prompt_tokens)
    completion = _whole("completion_tokens", completion_tokens)
    cached = _whole("cached_tokens", cached_tokens)
    if cached > prompt:
        raise ValueError(f"cached_tokens ({cached}) exceeds prompt_tokens ({prompt})")
    if price.is_uptime:
        return 0
    total = (
        (prompt - cached) * price.input_micros_per_million
        + cached * price.cached_input_micros_per_million
        + completion * price.output_micros_per_million
    )
    return (total + MILLION // 2) // MILLION


def uptime_cost_micros(price: PriceRates, seconds: int, gpus: int) -> int:
    """The cost of ``seconds`` of one replica's uptime: per GPU for GPU-second prices, per
    replica for replica-second prices."""
    seconds = _whole("seconds", seconds)
    gpus = _whole("gpus", gpus)
    if not price.is_uptime:
        return 0
    units = gpus if price.unit == PriceUnit.GPU_SECOND else 1
    total = seconds * units * price.micros_per_unit_hour
    return (total + SECONDS_PER_HOUR // 2) // SECONDS_PER_HOUR


@dataclass
class _Versions:
    starts: list[datetime] = field(default_factory=list)
    rates: list[PriceRates] = field(default_factory=list)

    def at(self, when: datetime) -> PriceRates | None:
        index = bisect.bisect_right(self.starts, when) - 1
        return self.rates[index] if index >= 0 else None


class PriceTable:
    """Every price version, keyed by scope. ``table[(org_id, model)]`` is the token price in force
    now for that org and model (the org's own, else the platform's, else the fallback)."""

    def __init__(self, prices: Iterable[Price]) -> None:
        self._versions: dict[Hashable, _Versions] = {}
        for price in sorted(prices, key=lambda p: p.effective_from):
            for key in self._keys_of(price):
                versions = self._versions.setdefault(key, _Versions())
                versions.starts.append(price.effective_from)
                versions.rates.append(PriceRates.from_price(price))

    @staticmethod
    def _keys_of(price: Price) -> list[Hashable]:
        if price.deployment_id is not None:
            return [("deployment", price.deployment_id)]
        kind = "tokens" if price.unit == PriceUnit.TOKENS else "uptime"
        return [(kind, price.org_id, price.model)]

    def _find(self, keys: Iterable[Hashable], when: datetime) -> PriceRates | None:
        for key in keys:
            versions = self._versions.get(key)
            found = versions.at(when) if versions else None
            if found is not None:
                return found
        return None

    def get(
        self,
        org_id: int | None,
        model: str,
        *,
        deployment_id: uuid.UUID | None = None,
        at: datetime | None = None,
    ) -> PriceRates:
        """The price that rates a request. A request served by a deployment that is billed by
        uptime gets that uptime price (and so costs nothing per token)."""
        when = at or timezone.now()
        if deployment_id is not None:
            found = self._find(
                [
                    ("deployment", deployment_id),
                    ("uptime", org_id, model),
                    ("uptime", None, model),
                ],
                when,
            )
            if found is not None:
                return found
        found = self._find(
            [("tokens", org_id, model), ("tokens", None, model), ("tokens", None, "")], when
        )
        if found is None:
            logger.warning("no price and no fallback price for model %r; rating it at zero", model)
            return FREE
        return found

    @staticmethod
    def _uptime_keys(org_id: int, model: str, deployment_id: uuid.UUID) -> list[Hashable]:
        return [("deployment", deployment_id), ("uptime", org_id, model), ("uptime", None, model)]

    def uptime_price(
        self, org_id: int, model: str, *, deployment_id: uuid.UUID, at: datetime
    ) -> PriceRates | None:
        """The uptime price for a deployment's replica, or None when it is billed per token."""
        found = self._find(self._uptime_keys(org_id, model, deployment_id), at)
        return found if found is not None and found.is_uptime else None

    def uptime_prices(
        self,
        org_id: int,
        model: str,
        *,
        deployment_id: uuid.UUID,
        start: datetime,
        end: datetime,
    ) -> list[tuple[datetime, datetime, PriceRates | None]]:
        """``[start, end)`` cut where another uptime price comes into force: (from, to, price)
        in order, the price None where the deployment is billed per token."""
        keys = self._uptime_keys(org_id, model, deployment_id)
        starts = {
            moment
            for key in keys
            if (versions := self._versions.get(key)) is not None
            for moment in versions.starts
            if start < moment < end
        }
        bounds = [start, *sorted(starts), end]
        parts: list[tuple[datetime, datetime, PriceRates | None]] = []
        for begin, finish in pairwise(bounds):
            price = self.uptime_price(org_id, model, deployment_id=deployment_id, at=begin)
            if parts and parts[-1][2] == price:
                parts[-1] = (parts[-1][0], finish, price)  # a version that does not apply here
            else:
                parts.append((begin, finish, price))
        return parts

    def __getitem__(self, key: tuple[int | None, str]) -> PriceRates:
        org_id, model = key
        return self.get(org_id, model)


def price_table() -> PriceTable:
    """Load every price version into a table (one query)."""
    return PriceTable(Price.objects.all())
