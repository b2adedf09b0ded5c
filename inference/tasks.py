"""Celery tasks of inference: thin wrappers around the services."""

from __future__ import annotations

from celery import shared_task

from inference.services.router import (
    route_scorer_fit,
    route_scorers_fit_pending,
    routes_recalibrate_all,
)


@shared_task
def routes_recalibrate_task() -> int:
    return routes_recalibrate_all()


@shared_task
def route_scorer_fit_task(scorer_id: str) -> bool:
    return route_scorer_fit(scorer_id=scorer_id)


@shared_task
def route_scorers_fit_pending_task() -> int:
    return route_scorers_fit_pending()


@shared_task
def deployment_failed_notify_task(deployment_id: str) -> int:
    from inference.services.notifications import deployment_failed_notify

    return deployment_failed_notify(deployment_id=deployment_id)


@shared_task
def refusals_prune_task() -> int:
    from inference.services.refusals import refusals_prune

    return refusals_prune()
