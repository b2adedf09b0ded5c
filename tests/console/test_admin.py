from __future__ import annotations

import pytest
from django.apps import apps
from django.contrib import admin
from django.urls import reverse

from console.models import Organisation
from console.services.keys import KeyAuthError, api_key_authenticate, api_key_create
from tests.factories import UserFactory


@pytest.fixture
def staff_client(client, db):
    staff = UserFactory(is_staff=True, is_superuser=True)
    client.force_login(staff)
    return client


def test_every_model_is_registered_in_the_admin():
    ours = [
        m for m in apps.get_models() if m._meta.app_label in {"console", "inference", "billing"}
    ]
    missing = [m._meta.label for m in ours if not admin.site.is_registered(m)]
    assert not missing


def test_admin_changelists_and_change_pages_load(staff_client, org, owner):
    api_key_create(org=org, actor=owner, name="k", scopes=["inference"])
    for model, model_admin in admin.site._registry.items():
        opts = model._meta
        url = reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist")
        response = staff_client.get(url, {"q": "a"} if model_admin.search_fields else {})
        assert response.status_code == 200, url
        obj = model.objects.first()
        if obj is not None:
            change = reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[obj.pk])
            assert staff_client.get(change).status_code == 200, change


def test_key_admin_never_shows_the_digest(staff_client, org, owner):
    created = api_key_create(org=org, actor=owner, name="k", scopes=["inference"])
    page = staff_client.get(reverse("admin:console_apikey_change", args=[created.key.pk]))
    assert created.key.digest not in page.content.decode()
    assert created.secret not in page.content.decode()


def test_suspend_and_reactivate_actions(staff_client, org, owner):
    secret = api_key_create(org=org, actor=owner, name="k", scopes=["inference"]).secret
    url = reverse("admin:console_organisation_changelist")
    staff_client.post(url, {"action": "suspend", "_selected_action": [org.pk]})
    org.refresh_from_db()
    assert org.is_suspended
    with pytest.raises(KeyAuthError):
        api_key_authenticate(secret)
    staff_client.post(url, {"action": "reactivate", "_selected_action": [org.pk]})
    assert not Organisation.objects.get(pk=org.pk).is_suspended
    assert api_key_authenticate(secret).org == org


def test_non_staff_cannot_open_the_admin(client_for, owner):
    response = client_for(owner).get("/admin/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
