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


def test_a_rolled_key_takes_its_new_secret_and_keeps_the_old_one_for_the_grace_period(
    gw, served, org, owner
):
    from console.models import ApiKey
    from console.services.keys import api_key_roll

    created = api_key_create(org=org, actor=owner, name="app", scopes=["inference"])
    old = gw.client(created.secret)
    assert ask(old, "tiny-chat")
    rolled = api_key_roll(key=created.key, actor=owner, grace_hours=1)
    gw.refresh()
    new = gw.client(rolled.secret)
    assert ask(new, "tiny-chat") and ask(old, "tiny-chat")
    gw.wait_for_records(3)  # the last event is recorded after its response ends
    # One key throughout: its usage history carries on.
    assert {str(r.api_key_id) for r in created.key.usage_records.all()} == {str(created.key.id)}
    assert created.key.usage_records.count() == 3

    # Rolled again at once (it leaked): only the newest secret works.
    newest = api_key_roll(key=ApiKey.objects.get(pk=created.key.pk), actor=owner, grace_hours=0)
    gw.refresh()
    for stale in (old, new):
        with pytest.raises(openai.AuthenticationError) as caught:
            ask(stale, "tiny-chat")
        assert caught.value.code == "invalid_api_key"
    assert ask(gw.client(newest.secret), "tiny-chat")
