"""An edited key's new model list reaches the gateway: same secret, new permissions."""

from __future__ import annotations

import openai
import pytest

from console.services.keys import api_key_create, api_key_update
from tests.gateway.conftest import make_deployment


@pytest.fixture
def served(gw, engine, org):  # type: ignore[no-untyped-def]
    fake, server = engine
    make_deployment(org, "tiny", [server.port], served="tiny-chat")
    make_deployment(org, "small", [server.port], served="small-chat")
    gw.refresh()
    return fake


def ask(client: openai.OpenAI, model: str) -> str | None:
    completion = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}]
    )
    return completion.choices[0].message.content


def test_a_key_narrowed_to_one_model_is_refused_the_others_until_widened_again(
    gw, served, org, owner
):
    created = api_key_create(org=org, actor=owner, name="app", scopes=["inference"])
    gw.refresh()
    client = gw.client(created.secret)
    assert ask(client, "small-chat")

    api_key_update(key=created.key, actor=owner, allowed_models=["tiny-chat"])
    gw.refresh()
    reached = len(served.requests)
    with pytest.raises(openai.PermissionDeniedError) as caught:
        ask(client, "small-chat")
    assert caught.value.code == "model_not_allowed"
    assert len(served.requests) == reached  # refused by the gateway, not the engine
    assert ask(client, "tiny-chat")
    assert [m.id for m in client.models.list()] == ["tiny-chat"]

    api_key_update(key=created.key, actor=owner, allowed_models=[])
    gw.refresh()
    assert ask(client, "small-chat")
    assert sorted(m.id for m in client.models.list()) == ["small-chat", "tiny-chat"]
