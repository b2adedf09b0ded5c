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
