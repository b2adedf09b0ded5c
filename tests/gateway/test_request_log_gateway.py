"""A request through the gateway can be found in the request log by its x-request-id."""

from __future__ import annotations

import openai
import pytest

from console.services.keys import api_key_create
from tests.gateway.conftest import make_deployment

CHAT = {"messages": [{"role": "user", "content": "where did this go"}]}


def test_a_served_and_a_failed_request_are_found_by_their_request_ids(
    gw, engine, org, owner, inference_key, client, client_for
):
    fake, server = engine
    deployment = make_deployment(org, "tiny", [server.port], served="tiny-chat")
    gw.refresh()
    api = gw.client(inference_key)
    served = api.chat.completions.with_raw_response.create(model="tiny-chat", **CHAT)
    fake.script.append(500)
    with pytest.raises(openai.APIStatusError) as caught:
        api.chat.completions.create(model="tiny-chat", **CHAT)
    assert caught.value.status_code == 502
    ok_id = served.headers["x-request-id"]
    failed_id = caught.value.response.headers["x-request-id"]
    gw.wait_for_records(2)

    reader = api_key_create(org=org, actor=owner, name="reader", scopes=["read"]).secret
    auth = {"HTTP_AUTHORIZATION": f"Bearer {reader}"}
    record = client.get(f"/api/orgs/acme/requests/{ok_id}/", **auth).json()
    assert record["status_code"] == 200
    assert (record["prompt_tokens"], record["completion_tokens"]) == (4, 5)
    assert record["deployment"] == "tiny" and record["deployment_id"] == str(deployment.id)
    assert record["replica_id"] == str(deployment.replicas.get().id)
    assert record["api_key"]["name"] == "app"

    errors = client.get("/api/orgs/acme/requests/?status=error", **auth).json()["requests"]
    assert [r["request_id"] for r in errors] == [failed_id]
    assert (errors[0]["status_code"], errors[0]["error_code"]) == (502, "upstream_error")
    assert record["error_code"] == ""

    page = client_for(owner).get(f"/o/acme/requests/?request_id={failed_id}")
    assert [r.request_id for r in page.context["rows"]] == [failed_id]
    detail = client_for(owner).get(f"/o/acme/requests/{failed_id}/").content.decode()
    assert 'data-testid="status">502<' in detail
    assert 'data-testid="error-code">upstream_error<' in detail
    assert "The model server failed" in detail


def test_an_engine_refusal_and_a_timeout_are_told_apart(
    start_gateway, engine, org, owner, inference_key, client
):
    gw = start_gateway(read_timeout_s=0.3)
    fake, server = engine
    make_deployment(org, "tiny", [server.port])
    gw.refresh()
    api = gw.client(inference_key)
    fake.script.append((400, "temperature must be at most 2"))
    with pytest.raises(openai.BadRequestError) as refused:
        api.chat.completions.create(model="tiny", **CHAT)
    fake.answer_delay_s = 3
    with pytest.raises(openai.APIStatusError) as slow:
        api.chat.completions.create(model="tiny", **CHAT)
    assert slow.value.status_code == 504
    gw.wait_for_records(2)
    reader = api_key_create(org=org, actor=owner, name="reader", scopes=["read"]).secret
    auth = {"HTTP_AUTHORIZATION": f"Bearer {reader}"}
    codes = {}
    for caught in (refused, slow):
        request_id = caught.value.response.headers["x-request-id"]
        record = client.get(f"/api/orgs/acme/requests/{request_id}/", **auth).json()
        codes[record["status_code"]] = record["error_code"]
    assert codes == {400: "upstream_rejected", 504: "timeout"}
