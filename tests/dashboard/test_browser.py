"""`attribution dashboard` in a real browser: headless Debian chromium opens the Overview of a generated replica."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, expect

from dashboard.ui import METRIC_LABELS
from ingest.reconcile.report import percent
from tests.browser.conftest import browser  # noqa: F401 - the session's chromium
from tests.conftest import free_port
from tests.dashboard.conftest import Replica, dashboard_env

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts" / "dashboard"
START_TIMEOUT_SECONDS = 60
RENDER_TIMEOUT_MS = 60_000


@pytest.fixture
def dashboard_url(demo_replica: Replica) -> Iterator[str]:
    """`attribution dashboard --port N` as a child process over the generated replica; stopped with Ctrl-C."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "cli", "dashboard", "--port", str(port)],
        env={**os.environ, **dashboard_env(demo_replica.settings)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while True:
        assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
        try:
            if httpx.get(f"{url}/_stcore/health", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the dashboard did not start"
        time.sleep(0.1)
    try:
        yield url
    finally:
        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C in its terminal
        assert process.wait(15) == 0


def test_overview_in_a_browser_shows_the_five_metrics(
    browser: Browser,  # noqa: F811
    dashboard_url: str,
    demo_replica: Replica,
) -> None:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        page.goto(dashboard_url)
        metrics = page.get_by_test_id("stMetric")
        expect(metrics).to_have_count(len(METRIC_LABELS), timeout=RENDER_TIMEOUT_MS)
        for metric in demo_replica.metrics():
            card = metrics.filter(has_text=METRIC_LABELS[metric.metric])
            expect(card.get_by_test_id("stMetricValue")).to_have_text(percent(metric.value))
        expect(page.get_by_text("Daily trend")).to_be_visible()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "overview.png"), full_page=True)
    finally:
        context.close()
    assert not errors, errors
