"""The console's "try it" box: one chat request through the same gateway code path, on behalf
of the org (no API key), from a synchronous Django view.

It builds a fresh snapshot, runs the request on a private event loop, writes its usage record
(the org is billed like any request) and reports which target answered and what it cost.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any

from console.models import Organisation
from console.snapshot import snapshot_version
from inference.gateway.app import CONSOLE_KEY, Gateway
from inference.gateway.bodies import CHAT
from inference.gateway.config import GatewayConfig
from inference.gateway.errors import GatewayError
from inference.gateway.metering import Meter
from inference.gateway.snapshot import empty_snapshot, snapshot_build


@dataclass(frozen=True)
class TryResult:
    status: int
    request_id: str
    route: str = ""
    target: str = ""
    deployment_id: str = ""
    replica_id: str = ""
    text: str = ""
    error: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_micros: int = 0
    latency_ms: int = 0


async def _run(gateway: Gateway, org_id: int, body: bytes, request_id: str) -> dict[str, Any]:
    gateway.loop = asyncio.get_running_loop()
    captured: dict[str, Any] = {"status": 0, "headers": {}, "body": b""}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            captured["status"] = message["status"]
            captured["headers"] = {k.decode(): v.decode() for k, v in message["headers"]}
        else:
            captured["body"] += message.get("body", b"")

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()  # the browser's request is not going away mid-answer
        return {"type": "http.disconnect"}

    org = gateway.snapshot.orgs[org_id]
    key = replace(CONSOLE_KEY, org_id=org_id)
    try:
        if org.suspended_reason is not None:  # as the gateway refuses the org's keys
            raise GatewayError(
                402, f"This organisation is suspended: {org.suspended_reason}.", "org_suspended"
            )
        await gateway.serve(
            CHAT, request_id, key, org, body, None, receive, send, time.perf_counter()
        )
    except GatewayError as error:
        captured.update(status=error.status, error=error.message)
    finally:
        if gateway.background:  # the limiter's settlement, before its connection closes
            await asyncio.gather(*gateway.background, return_exceptions=True)
        gateway.pool.close()
        gateway.router.close()
        await gateway.limiter.close()
    return captured


def route_try(
    *,
    org: Organisation,
    model: str,
    prompt: str,
    max_tokens: int = 64,
    config: GatewayConfig | None = None,
) -> TryResult:
    """Send ``prompt`` to ``model`` (a route or a deployment's name) as the org; bill it."""
    meter = Meter()  # never started: the event is taken out below and written here
    base = config or GatewayConfig.from_env()
    gateway = Gateway(replace(base, access_log=False), meter=meter, poll=False)
    # The console's own key is the one used, so the platform's API keys are not read (with tens
    # of thousands of keys that was most of the snapshot's cost): an empty snapshot's are kept.
    gateway.install(snapshot_build(snapshot_version(), empty_snapshot(), reuse_keys=True))
    body = json.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
        }
    ).encode()
    request_id = "req-" + uuid.uuid4().hex
    started = time.perf_counter()
    captured = asyncio.run(_run(gateway, org.pk, body, request_id))
    latency_ms = int((time.perf_counter() - started) * 1000)

    from inference.gateway.ledger import usage_write

    # Written in this thread and this transaction, so that the page can show its cost.
    written = meter.drain()
    usage_write(written)
    headers = captured["headers"]
    result: dict[str, Any] = {
        "status": captured["status"],
        "request_id": request_id,
        "route": headers.get("x-route", ""),
        "target": headers.get("x-target", ""),
        "deployment_id": headers.get("x-deployment-id", ""),
        "replica_id": headers.get("x-replica-id", ""),
        "latency_ms": latency_ms,
    }
    try:
        answer = json.loads(captured["body"]) if captured["body"] else {}
    except ValueError:
        answer = {}
    if captured["status"] == 200:
        choice = (answer.get("choices") or [{}])[0]
        result["text"] = (choice.get("message") or {}).get("content") or ""
    else:
        error = answer.get("error") if isinstance(answer, dict) else None
        message = error.get("message") if isinstance(error, dict) else None
        result["error"] = captured.get("error") or message or f"HTTP {captured['status']}"
    if written:
        from billing.models import UsageRecord

        record = UsageRecord.objects.filter(request_id=request_id).first()
        event = written[0]
        result.update(
            prompt_tokens=event.prompt_tokens,
            completion_tokens=event.completion_tokens,
            cost_micros=record.cost_micros if record is not None else 0,
        )
    return TryResult(**result)
