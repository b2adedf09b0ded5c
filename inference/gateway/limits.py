"""Rate limits (RPM, TPM per key and per org) and budget reservations, checked atomically.

One admission is one atomic step: every counter is checked first and only then are all of them
incremented, so a refused request consumes nothing. With Redis the step is a Lua script, so any
number of gateway processes together admit the limit once; without Redis (the embedded default,
one process) the same logic runs in memory.

Rate windows are fixed minutes. TPM admits a request while the window's tokens plus its prompt
estimate fit; the real count replaces the estimate at settlement. A budget counter holds the
month's spend plus outstanding reservations: it is seeded from the ledger's month-to-date spend
the first time it is used, a request reserves its maximum cost, and settlement replaces the
reservation by the actual cost. The actual cost never exceeds the reservation unless the prompt
bound was wrong, so concurrent requests cannot push spend past the cap by more than one
reservation.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

RATE_TTL_S = 61
BUDGET_TTL_S = 40 * 86400


@dataclass(slots=True)
class Counter:
    key: str
    limit: int
    amount: int
    ttl_s: int
    label: str  # what the client is told when this counter refuses
    seed: int = 0


@dataclass(slots=True)
class Admission:
    """The counters one request touches. ``rates`` first (RPM, TPM), then ``budgets``."""

    rates: list[Counter] = field(default_factory=list)
    budgets: list[Counter] = field(default_factory=list)
    # Which rate counters count tokens, to be corrected at settlement.
    token_keys: list[str] = field(default_factory=list)
    # Once admitted: each rate counter's value after this request (the order of ``rates``).
    counts: list[int] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.rates and not self.budgets


@dataclass(frozen=True, slots=True)
class Refusal:
    counter: Counter
    is_budget: bool
    retry_after_s: int


class LimiterUnavailable(Exception):
    """The shared counters could not be read or written (Redis refused, failed or timed out)."""


class Limiter(Protocol):
    async def admit(self, admission: Admission) -> Refusal | None: ...

    async def settle(self, admission: Admission, token_delta: int, cost_delta: int) -> None: ...

    async def close(self) -> None: ...


def minute_window(now: float) -> tuple[int, int]:
    """(window number, seconds until it ends) for fixed one-minute windows."""
    window = int(now // 60)
    return window, max(1, math.ceil((window + 1) * 60 - now))


class LocalLimiter:
    """In-process counters with the same semantics as the Redis script (one process only)."""

    def __init__(self) -> None:
        self._values: dict[str, tuple[int, float]] = {}
        self._sweep_at = 0.0

    def _get(self, key: str, now: float) -> int | None:
        item = self._values.get(key)
        if item is None or item[1] <= now:
            return None
        return item[0]

    def _sweep(self, now: float) -> None:
        if now >= self._sweep_at:
            self._values = {k: v for k, v in self._values.items() if v[1] > now}
            self._sweep_at = now + 60

    async def admit(self, admission: Admission) -> Refusal | None:
        now = time.time()
        self._sweep(now)
        for counter in admission.rates:
            current = self._get(counter.key, now) or 0
            if current + counter.amount > counter.limit:
                # The counter is the current minute window's: the next window starts afresh.
                return Refusal(counter, False, minute_window(now)[1])
        for counter in admission.budgets:
            found = self._get(counter.key, now)
            if found is None:
                found = counter.seed
                self._values[counter.key] = (found, now + counter.ttl_s)
            current = found
            if current >= counter.limit or current + counter.amount > counter.limit:
                return Refusal(counter, True, 0)
        counts = admission.counts
        for index, counter in enumerate(admission.rates + admission.budgets):
            value, expires = self._values.get(counter.key, (0, now + counter.ttl_s))
            if expires <= now:
                value, expires = 0, now + counter.ttl_s
            self._values[counter.key] = (value + counter.amount, expires)
            if index < len(admission.rates):
                counts.append(value + counter.amount)
        return None

    async def settle(self, admission: Admission, token_delta: int, cost_delta: int) -> None:
        self.settle_now(admission, token_delta, cost_delta)

    def settle_now(self, admission: Admission, token_delta: int, cost_delta: int) -> None:
        now = time.time()
        changes = [(key, token_delta) for key in admission.token_keys]
        changes += [(counter.key, cost_delta) for counter in admission.budgets]
        for key, delta in changes:
            if not delta:
                continue
            item = self._values.get(key)
            if item is not None and item[1] > now:
                self._values[key] = (item[0] + delta, item[1])

    async def close(self) -> None:
        return None


# KEYS: rate counters, then budget counters. ARGV: number of rate counters, then for each
# counter (limit, amount, ttl, seed). Returns {0, 0, rate counters' values after the request...}
# when admitted, else {the 1-based index of the refusing counter, 0}.
_ADMIT = """
local nrate = tonumber(ARGV[1])
local values = {}
for i = 1, #KEYS do
  local base = 2 + (i - 1) * 4
  local limit = tonumber(ARGV[base])
  local amount = tonumber(ARGV[base + 1])
  local current = redis.call('GET', KEYS[i])
  if i > nrate then
    if not current then
      current = tonumber(ARGV[base + 3])
      redis.call('SET', KEYS[i], current, 'EX', tonumber(ARGV[base + 2]))
    end
    current = tonumber(current)
    if current >= limit or current + amount > limit then
      return {i, 0}
    end
  else
    current = tonumber(current or '0')
    if current + amount > limit then
      return {i, 0}
    end
  end
end
local result = {0, 0}
for i = 1, #KEYS do
  local base = 2 + (i - 1) * 4
  local amount = tonumber(ARGV[base + 1])
  local after = redis.call('INCRBY', KEYS[i], amount)
  if i <= nrate then
    if after == amount then
      redis.call('EXPIRE', KEYS[i], tonumber(ARGV[base + 2]))
    end
    result[#result + 1] = after
  end
end
return result
"""

# KEYS: counters to correct; ARGV: the delta for each. Expired counters stay expired.
_SETTLE = """
for i = 1, #KEYS do
  local delta = tonumber(ARGV[i])
  if delta ~= 0 and redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('INCRBY', KEYS[i], delta)
  end
end
return 0
"""


class RedisLimiter:
    """Counters in Redis, shared by every gateway process; each step is one script call."""

    def __init__(self, url: str, timeout_s: float = 0.5) -> None:
        import redis.asyncio as redis

        # A Redis that stops answering costs a request ``timeout_s`` (the client's default is 5 s).
        self._redis: Any = redis.Redis.from_url(
            url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s
        )
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError, TimeoutError)
        self._admit = self._redis.register_script(_ADMIT)
        self._settle = self._redis.register_script(_SETTLE)

    async def admit(self, admission: Admission) -> Refusal | None:
        counters = admission.rates + admission.budgets
        args: list[int] = [len(admission.rates)]
        for counter in counters:
            args += [counter.limit, counter.amount, counter.ttl_s, counter.seed]
        try:
            result = await self._admit(keys=[c.key for c in counters], args=args)
        except self._errors as error:
            raise LimiterUnavailable(type(error).__name__) from error
        index = result[0]
        if not index:
            admission.counts.extend(int(value) for value in result[2:])
            return None
        counter = counters[int(index) - 1]
        is_budget = int(index) > len(admission.rates)
        # A rate counter belongs to its minute window (its TTL outlasts the window by a second):
        # a retry is admitted once the next window starts.
        return Refusal(counter, is_budget, 0 if is_budget else minute_window(time.time())[1])

    async def settle(self, admission: Admission, token_delta: int, cost_delta: int) -> None:
        keys = list(admission.token_keys) + [c.key for c in admission.budgets]
        deltas = [token_delta] * len(admission.token_keys) + [cost_delta] * len(admission.budgets)
        if any(deltas):
            try:
                await self._settle(keys=keys, args=deltas)
            except self._errors as error:
                raise LimiterUnavailable(type(error).__name__) from error

    async def ping(self) -> str:
        await self._redis.ping()
        return "ok"

    async def close(self) -> None:
        await self._redis.aclose()


def rate_limit_headers(admission: Admission, now: float) -> list[tuple[bytes, bytes]]:
    """OpenAI's ``x-ratelimit-*`` headers for an admitted request: per kind (requests, tokens),
    the limit with the least left after this request (the key's or the organisation's), what is
    left and when the minute window resets. Token counts include this request's prompt estimate
    (the engine's count replaces it at settlement). None for a kind without a limit."""
    _, reset_s = minute_window(now)
    tightest: dict[str, tuple[int, int]] = {}
    for counter, count in zip(admission.rates, admission.counts, strict=False):
        kind = "requests" if counter.key.startswith("gw:rpm:") else "tokens"
        remaining = max(0, counter.limit - count)
        if kind not in tightest or remaining < tightest[kind][1]:
            tightest[kind] = (counter.limit, remaining)
    headers = []
    for kind, (limit, remaining) in tightest.items():
        headers += _limit_headers(kind, limit, remaining, reset_s)
    return headers


def refusal_headers(refusal: Refusal) -> list[tuple[bytes, bytes]]:
    """The ``x-ratelimit-*`` headers of a 429: the refusing limit, nothing left, its reset."""
    kind = "requests" if refusal.counter.key.startswith("gw:rpm:") else "tokens"
    return _limit_headers(kind, refusal.counter.limit, 0, refusal.retry_after_s)


def _limit_headers(
    kind: str, limit: int, remaining: int, reset_s: int
) -> list[tuple[bytes, bytes]]:
    suffix = kind.encode()
    return [
        (b"x-ratelimit-limit-" + suffix, str(limit).encode()),
        (b"x-ratelimit-remaining-" + suffix, str(remaining).encode()),
        (b"x-ratelimit-reset-" + suffix, f"{reset_s}s".encode()),
    ]
