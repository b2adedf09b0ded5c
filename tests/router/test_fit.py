"""A tenant's outcome file is fitted into the route's own head, which the gateway then loads."""

from __future__ import annotations

import pytest

from inference.gateway.router import AutoRouter
from inference.gateway.snapshot import snapshot_build
from inference.models import RouteScorer
from inference.services.router import route_scorer_fit, route_scorer_upload
from inference.services.routes import route_create
from tests.gateway.conftest import make_deployment


def test_an_uploaded_file_is_fitted_stored_and_served_for_that_route(org, owner):  # type: ignore[no-untyped-def]
    make_deployment(org, "cheap", [])
    make_deployment(org, "strong", [])
    route = route_create(
        org=org,
        actor=owner,
        name="smart",
        policy="auto",
        config={"targets": ["deployment:cheap", "deployment:strong"], "max_strong_percent": 50},
    )
    easy = [f"What is {i} plus {i}?" for i in range(15)]
    hard = [f"Prove theorem {i} about compact Hausdorff spaces in full." for i in range(15)]
    rows = [f"{p},True,True" for p in easy] + [f"{p},False,True" for p in hard]
    data = ("prompt,weak,strong\n" + "\n".join(rows) + "\n").encode()
    scorer = route_scorer_upload(route=route, actor=owner, file_name="mine.csv", data=data)
    assert route_scorer_fit(scorer_id=scorer.id)
    scorer = RouteScorer.objects.get(id=scorer.id)
    assert scorer.state == "ready" and scorer.upload == "" and len(scorer.reference_scores) == 30
    route.refresh_from_db()
    assert route.config["calibration"]["source"] == "outcome file"
    snapshot = snapshot_build(1)
    head = snapshot.scorer_heads[route.id]
    router = AutoRouter()
    own = router._score(str(route.id), head, easy[0])
    shipped = router._score("", None, easy[0])
    assert own != pytest.approx(shipped, abs=1e-9)  # the route's own head scores it


def _auto_route(org, owner):  # type: ignore[no-untyped-def]
    make_deployment(org, "cheap", [])
    make_deployment(org, "strong", [])
    return route_create(
        org=org,
        actor=owner,
        name="smart",
        policy="auto",
        config={"targets": ["deployment:cheap", "deployment:strong"], "max_strong_percent": 50},
    )


def _outcomes(n: int) -> bytes:
    easy = [f"What is {i} plus {i}?,True,True" for i in range(n // 2)]
    hard = [f"Prove theorem {i} about compact spaces.,False,True" for i in range(n - n // 2)]
    return ("prompt,weak,strong\n" + "\n".join(easy + hard) + "\n").encode()


def test_the_fitted_head_keeps_serving_while_a_new_file_is_fitted_and_after_it_fails(
    org, owner, monkeypatch
):  # type: ignore[no-untyped-def]
    route = _auto_route(org, owner)
    first = route_scorer_upload(route=route, actor=owner, file_name="a.csv", data=_outcomes(30))
    assert route_scorer_fit(scorer_id=first.id)
    head = snapshot_build(1).scorer_heads[route.id]
    second = route_scorer_upload(route=route, actor=owner, file_name="b.csv", data=_outcomes(40))
    assert RouteScorer.objects.get(route=route).state == "pending"
    assert snapshot_build(2).scorer_heads[route.id] == head

    def out_of_memory(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("the worker ran out of memory")

    monkeypatch.setattr("inference.scorer.fit.fit_from_outcomes", out_of_memory)
    assert not route_scorer_fit(scorer_id=second.id)
    scorer = RouteScorer.objects.get(route=route)
    assert scorer.state == "failed" and "out of memory" in scorer.error
    assert snapshot_build(3).scorer_heads[route.id] == head
    route.refresh_from_db()
    assert route.config["calibration"]["source"] == "outcome file"  # still the fitted head's


def test_a_route_can_go_back_to_the_platforms_scorer(org, owner, client_for):  # type: ignore[no-untyped-def]
    from console.models import AuditEvent

    route = _auto_route(org, owner)
    scorer = route_scorer_upload(route=route, actor=owner, file_name="a.csv", data=_outcomes(30))
    assert route_scorer_fit(scorer_id=scorer.id)
    client = client_for(owner)
    page = client.get(f"/o/{org.slug}/routes/{route.id}/").content.decode()
    assert "In use: a scorer fitted on your data from a.csv (30 rows)" in page
    answer = client.post(f"/o/{org.slug}/routes/{route.id}/scorer/remove/")
    assert answer.status_code == 302
    assert not RouteScorer.objects.filter(route=route).exists()
    assert route.id not in snapshot_build(2).scorer_heads
    route.refresh_from_db()
    assert route.config["calibration"]["source"] == "reference sample"
    event = AuditEvent.objects.get(org=org, action="route.scorer_removed")
    assert event.data == {"file_name": "a.csv"}
    page = client.get(f"/o/{org.slug}/routes/{route.id}/").content.decode()
    assert "This route uses the platform" in page and "In use:" not in page


def test_only_route_managers_remove_a_routes_scorer(org, owner, viewer, client_for):  # type: ignore[no-untyped-def]
    route = _auto_route(org, owner)
    route_scorer_upload(route=route, actor=owner, file_name="a.csv", data=_outcomes(30))
    answer = client_for(viewer).post(f"/o/{org.slug}/routes/{route.id}/scorer/remove/")
    assert answer.status_code == 403
    assert RouteScorer.objects.filter(route=route).exists()


def test_a_fit_lost_to_the_broker_or_a_killed_worker_is_queued_again(
    org, owner, monkeypatch, settings, caplog, django_capture_on_commit_callbacks
):  # type: ignore[no-untyped-def]
    from datetime import timedelta

    from django.utils import timezone
    from kombu.exceptions import OperationalError

    from inference.services.router import route_scorers_fit_pending
    from inference.tasks import route_scorer_fit_task

    route = _auto_route(org, owner)

    def broker_down(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise OperationalError("Error 111 connecting to localhost:6379. Connection refused.")

    with monkeypatch.context() as patched:
        patched.setattr(route_scorer_fit_task, "delay", broker_down)
        with django_capture_on_commit_callbacks(execute=True):
            scorer = route_scorer_upload(
                route=route, actor=owner, file_name="a.csv", data=_outcomes(30)
            )
    [logged] = [r for r in caplog.records if "could not queue" in r.getMessage()]
    assert logged.scorer_id == str(scorer.id)
    assert RouteScorer.objects.get(id=scorer.id).state == "pending"
    # While its task may still be running (within the task time limit), it is left alone.
    uploaded = RouteScorer.objects.get(id=scorer.id).created_at
    soon = uploaded + timedelta(seconds=settings.CELERY_TASK_TIME_LIMIT - 1)
    assert route_scorers_fit_pending(now=soon) == 0
    assert RouteScorer.objects.get(id=scorer.id).state == "pending"
    # After it, no task is fitting it any more: it is queued again (and fitted, eagerly here).
    later = uploaded + timedelta(seconds=settings.CELERY_TASK_TIME_LIMIT + 1)
    assert route_scorers_fit_pending(now=later) == 1
    assert RouteScorer.objects.get(id=scorer.id).state == "ready"
    assert route_scorers_fit_pending(now=timezone.now() + timedelta(days=1)) == 0
