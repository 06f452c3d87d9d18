"""Browser fixtures: Debian's chromium driven by Playwright, and the demo API with localstripe and the fakes."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from sandbox import LocalStripe, Sandbox
from tests.conftest import make_settings
from tests.payments.conftest import RunningApi, serve_app

CHROMIUM = Path("/usr/bin/chromium")
# As root Chromium needs --no-sandbox; without the background-networking flags it keeps dialling Google's
# services, which a closed network refuses.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts" / "browser"
WEBHOOK_ID = "attribution-browser-tests"
PRICE_CENTS = 4700
STEP_TIMEOUT_MS = 10_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Debian chromium (never Playwright's own download), one per test module.

    Playwright's sync API keeps an event loop running in this thread while it is open, which breaks every later
    `asyncio.run` in the session; so it is closed at the end of each module that uses it.
    """
    if not CHROMIUM.exists():
        pytest.skip(
            f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium), as .ci/run does"
        )
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=30_000
        )
        yield launched
        launched.close()


@pytest.fixture(scope="session")
def browser_localstripe() -> Iterator[LocalStripe]:
    """localstripe for the browser tests: the API's Stripe, and the source of the Stripe.js stand-in."""
    with LocalStripe() as server:
        yield server


@pytest.fixture(scope="session")
def browser_sandbox() -> Iterator[Sandbox]:
    """The MailerLite / CRM / sGTM fakes the delivery worker forwards to."""
    with Sandbox() as fakes:
        yield fakes


@pytest.fixture(scope="module")
def demo_api(
    tmp_path_factory: pytest.TempPathFactory, browser_localstripe: LocalStripe, browser_sandbox: Sandbox
) -> Iterator[RunningApi]:
    """The API in demo mode with Stripe (localstripe) and every destination configured; webhooks registered."""
    values: dict[str, Any] = {
        name.lower(): value for name, value in (browser_localstripe.env() | browser_sandbox.env()).items()
    }
    settings = make_settings(
        tmp_path_factory.mktemp("browser"),
        **values,
        attribution_demo=True,
        product_price_cents=PRICE_CENTS,
        attribution_delivery_poll_seconds=0.1,
    )
    with serve_app(settings) as api:
        browser_localstripe.register_webhook(WEBHOOK_ID, api.webhook_url, browser_localstripe.webhook_secret)
        yield api


class Shots:
    """Numbered screenshots of one test under tests/artifacts/browser/ (gitignored)."""

    def __init__(self, page: Page, test_name: str) -> None:
        self.page = page
        self.prefix = re.sub(r"[^a-z0-9]+", "-", test_name.lower()).strip("-")
        self.count = 0

    def __call__(self, step: str) -> Path:
        """Save a full-page screenshot of the current step."""
        self.count += 1
        path = ARTIFACTS / f"{self.prefix}-{self.count:02d}-{step}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh browser context (empty storage: a new visitor) and page; fails the test on a JavaScript error."""
    context = browser.new_context(viewport={"width": 1100, "height": 900}, locale="pt-PT")
    context.set_default_timeout(STEP_TIMEOUT_MS)
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    try:
        yield opened
    finally:
        context.close()
    assert not errors, f"JavaScript errors in the page: {errors}"


@pytest.fixture
def shots(page: Page, request: pytest.FixtureRequest) -> Shots:
    """Screenshot helper for this test."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return Shots(page, request.node.name)
