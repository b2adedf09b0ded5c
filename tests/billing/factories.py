from __future__ import annotations

import itertools
import uuid
from datetime import datetime

from billing.ledger import UsageEvent
from billing.models import Price

_ids = itertools.count()


def price(**fields: object) -> Price:
    defaults: dict[str, object] = {
        "model": "tiny-llama",
        "input_micros_per_million": 1_000_000,
        "output_micros_per_million": 2_000_000,
    }
    defaults.update(fields)
    return Price.objects.create(**defaults)


def usage(org_id: int, served_at: datetime, **fields: object) -> UsageEvent:
    values: dict[str, object] = {
        "request_id": f"req-{next(_ids)}-{uuid.uuid4().hex[:6]}",
        "org_id": org_id,
        "model": "tiny-llama",
        "served_at": served_at,
        "prompt_tokens": 1_000,
        "completion_tokens": 500,
        "latency_ms": 120,
    }
    values.update(fields)
    return UsageEvent(**values)  # type: ignore[arg-type]
