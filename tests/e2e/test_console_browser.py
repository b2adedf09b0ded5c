"""The console in real headless Chromium: sign up, create an org, invite, create, revoke a key."""

from __future__ import annotations

import re

import pytest
from django.conf import settings
from django.core import mail

from console.models import ApiKey, AuditEvent, Invitation, Membership, Organisation
from console.permissions import Role
from tests.factories import PASSWORD as FACTORY_PASSWORD
from tests.factories import MembershipFactory
from tests.factories import OrgFactory as OrganisationFactory
from tests.gateway.conftest import migration_rows

pytestmark = pytest.mark.browser

PASSWORD = "a-long-and-unusual-passphrase-42"


def test_signup_org_invite_key_create_and_revoke(page, transactional_db):
    # The plans billing's migrations create (the overview shows the spend limit they give); an
    # earlier transactional test's flush may have removed them.
    migration_rows()
    page.goto("/signup/")
    page.fill("input[name=email]", "founder@example.com")
    page.fill("input[name=password1]", PASSWORD)
    page.fill("input[name=password2]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url("**/orgs/new/")

    page.fill("input[name=name]", "Browser Co")
    page.click("button[type=submit]")
    page.wait_for_url("**/o/browser-co/")
    assert page.locator("h1").inner_text() == "Browser Co"

    # Until the address is confirmed, a banner says so; the emailed link confirms it.
    assert page.locator("[data-testid=confirm-email]").is_visible()
    [email] = [m for m in mail.outbox if m.to == ["founder@example.com"]]
    link = re.search(r"http://\S+/account/confirm/\S+/", email.body)
    assert link is not None
    page.goto(link.group(0).replace(settings.SITE_URL, ""))
    assert page.locator("h1").inner_text() == "Email address confirmed"
    page.goto("/o/browser-co/")
    assert page.locator("[data-testid=confirm-email]").count() == 0

    # Invite a member: the panel updates in place (htmx), the URL does not change.
    page.click("nav >> text=Members")
    page.wait_for_url("**/o/browser-co/members/")
    page.fill("input[name=email]", "teammate@example.com")
    page.select_option("select[name=role]", "viewer")
    page.click("text=Send invitation")
    page.wait_for_selector("tr[data-invitation='teammate@example.com']")
    assert page.url.endswith("/o/browser-co/members/")

    # A bad address is refused beside the field, in place.
    page.fill("input[name=email]", "someone@nowhere")  # passes the browser, not the server
    page.click("text=Send invitation")
    page.wait_for_selector(".has-error >> text=Enter a valid email address.")

    # Create a key: shown once, listed.
    page.click("nav >> text=API keys")
    page.wait_for_url("**/o/browser-co/keys/")
    page.fill("input[name=name]", "ci-key")
    page.click("text=Create key")
    secret = page.locator("[data-testid=new-key-secret]").inner_text().strip()
    assert re.fullmatch(r"sk-[A-Za-z0-9_\-]{43}", secret)
    row = page.locator("tr[data-key='ci-key']")
    assert "active" in row.inner_text()

    # Revoke it, confirming the dialog.
    page.once("dialog", lambda dialog: dialog.accept())
    row.locator("text=Revoke").click()
    page.wait_for_selector("tr[data-key='ci-key'] >> text=revoked")
    # The secret is gone from the page once the list is refreshed.
    page.reload()
    assert secret not in page.content()

    # Narrow screens keep the navigation usable.
    page.set_viewport_size({"width": 390, "height": 800})
    assert page.locator("nav >> text=Members").is_visible()

    org = Organisation.objects.get(slug="browser-co")
    assert Invitation.objects.filter(org=org, email="teammate@example.com").count() == 1
    key = ApiKey.objects.get(org=org, name="ci-key")
    assert key.revoked_at is not None
    actions = set(AuditEvent.objects.filter(org=org).values_list("action", flat=True))
    assert {"org.created", "member.invited", "key.created", "key.revoked"} <= actions


def test_a_refused_htmx_change_says_why_on_the_page(page, transactional_db):
    """A developer opens the keys page, is made a viewer meanwhile, then submits the form: the
    403's reason appears above the page instead of nothing happening."""
    org = OrganisationFactory(name="Shop", slug="shop")
    member = MembershipFactory(org=org, role=Role.DEVELOPER)
    page.goto("/login/")
    page.fill("input[name=username]", member.user.email)
    page.fill("input[name=password]", FACTORY_PASSWORD)
    page.click("main button[type=submit]")
    page.wait_for_url("**/o/shop/")
    page.goto("/o/shop/keys/")
    Membership.objects.filter(pk=member.pk).update(role=Role.VIEWER)
    page.fill("input[name=name]", "too-late")
    page.click("text=Create key")
    alert = page.locator("#request-error")
    alert.wait_for()
    assert alert.inner_text() == "Your role (viewer) cannot do this."
    assert not ApiKey.objects.filter(org=org).exists()


def test_two_factor_set_up_then_sign_in_with_a_code_and_close_an_org(page, transactional_db):
    """An owner turns two-factor on by scanning (here: reading) the key, signs out, signs back in
    with a code from the app, then closes a spare organisation from its settings."""
    from console import totp
    from console.models import User

    migration_rows()  # the plans a transactional test's flush removed
    org = OrganisationFactory(name="Spare", slug="spare")
    owner = MembershipFactory(org=org, role=Role.OWNER).user
    page.goto("/login/")
    page.fill("input[name=username]", owner.email)
    page.fill("input[name=password]", FACTORY_PASSWORD)
    page.click("main button[type=submit]")
    page.wait_for_url("**/o/spare/")
    page.goto("/account/")
    page.click("text=Set up two-factor authentication")
    assert page.locator("[data-testid=totp-qr] svg").count() == 1
    secret = page.locator("[data-testid=totp-secret]").inner_text()
    page.fill("input[name=code]", totp.code_at(secret, totp.step_at()))
    page.click("main button:has-text('Turn on')")
    codes = page.locator("[data-testid=recovery-codes] li")
    codes.first.wait_for()
    assert codes.count() == 10
    assert User.objects.get(pk=owner.pk).has_two_factor

    page.goto("/account/")
    page.click("text=Log out")
    page.wait_for_url("**/login/")
    page.goto("/o/spare/")
    page.fill("input[name=username]", owner.email)
    page.fill("input[name=password]", FACTORY_PASSWORD)
    page.click("main button[type=submit]")
    page.wait_for_url("**/login/code/")
    step = User.objects.get(pk=owner.pk).totp_last_step + 1
    page.fill("input[name=code]", totp.code_at(secret, max(step, totp.step_at())))
    page.click("main button:has-text('Sign in')")
    page.wait_for_url("**/o/spare/")

    page.goto("/o/spare/settings/")
    page.fill("#close input[name=confirm]", "spare")
    page.fill("#close input[name=password]", FACTORY_PASSWORD)
    page.click("button:has-text('Close Spare')")
    page.wait_for_url("**/orgs/new/")
    assert "Closed Spare" in page.content()
    assert Organisation.objects.get(pk=org.pk).closed_at is not None


def test_refused_requests_show_above_the_request_log_and_follow_the_key_filter(
    page, transactional_db
):
    """A viewer looks for requests that never reached a model: the panel counts them by key
    and reason, and choosing a key (an htmx swap) narrows it to that key's."""
    from django.utils import timezone

    from console.services.keys import api_key_create
    from inference.services.refusals import refusals_add

    org = OrganisationFactory(name="Shop", slug="shop")
    member = MembershipFactory(org=org, role=Role.VIEWER)
    batch = api_key_create(org=org, actor=None, name="batch", scopes=["inference"]).key
    web = api_key_create(org=org, actor=None, name="web", scopes=["inference"]).key
    minute = int(timezone.now().timestamp()) // 60 * 60
    refusals_add(
        {
            (org.id, batch.id, minute, 429, "rate_limit_exceeded"): 30,
            (org.id, web.id, minute, 402, "budget_exhausted"): 4,
        }
    )
    page.goto("/login/")
    page.fill("input[name=username]", member.user.email)
    page.fill("input[name=password]", FACTORY_PASSWORD)
    page.click("main button[type=submit]")
    page.wait_for_url("**/o/shop/")
    page.click("[data-testid=traffic-refused]")  # the Overview's count links to the log
    page.wait_for_url("**/o/shop/requests/")
    panel = page.locator("[data-testid=refusals]")
    assert "34 requests refused before reaching a model" in panel.locator("summary").inner_text()
    panel.locator("summary").click()
    rows = panel.locator("tbody tr")
    assert rows.count() == 2
    assert "rate_limit_exceeded" in rows.nth(0).inner_text()
    assert "30" in rows.nth(0).inner_text()

    page.select_option("select[name=key]", label=f"web ({web.prefix}…)")
    page.wait_for_url(f"**key={web.id}**")
    summary = page.locator("[data-testid=refusals] summary")
    summary.wait_for()
    page.wait_for_function(
        "document.querySelector('[data-testid=refusals] summary').innerText.startsWith('4 ')"
    )
    summary.click()  # the swapped-in panel starts closed again
    assert "budget_exhausted" in page.locator("[data-testid=refusals] tbody").inner_text()
    assert "rate_limit_exceeded" not in page.locator("[data-testid=refusals]").inner_text()


def test_a_scale_error_and_a_filter_error_stay_on_screen(page, transactional_db):
    """A developer asks for more replicas than allowed: the error and what they typed stay while
    the status around it refreshes every two seconds. A backwards day range on the request log
    (an htmx swap of the results only) says why nothing is listed."""
    from inference.services.deployments import deployment_create

    org = OrganisationFactory(name="Shop", slug="shop")
    member = MembershipFactory(org=org, role=Role.DEVELOPER)
    deployment = deployment_create(
        org=org, actor=None, name="chat", source="huggingface", model="acme/chat"
    )
    page.goto("/login/")
    page.fill("input[name=username]", member.user.email)
    page.fill("input[name=password]", FACTORY_PASSWORD)
    page.click("main button[type=submit]")
    page.wait_for_url("**/o/shop/")
    page.goto(f"/o/shop/deployments/{deployment.pk}/")
    page.fill("#controls input[name=max_replicas]", "77")
    page.click("#controls button[type=submit]")
    alert = page.locator("#controls [role=alert]")
    alert.wait_for()
    message = alert.first.inner_text()
    assert message
    # Two polls of the status later, the error and the typed value are still there.
    with page.expect_response(lambda r: r.url.endswith(f"/deployments/{deployment.pk}/")):
        pass
    with page.expect_response(lambda r: r.url.endswith(f"/deployments/{deployment.pk}/")):
        pass
    assert page.locator("#controls [role=alert]").first.inner_text() == message
    assert page.input_value("#controls input[name=max_replicas]") == "77"

    page.goto("/o/shop/requests/")
    page.fill("input[name=start]", "2026-11-20")
    page.fill("input[name=end]", "2026-11-10")
    page.locator("input[name=end]").dispatch_event("change")
    errors = page.locator("#requests-panel [data-testid=filter-errors]")
    errors.wait_for()
    assert "The start must not be after the end." in errors.inner_text()


def _sign_in(page, email: str) -> None:  # type: ignore[no-untyped-def]
    page.goto("/login/")
    page.fill("input[name=username]", email)
    page.fill("input[name=password]", FACTORY_PASSWORD)
    page.click("main button[type=submit]")


def test_a_panel_that_finds_the_session_ended_takes_the_page_to_sign_in(page, transactional_db):
    """The deployment page polls its status; signed out in another tab, the next poll must not
    swap a sign-in page into the panel, and signing in comes back to the deployment."""
    from inference.services.deployments import deployment_create

    org = OrganisationFactory(name="Shop", slug="shop")
    member = MembershipFactory(org=org, role=Role.DEVELOPER)
    deployment = deployment_create(
        org=org, actor=None, name="chat", source="huggingface", model="acme/chat"
    )
    _sign_in(page, member.user.email)
    page.wait_for_url("**/o/shop/")
    page.goto(f"/o/shop/deployments/{deployment.pk}/")
    page.context.clear_cookies()
    page.wait_for_url("**/login/?next=*")
    assert page.locator("main").count() == 1
    page.fill("input[name=username]", member.user.email)
    page.fill("input[name=password]", FACTORY_PASSWORD)
    page.click("main button[type=submit]")
    page.wait_for_url(f"**/o/shop/deployments/{deployment.pk}/")
    assert page.locator("main").count() == 1


def test_the_quick_start_fits_a_phone(page, transactional_db):
    migration_rows()
    org = OrganisationFactory(name="Shop", slug="shop")
    owner = MembershipFactory(org=org, role=Role.OWNER).user
    page.set_viewport_size({"width": 375, "height": 800})
    _sign_in(page, owner.email)
    page.wait_for_url("**/o/shop/")
    widths = page.evaluate(
        "(() => { const m = document.querySelector('main');"
        " return [m.scrollWidth, m.clientWidth]; })()"
    )
    assert widths[0] <= widths[1], widths
