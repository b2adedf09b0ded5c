"""A web page on another origin calls the gateway with fetch, in real headless Chromium."""

from __future__ import annotations

import pytest

from console.services.keys import api_key_create
from tests.gateway import conftest as gateway_fixtures
from tests.gateway.conftest import make_deployment

# The gateway suite's fixtures: a fake engine and a real gateway, served in threads.
engine = gateway_fixtures.engine
start_gateway = gateway_fixtures.start_gateway

pytestmark = pytest.mark.browser

CALL = """async ([url, key]) => {
  const response = await fetch(url + "/v1/chat/completions", {
    method: "POST",
    headers: {
      "Authorization": "Bearer " + key,
      "Content-Type": "application/json",
      "X-Stainless-Lang": "js",
    },
    body: JSON.stringify({model: "tiny", messages: [{role: "user", content: "hi"}]}),
  });
  return {
    status: response.status,
    requestId: response.headers.get("x-request-id"),
    target: response.headers.get("x-target"),
    body: await response.json(),
  };
}"""


def test_a_page_on_another_origin_calls_the_gateway_and_reads_its_errors(
    browser,
    live_server,
    start_gateway,
    engine,
    org,
    owner,
):
    fake, server = engine
    make_deployment(org, "tiny", [server.port])
    gw = start_gateway()
    gw.refresh()
    secret = api_key_create(org=org, actor=owner, name="web", scopes=["inference"]).secret
    context = browser.new_context()
    page = context.new_page()
    try:
        # The console's login page: an origin (host and port) other than the gateway's.
        page.goto(live_server.url + "/login/")
        answered = page.evaluate(CALL, [gw.url, secret])
        refused = page.evaluate(CALL, [gw.url, "sk-not-a-key"])
    finally:
        context.close()
    assert answered["status"] == 200
    assert answered["body"]["choices"][0]["message"]["content"]
    assert answered["requestId"].startswith("req-")
    assert answered["target"] == "deployment:tiny"
    assert refused["status"] == 401
    assert refused["body"]["error"]["code"] == "invalid_api_key"
    assert len(fake.requests) == 1
