from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Real headless Chromium (Debian's package) driven by Playwright.

    One per test module, not per session: while Playwright's sync API is open it keeps an event
    loop running in the main thread, where Django then keeps database connections per context
    instead of per thread, so connections opened by later tests' fixtures would stay open after
    them (and PostgreSQL would refuse to drop the test database).

    Skips when Chromium or Playwright is absent, unless REQUIRE_BROWSER=1 (CI) makes that a failure.
    """
    missing = None
    if not (os.path.exists(CHROMIUM) or shutil.which("chromium")):
        missing = f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing = "Playwright for Python is not installed (the dev extra has it)"
    if missing:
        if os.environ.get("REQUIRE_BROWSER") == "1":
            pytest.fail(missing)
        pytest.skip(missing)
    # Playwright's sync API keeps an event loop in this thread; the ORM calls the tests make
    # around it are still ordinary synchronous calls.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield instance
        instance.close()


@pytest.fixture
def page(browser: Any, live_server: Any) -> Iterator[Any]:
    """A browser tab on the live server. The test fails if a script on any page raised, or if
    any request the pages made (documents, htmx calls, styles, scripts, icons) got a 404 or a
    5xx; 400s are how forms answer with their errors, so they pass."""
    context = browser.new_context(base_url=live_server.url)
    page = context.new_page()
    page.set_default_timeout(15_000)
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"script error: {error}"))
    page.on(
        "response",
        lambda response: (
            problems.append(f"{response.status} {response.request.method} {response.url}")
            if response.status == 404 or response.status >= 500
            else None
        ),
    )
    yield page
    context.close()
    assert not problems, problems
