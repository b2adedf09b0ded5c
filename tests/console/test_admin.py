from __future__ import annotations

import json

import pytest
from django.apps import apps
from django.contrib import admin
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from console.models import ApiKey, AuditEvent, Organisation
from console.services.keys import KeyAuthError, api_key_authenticate, api_key_create
from console.snapshot import snapshot_version
from inference.services.deployments import deployment_create
from inference.services.routes import external_endpoint_create, route_create
from tests.factories import OrgFactory, UserFactory


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


def test_admin_pages_carry_the_sites_icon_and_names(staff_client, org):
    # Without a link of its own a browser asks for /favicon.ico, which is a 404.
    for url in ("/admin/", reverse("admin:console_organisation_change", args=[org.pk])):
        page = staff_client.get(url).content.decode()
        assert 'rel="icon" href="/static/img/favicon.svg"' in page
        assert "Inference platform administration</a>" in page
        assert "| Inference platform admin</title>" in page


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


def _org_form(org: Organisation, **changes: object) -> dict[str, object]:
    form = {
        "name": org.name,
        "max_gpus": org.max_gpus,
        "max_replicas": org.max_replicas,
        "rpm_limit": "" if org.rpm_limit is None else org.rpm_limit,
        "tpm_limit": "" if org.tpm_limit is None else org.tpm_limit,
        "memberships-TOTAL_FORMS": "0",
        "memberships-INITIAL_FORMS": "0",
        "memberships-MIN_NUM_FORMS": "0",
        "memberships-MAX_NUM_FORMS": "1000",
    }
    if org.require_two_factor:
        form["require_two_factor"] = "on"
    form.update(changes)
    return {name: value for name, value in form.items() if value is not None}


def test_staff_changes_to_an_organisation_are_audited_as_platform_staff(
    staff_client, org, django_capture_on_commit_callbacks
):
    Organisation.objects.filter(pk=org.pk).update(require_two_factor=True)
    org.refresh_from_db()
    url = reverse("admin:console_organisation_change", args=[org.pk])
    form = _org_form(org, name="Acme Renamed", require_two_factor=None, max_gpus=64, rpm_limit=600)
    with django_capture_on_commit_callbacks(execute=True):
        response = staff_client.post(url, form)
    assert response.status_code == 302
    org.refresh_from_db()
    assert (org.name, org.require_two_factor, org.max_gpus) == ("Acme Renamed", False, 64)
    events = {e.action: e for e in AuditEvent.objects.filter(org=org)}
    assert set(events) == {
        "org.renamed",
        "org.two_factor_not_required",
        "org.quota_changed",
        "org.rate_limits_changed",
    }
    assert events["org.renamed"].data == {"by": "platform staff", "from": "Acme"}
    assert events["org.two_factor_not_required"].data == {"by": "platform staff"}
    assert events["org.quota_changed"].data == {
        "by": "platform staff",
        "max_gpus": {"before": 8, "after": 64},
    }
    assert events["org.rate_limits_changed"].data == {
        "by": "platform staff",
        "rpm_limit": {"before": None, "after": 600},
    }
    assert all(e.actor is not None and e.actor.is_staff for e in events.values())
    # Saving again without a change records nothing more; turning it back on is recorded too.
    staff_client.post(url, _org_form(org))
    staff_client.post(url, _org_form(org, require_two_factor="on"))
    assert AuditEvent.objects.filter(org=org).count() == 5
    assert AuditEvent.objects.filter(org=org, action="org.two_factor_required").exists()


def test_non_staff_cannot_open_the_admin(client_for, owner):
    response = client_for(owner).get("/admin/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def _key_form(key, **changes):  # type: ignore[no-untyped-def]
    """The key's change form as the admin posts it, with ``changes`` applied."""
    data = {
        "name": key.name,
        "allowed_models": json.dumps(key.allowed_models),
        "rpm_limit": key.rpm_limit or "",
        "tpm_limit": key.tpm_limit or "",
        "monthly_budget_micros": key.monthly_budget_micros or "",
        "expires_at_0": "",
        "expires_at_1": "",
    }
    data.update(changes)
    return data


def test_staff_key_edit_is_audited_and_reaches_the_gateways(
    staff_client, org, owner, django_capture_on_commit_callbacks
):
    key = api_key_create(org=org, actor=owner, name="k", scopes=["inference"]).key
    version = snapshot_version()
    url = reverse("admin:console_apikey_change", args=[key.pk])
    with django_capture_on_commit_callbacks(execute=True):
        response = staff_client.post(url, _key_form(key, rpm_limit=7, scopes='["manage"]'))
    assert response.status_code == 302
    key.refresh_from_db()
    assert key.rpm_limit == 7
    assert key.scopes == ["inference"]  # read-only here: a key never gains scopes from staff
    assert snapshot_version() > version
    event = AuditEvent.objects.get(action="key.updated")
    assert event.data == {"by": "platform staff", "rpm_limit": {"before": None, "after": 7}}
    assert event.actor is not None and event.actor.is_staff


@pytest.mark.parametrize("bad", ['"tiny"', "[1, 2]", '{"a": 1}', '[""]'])
def test_staff_key_edit_refuses_what_the_gateways_cannot_read(staff_client, org, owner, bad):
    key = api_key_create(org=org, actor=owner, name="k", scopes=["inference"]).key
    url = reverse("admin:console_apikey_change", args=[key.pk])
    response = staff_client.post(url, _key_form(key, allowed_models=bad))
    assert response.status_code == 200
    assert "JSON list of model names" in response.content.decode()
    key.refresh_from_db()
    assert key.allowed_models == []
    assert not AuditEvent.objects.filter(action="key.updated").exists()


def test_staff_revoke_keys_with_the_action_not_by_deleting(
    staff_client, org, owner, django_capture_on_commit_callbacks
):
    created = api_key_create(org=org, actor=owner, name="k", scopes=["inference"])
    version = snapshot_version()
    changelist = reverse("admin:console_apikey_changelist")
    with django_capture_on_commit_callbacks(execute=True):
        staff_client.post(changelist, {"action": "revoke", "_selected_action": [created.key.pk]})
    with pytest.raises(KeyAuthError):
        api_key_authenticate(created.secret)
    assert snapshot_version() > version
    assert AuditEvent.objects.filter(action="key.revoked").count() == 1
    delete = reverse("admin:console_apikey_delete", args=[created.key.pk])
    assert staff_client.post(delete, {"post": "yes"}).status_code == 403
    assert ApiKey.objects.filter(pk=created.key.pk).exists()


def test_routes_and_deployments_change_only_through_services(
    staff_client, org, owner, django_capture_on_commit_callbacks
):
    endpoint = external_endpoint_create(
        org=org, actor=owner, name="partner", base_url="https://api.example.com/v1", model="m"
    )
    route = route_create(
        org=org, actor=owner, name="chat", policy="single", config={"target": "external:partner"}
    )
    deployment = deployment_create(
        org=org, actor=owner, name="llm", source="huggingface", model="acme/llm"
    )
    # A route edited here would skip the graph checks: staff can look, not change.
    route_url = reverse("admin:inference_route_change", args=[route.pk])
    assert staff_client.get(route_url).status_code == 200
    response = staff_client.post(route_url, {"name": "chat", "policy": "single", "config": "{}"})
    assert response.status_code == 403
    route.refresh_from_db()
    assert route.config == {"target": "external:partner"}
    # Deployments: pause and resume as actions, through the service (audited, gateways told).
    version = snapshot_version()
    changelist = reverse("admin:inference_deployment_changelist")
    with django_capture_on_commit_callbacks(execute=True):
        staff_client.post(changelist, {"action": "pause", "_selected_action": [deployment.pk]})
    deployment.refresh_from_db()
    assert deployment.paused
    assert snapshot_version() > version
    assert AuditEvent.objects.filter(action="deployment.paused", org=org).exists()
    delete = reverse("admin:inference_deployment_delete", args=[deployment.pk])
    assert staff_client.post(delete, {"post": "yes"}).status_code == 403
    # An endpoint's address may be corrected, checked, audited and announced; not renamed.
    endpoint_url = reverse("admin:inference_externalendpoint_change", args=[endpoint.pk])
    refused = staff_client.post(
        endpoint_url, {"base_url": "http://127.0.0.1:9/v1", "model": "m", "name": "other"}
    )
    assert refused.status_code == 200 and "GATEWAY_EXTERNAL_ALLOW" in refused.content.decode()
    version = snapshot_version()
    with django_capture_on_commit_callbacks(execute=True):
        saved = staff_client.post(
            endpoint_url, {"base_url": "https://api.example.org/v1", "model": "m", "name": "other"}
        )
    assert saved.status_code == 302
    endpoint.refresh_from_db()
    assert (endpoint.name, endpoint.base_url) == ("partner", "https://api.example.org/v1")
    assert snapshot_version() > version
    event = AuditEvent.objects.get(action="endpoint.updated")
    assert event.data["base_url"] == {
        "before": "https://api.example.com/v1",
        "after": "https://api.example.org/v1",
    }


def test_the_default_plan_cannot_be_deleted(staff_client):
    from billing.models import Plan
    from tests.gateway.conftest import migration_rows

    migration_rows()  # the plans billing's migrations create, whatever ran before
    default = Plan.objects.get(is_default=True)
    spare = Plan.objects.create(code="spare", name="Spare", kind=default.kind)
    delete = "admin:billing_plan_delete"
    assert staff_client.post(reverse(delete, args=[default.pk]), {"post": "yes"}).status_code == 403
    assert Plan.objects.filter(pk=default.pk).exists()
    assert staff_client.post(reverse(delete, args=[spare.pk]), {"post": "yes"}).status_code == 302
    assert not Plan.objects.filter(pk=spare.pk).exists()


def test_a_new_price_must_state_its_amounts(staff_client):
    from billing.models import Price

    before = Price.objects.count()
    add = reverse("admin:billing_price_add")
    form = staff_client.get(add).content.decode()
    # Nothing filled in for the amounts: the model's default of 0 would make the price free.
    assert 'name="input_micros_per_million" value="0"' not in form
    blank = {"unit": "tokens", "effective_from_0": "", "effective_from_1": ""}
    blank |= {"model": "", "note": ""}
    page = staff_client.post(add, blank)
    assert page.status_code == 200
    assert page.context["adminform"].form.errors.keys() >= {
        "input_micros_per_million",
        "output_micros_per_million",
    }
    assert Price.objects.count() == before
    # Stated explicitly, 0 is a price like any other.
    stated = blank | {"model": "tiny", "input_micros_per_million": "0"}
    stated |= {"output_micros_per_million": "250000"}
    stated |= {"effective_from_0": "2031-01-01", "effective_from_1": "00:00:00"}
    saved = staff_client.post(add, stated)
    assert saved.status_code == 302, saved.context["adminform"].form.errors
    price = Price.objects.get(model="tiny")
    assert (price.input_micros_per_million, price.output_micros_per_million) == (0, 250_000)


@pytest.mark.parametrize(
    "model",
    [
        "console_invitation",
        "inference_routescorer",
        "console_controlplaneversion",
        "console_organisation",
        "console_membership",
    ],
)
def test_rows_that_only_the_product_creates_have_no_add_form(staff_client, model):
    # Saving their add form used to write a row without its organisation (an IntegrityError)
    # or a second control-plane version.
    assert staff_client.get(reverse(f"admin:{model}_add")).status_code == 403
    assert staff_client.post(reverse(f"admin:{model}_add"), {}).status_code == 403


def test_staff_confirm_email_addresses_and_a_changed_address_needs_confirming_again(
    staff_client,
):
    waiting = UserFactory(email="waiting@example.com", email_verified_at=None)
    changelist = reverse("admin:console_user_changelist")
    listed = staff_client.get(changelist, {"email_confirmed": "no"}).content.decode()
    assert "waiting@example.com" in listed
    response = staff_client.post(
        changelist, {"action": "confirm_email", "_selected_action": [waiting.pk]}, follow=True
    )
    assert "Confirmed 1 email address(es)." in response.content.decode()
    waiting.refresh_from_db()
    assert waiting.email_verified_at is not None

    change = reverse("admin:console_user_change", args=[waiting.pk])
    form = staff_client.get(change).context["adminform"].form
    data = {k: v for k, v in form.initial.items() if v is not None and k != "password"}
    data.update(
        email="moved@example.com",
        date_joined_0=waiting.date_joined.strftime("%Y-%m-%d"),
        date_joined_1=waiting.date_joined.strftime("%H:%M:%S"),
        groups=[],
        user_permissions=[],
    )
    data.pop("date_joined", None)
    data.pop("last_login", None)
    saved = staff_client.post(change, data)
    assert saved.status_code == 302, saved.context["adminform"].form.errors
    waiting.refresh_from_db()
    assert waiting.email == "moved@example.com"
    assert waiting.email_verified_at is None


def test_staff_cannot_leave_an_organisation_without_an_owner(staff_client, org, owner):
    """Roles and removals go through the console's rules (an organisation keeps an owner) and
    its audit log; in the admin, memberships are for reading."""
    from console.models import Membership

    membership = Membership.objects.get(org=org, user=owner)
    change = reverse("admin:console_membership_change", args=[membership.pk])
    assert staff_client.get(change).status_code == 200  # a read-only view
    staff_client.post(change, {"user": owner.pk, "org": org.pk, "role": "viewer"})
    delete = reverse("admin:console_membership_delete", args=[membership.pk])
    assert staff_client.post(delete, {"post": "yes"}).status_code == 403
    membership.refresh_from_db()
    assert membership.role == "owner"
    # Nor through the organisation's page, whose members are listed, not edited.
    page = staff_client.get(reverse("admin:console_organisation_change", args=[org.pk]))
    assert page.status_code == 200 and 'name="memberships-0-role"' not in page.content.decode()


def test_staff_cannot_delete_people_or_audit_events(staff_client, org, owner):
    from console.models import User

    event = AuditEvent.objects.create(org=org, action="org.renamed", actor=owner)
    delete_user = reverse("admin:console_user_delete", args=[owner.pk])
    assert staff_client.post(delete_user, {"post": "yes"}).status_code == 403
    listing = staff_client.get(reverse("admin:console_user_changelist")).content.decode()
    assert "delete_selected" not in listing
    delete_event = reverse("admin:console_auditevent_delete", args=[event.pk])
    assert staff_client.post(delete_event, {"post": "yes"}).status_code == 403
    assert User.objects.filter(pk=owner.pk).exists() and AuditEvent.objects.filter(pk=event.pk)
    # A staff account that belongs to no organisation is staff's to remove.
    other = UserFactory(is_staff=True)
    assert (
        staff_client.post(
            reverse("admin:console_user_delete", args=[other.pk]), {"post": "yes"}
        ).status_code
        == 302
    )
    assert not User.objects.filter(pk=other.pk).exists()


def test_staff_cannot_delete_a_tenants_webhook(staff_client, org, owner):
    """Its delivery history would go with it, unaudited; the tenant deletes it (disabled, kept)."""
    from console.models import WebhookEndpoint
    from console.services.webhooks import webhook_create

    endpoint, _ = webhook_create(org=org, actor=owner, url="https://example.com/hook")
    delete = reverse("admin:console_webhookendpoint_delete", args=[endpoint.pk])
    assert staff_client.post(delete, {"post": "yes"}).status_code == 403
    listing = staff_client.get(reverse("admin:console_webhookendpoint_changelist"))
    assert "delete_selected" not in listing.content.decode()
    assert WebhookEndpoint.objects.filter(pk=endpoint.pk, disabled_at=None).exists()
    # Nor a single delivery of its history.
    delivery = endpoint.deliveries.create(event_type="webhook.test", payload={"id": "evt"})
    gone = reverse("admin:console_webhookdelivery_delete", args=[delivery.pk])
    assert staff_client.post(gone, {"post": "yes"}).status_code == 403
    assert endpoint.deliveries.filter(pk=delivery.pk).exists()


def test_staff_cannot_give_an_account_another_accounts_address_in_other_case(staff_client, owner):
    other = UserFactory(email="someone@example.com")
    change = reverse("admin:console_user_change", args=[other.pk])
    form = staff_client.get(change).context["adminform"].form
    data = {k: v for k, v in form.initial.items() if v is not None and k != "password"}
    data |= {"email": owner.email.upper(), "date_joined_0": "2026-01-01", "date_joined_1": "00:00"}
    response = staff_client.post(change, data)
    assert response.status_code == 200
    assert "Another account uses this address." in response.content.decode()
    other.refresh_from_db()
    assert other.email == "someone@example.com"


def test_an_organisations_slug_is_shown_not_edited_in_the_admin(staff_client, org):
    """It is in every address tenants use, and its rules (reserved words) apply where
    organisations are created, in the console."""
    change = reverse("admin:console_organisation_change", args=[org.pk])
    page = staff_client.get(change).content.decode()
    assert 'name="slug"' not in page and org.slug in page
    form = staff_client.get(change).context["adminform"].form
    data = {k: v for k, v in form.initial.items() if v is not None}
    data |= {"slug": "new", "memberships-TOTAL_FORMS": "0", "memberships-INITIAL_FORMS": "0"}
    staff_client.post(change, data)
    org.refresh_from_db()
    assert org.slug == "acme"


def test_staff_cannot_resume_a_suspended_organisations_deployment(staff_client, org, owner):
    from console.services.orgs import org_suspend
    from inference.models import Deployment
    from inference.services.deployments import deployment_pause

    deployment = deployment_create(
        org=org, actor=owner, name="llm", source="huggingface", model="acme/llm"
    )
    deployment_pause(deployment=deployment, actor=owner)
    org_suspend(org=org, reason="unpaid invoices")
    changelist = reverse("admin:inference_deployment_changelist")
    page = staff_client.post(
        changelist, {"action": "resume", "_selected_action": [deployment.pk]}, follow=True
    ).content.decode()
    assert "Not resumed: llm (acme). This organisation is suspended: unpaid invoices." in page
    assert "Resumed." not in page
    assert Deployment.objects.get(pk=deployment.pk).paused
    assert not AuditEvent.objects.filter(action="deployment.resumed").exists()


def test_an_organisations_page_reads_its_members_in_a_fixed_number_of_queries(
    staff_client, org, owner, django_assert_max_num_queries
):
    from console.models import Membership

    url = reverse("admin:console_organisation_change", args=[org.pk])
    staff_client.get(url)  # the site's own one-off reads (content types, sessions)
    with CaptureQueriesContext(connection) as few:
        assert staff_client.get(url).status_code == 200
    Membership.objects.bulk_create(
        Membership(org=org, user=UserFactory(), role="developer") for _ in range(10)
    )
    with django_assert_max_num_queries(len(few)):
        page = staff_client.get(url).content.decode()
    assert page.count("@example.com") >= 11


def test_audit_events_list_reads_a_page_and_a_capped_count_however_many_events(
    staff_client, org, owner, monkeypatch, django_assert_max_num_queries
):
    """Every organisation's log grows for good: the changelist reads each row's organisation
    and person with the page, and never counts the whole table."""
    from console.admin import CappedCountPaginator

    monkeypatch.setattr(CappedCountPaginator, "cap", 5)
    url = reverse("admin:console_auditevent_changelist")
    AuditEvent.objects.create(org=org, actor=owner, action="key.created", target_repr="k")
    staff_client.get(url)  # the site's own one-off reads (content types, sessions)
    with CaptureQueriesContext(connection) as few:
        assert staff_client.get(url).status_code == 200
    people = [UserFactory() for _ in range(8)]
    AuditEvent.objects.bulk_create(
        AuditEvent(org=OrgFactory(), actor=person, action="key.created", target_repr="k")
        for person in people
    )
    with django_assert_max_num_queries(len(few)) as many:
        page = staff_client.get(url).content.decode()
    assert all(person.email in page for person in people)
    sql = [
        q["sql"].upper() for q in many.captured_queries if "CONSOLE_AUDITEVENT" in q["sql"].upper()
    ]
    counts = [q for q in sql if "COUNT(" in q]
    assert len(counts) == 1 and "LIMIT 6" in counts[0]
    # No date hierarchy: it lists the distinct months of every row, and their first and last.
    assert not [q for q in sql if "DATE_TRUNC" in q or "DJANGO_DATETIME_TRUNC" in q or "MIN(" in q]
    assert "More than 5 audit events" in page
