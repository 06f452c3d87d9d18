"""Reconciliation fixtures: localstripe and the sandbox fakes for the session, and scenarios run through the API."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from ingest.core.settings import Settings
from ingest.reconcile.models import ModelParams
from sandbox import LocalStripe, Sandbox
from sandbox.scenario import (
    SCENARIO_API_SETTINGS,
    GroundTruth,
    ScenarioEnvironment,
    ScenarioSpec,
    run_scenario,
)
from tests.conftest import ADMIN_TOKEN, make_settings, serve


@pytest.fixture(scope="session")
def localstripe() -> Iterator[LocalStripe]:
    """One localstripe child process for these tests."""
    with LocalStripe() as server:
        yield server


@pytest.fixture(scope="session")
def sandbox() -> Iterator[Sandbox]:
    """The MailerLite / CRM / sGTM / Meta fakes; each scenario clears their faults first."""
    with Sandbox() as fakes:
        yield fakes


def scenario_settings(
    tmp_path: Path,
    localstripe: LocalStripe,
    sandbox: Sandbox,
    *,
    disabled: tuple[str, ...] = (),
    **overrides: Any,
) -> Settings:
    """Settings for an API under a scenario: the fakes (minus `disabled` destinations), localstripe, fast schedules."""
    env = {name.lower(): value for name, value in (localstripe.env() | sandbox.env()).items()}
    off = {
        "mailerlite": "mailerlite_api_key",
        "crm": "crm_webhook_url",
        "sgtm": "sgtm_endpoint",
        "meta": "meta_pixel_id",
    }
    for destination in disabled:
        env.pop(off[destination])
    return make_settings(tmp_path, **(env | SCENARIO_API_SETTINGS | overrides))


def fake_urls(sandbox: Sandbox) -> dict[str, str]:
    """Base URL of each fake, for its /_sandbox/ fault controls."""
    return {name: sandbox.base_url(name) for name in ("mailerlite", "crm", "sgtm", "meta")}


def scenario_environment(
    settings: Settings, base_url: str, localstripe: LocalStripe, sandbox: Sandbox
) -> ScenarioEnvironment:
    """What the scenario needs to drive the API served at base_url with `settings`."""
    return ScenarioEnvironment(
        api_url=base_url,
        admin_token=ADMIN_TOKEN,
        stripe_api_base=localstripe.url,
        stripe_secret_key=localstripe.secret_key,
        stripe_webhook_secret=localstripe.webhook_secret,
        fakes=fake_urls(sandbox),
        params=ModelParams.from_settings(settings),
        database_path=settings.attribution_db_path,
    )


@dataclass(frozen=True)
class ScenarioRun:
    """A scenario that ran against the real API: its settings, ground truth and what the API's metrics said."""

    settings: Settings
    truth: GroundTruth
    api_metrics: list[dict[str, Any]]


def run_through_api(
    settings: Settings, localstripe: LocalStripe, sandbox: Sandbox, spec: ScenarioSpec
) -> ScenarioRun:
    """Serve the API with `settings`, drive the scenario through it, stop it; return the ground truth."""
    with serve(settings) as base_url:
        truth = run_scenario(scenario_environment(settings, base_url, localstripe, sandbox), spec)
        response = httpx.get(
            f"{base_url}/v1/metrics/success", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=60
        )
        assert response.status_code == 200, response.text
    return ScenarioRun(settings, truth, response.json())
