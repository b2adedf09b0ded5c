from __future__ import annotations

from django.db import transaction
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from billing.services.webhooks import WebhookRejectedError, webhook_receive
from billing.tasks import stripe_event_process_task


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
        pk = event.pk
        transaction.on_commit(lambda: stripe_event_process_task.delay(pk))
    return JsonResponse({"received": True, "duplicate": not created})
