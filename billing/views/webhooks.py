from __future__ import annotations

import logging

from django.db import transaction
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from billing.services.webhooks import WebhookRejectedError, webhook_receive
from billing.tasks import stripe_event_process_task

logger = logging.getLogger(__name__)


def _handle_later(event_pk: int, event_id: str) -> None:
    try:
        stripe_event_process_task.delay(event_pk)
    except Exception:
        # The broker is down. The event is stored, and stripe_events_retry_task handles it once
        # the broker is back; a 500 would only have Stripe send it again, to the same end.
        logger.exception(
            "could not queue the handling of a Stripe event", extra={"event": event_id}
        )


@csrf_exempt
@require_POST
def stripe_webhook(request: HttpRequest) -> JsonResponse:
    """Stripe's one endpoint: 400 unless signed and fresh; 200 for every stored event, known,
    unknown or repeated. Handling happens in a task after the event is safely stored."""
    try:
        event, created = webhook_receive(
            payload=request.body, signature=request.headers.get("Stripe-Signature", "")
        )
    except WebhookRejectedError as error:
        return JsonResponse({"error": str(error)}, status=400)
    if event.processed_at is None:
        pk, event_id = event.pk, event.event_id
        transaction.on_commit(lambda: _handle_later(pk, event_id))
    return JsonResponse({"received": True, "duplicate": not created})
