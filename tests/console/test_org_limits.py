"""An organisation's gateway rate limits: set by platform staff in the admin (audited, and
announced to gateways), shown read-only to the org's members (programs of developers need to
know them) on the Settings page and over the REST API."""

from __future__ import annotations

import pytest
from django.urls import reverse

from console.models import AuditEvent, Organisation
from console.permissions import Role
from console.services.keys import api_key_create
from console.snapshot import snapshot_version
from tests.factories import UserFactory


@pytest.fixture
def staff_client(client, db):  # type: ignore[no-untyped-def]
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    return client


def test_staff_set_an_orgs_limits_in_the_admin_and_gateways_are_told(
    staff_client, org, django_capture_on_commit_callbacks
):
    before = snapshot_version()
    form = {
        "name": org.name,
        "slug": org.slug,
        "max_gpus": 8,
        "max_replicas": 8,
        "rpm_limit": "600",
        "tpm_limit": "",
        "memberships-TOTAL_FORMS": "0",
        "memberships-INITIAL_FORMS": "0",
        "memberships-MIN_NUM_FORMS": "0",
        "memberships-MAX_NUM_FORMS": "1000",
    }
    with django_capture_on_commit_callbacks(execute=True):
        response = staff_client.post(
            reverse("admin:console_organisation_change", args=[org.pk]), form
        )
    assert response.status_code == 302, response.content.decode()[:2000]
    org.refresh_from_db()
    assert (org.rpm_limit, org.tpm_limit) == (600, None)
    event = AuditEvent.objects.get(org=org, action="org.rate_limits_changed")
    assert event.data == {"by": "platform staff", "rpm_limit": {"before": None, "after": 600}}
    assert snapshot_version() > before


@pytest.mark.parametrize("role", list(Role))
def test_every_member_sees_the_limits_on_the_settings_page(
    client_for, make_member, org, settings, role
):
    settings.GATEWAY_ORG_RPM_LIMIT = 300
    settings.GATEWAY_ORG_TPM_LIMIT = 0
    Organisation.objects.filter(pk=org.pk).update(tpm_limit=50000)
    page = client_for(make_member(role).user).get(f"/o/{org.slug}/settings/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "Rate limits" in html
    assert "<td>300</td><td><small>platform default" in html
    assert "<td>50000</td><td><small>set for this organisation" in html


def test_an_orgs_zero_limit_reads_no_limit(client_for, org, owner, settings):
    settings.GATEWAY_ORG_RPM_LIMIT = 300
    Organisation.objects.filter(pk=org.pk).update(rpm_limit=0)
    html = client_for(owner).get(f"/o/{org.slug}/settings/").content.decode()
    assert "<td>no limit</td><td><small>set for this organisation" in html


def test_outsider_gets_404_for_the_settings_page(client_for, org, outsider):
    assert client_for(outsider).get(f"/o/{org.slug}/settings/").status_code == 404


def test_rest_api_shows_the_limits_in_force_and_does_not_change_them(
    client_for, org, owner, settings
):
    settings.GATEWAY_ORG_RPM_LIMIT = 300
    settings.GATEWAY_ORG_TPM_LIMIT = 0
    Organisation.objects.filter(pk=org.pk).update(tpm_limit=50000)
    client = client_for(owner)
    body = client.get(f"/api/orgs/{org.slug}/").json()
    assert (body["rpm_limit"], body["tpm_limit"]) == (300, 50000)
    patched = client.patch(
        f"/api/orgs/{org.slug}/",
        {"name": "Acme 2", "rpm_limit": 1_000_000, "tpm_limit": None},
        content_type="application/json",
    )
    assert patched.status_code == 200
    assert (patched.json()["rpm_limit"], patched.json()["tpm_limit"]) == (300, 50000)
    org.refresh_from_db()
    assert (org.name, org.rpm_limit, org.tpm_limit) == ("Acme 2", None, 50000)


def test_every_member_and_key_reads_the_limits_over_rest(client, client_for, org, owner, viewer):
    Organisation.objects.filter(pk=org.pk).update(rpm_limit=100, tpm_limit=5000)
    read = api_key_create(org=org, actor=owner, name="r", scopes=["read"]).secret
    for answer in (
        client_for(viewer).get(f"/api/orgs/{org.slug}/"),
        client.get(f"/api/orgs/{org.slug}/", HTTP_AUTHORIZATION=f"Bearer {read}"),
    ):
        assert (answer.json()["rpm_limit"], answer.json()["tpm_limit"]) == (100, 5000)
