"""Celery tasks of the console: thin wrappers around the services."""

from __future__ import annotations

from celery import shared_task


@shared_task
def webhook_deliver_task(delivery_id: str) -> bool:
    from console.services.webhooks import deliver

    return deliver(delivery_id)


@shared_task
def webhook_retry_task() -> int:
    from console.services.webhooks import deliveries_retry

    return deliveries_retry()


@shared_task
def webhook_prune_task() -> int:
    from console.services.webhooks import deliveries_prune

    return deliveries_prune()
