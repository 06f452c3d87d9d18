"""Scenarios through the real API (sandbox fakes, localstripe): every metric equals the injected ground truth."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from ingest.reconcile.models import run_data_tests, success_metrics
from ingest.reconcile.replica import reading
from sandbox import LocalStripe, Sandbox
from sandbox.scenario import GroundTruth, ScenarioError, ScenarioSpec, run_scenario, truth_path
from tests.conftest import lead_body, serve
from tests.reconcile.conftest import run_through_api, scenario_environment, scenario_settings

CONFIGURATIONS: list[tuple[ScenarioSpec, dict[str, Any]]] = [
    (ScenarioSpec(seed=11, leads=30, days=30), {}),
    # The consent gate off: MailerLite and sGTM get everyone, and compliance counts what went without consent.
    (ScenarioSpec(seed=12, leads=20, days=10), {"require_consent": False}),
    # CRM lead capture off, sGTM and Meta not configured: none is "should reach", and purchases are never sent.
    (
        ScenarioSpec(seed=13, leads=20, days=60),
        {"crm_enable_lead_capture": False, "disabled": ("sgtm", "meta")},
    ),
]


@pytest.mark.parametrize(
    ("spec", "overrides"),
    CONFIGURATIONS,
    ids=["default", "consent-gate-off", "crm-capture-off-sgtm-meta-disabled"],
)
def test_every_metric_and_the_sum_of_its_days_equal_the_scenarios_ground_truth(
    tmp_path: Path, localstripe: LocalStripe, sandbox: Sandbox, spec: ScenarioSpec, overrides: dict[str, Any]
) -> None:
    settings = scenario_settings(tmp_path, localstripe, sandbox, **overrides)
    run = run_through_api(settings, localstripe, sandbox, spec)
    expected = run.truth.expected()

    with reading(settings, "database") as reader:
        assert reader.source == "database"
        metrics = success_metrics(reader.conn)
        if not overrides:  # the data tests are slow to plan; once is enough
            assert run_data_tests(reader.conn) == {}
        meta = reader.conn.execute(
            "select is_enabled, expected, present from presence_by_system where system = 'meta'"
        ).fetchone()
        daily = reader.conn.execute(
            "select metric, day, numerator, denominator from success_metrics_daily"
        ).fetchall()
    assert {metric.metric: (metric.numerator, metric.denominator) for metric in metrics} == expected
    # The daily trend adds up to the same numbers: nothing a metric counts is left without a day.
    summed = dict.fromkeys(expected, (0, 0))
    for metric, day, numerator, denominator in daily:
        assert day is not None, f"a thing {metric} counts has no day, so the daily trend leaves it out"
        summed[metric] = (summed[metric][0] + numerator, summed[metric][1] + denominator)
    assert summed == expected
    api = {row["metric"]: (row["numerator"], row["denominator"]) for row in run.api_metrics}
    assert api == expected, "GET /v1/metrics/success computes the same numbers on the live database"
    assert GroundTruth.load(settings.attribution_db_path) == run.truth

    # What the scenario injected shows in the numbers (else this test could not fail on a broken model).
    injected = run.truth.injected
    assert injected["events_failed_for_good"] == expected["system_resilience"][0] > 0
    assert (
        injected["orphan_payments"] > 0 and expected["data_consistency"][0] < expected["data_consistency"][1]
    )
    if settings.require_consent:
        assert expected["consent_compliance"][0] == expected["consent_compliance"][1] > 0
    else:
        assert 0 < expected["consent_compliance"][0] < expected["consent_compliance"][1]
    if settings.sgtm_endpoint is not None:
        assert 0 < expected["attribution_accuracy"][0] < expected["attribution_accuracy"][1]
    else:
        assert expected["attribution_accuracy"][0] == 0 < expected["attribution_accuracy"][1]
    if settings.crm_enable_lead_capture:
        assert 0 < expected["crm_coverage"][0] < expected["crm_coverage"][1]
    if settings.meta_pixel_id is not None:  # Meta holds the Purchases of buyers with marketing consent
        assert meta is not None and meta[0] and 0 < meta[2] <= meta[1]
    else:
        assert meta == (False, 0, 0)


def test_a_scenario_refuses_a_database_that_already_holds_data(
    tmp_path: Path, localstripe: LocalStripe, sandbox: Sandbox
) -> None:
    settings = scenario_settings(tmp_path, localstripe, sandbox)
    with serve(settings) as base_url:
        assert httpx.post(f"{base_url}/v1/leads", json=lead_body()).status_code == 200
        env = scenario_environment(settings, base_url, localstripe, sandbox)
        with pytest.raises(ScenarioError, match="empty"):
            run_scenario(env, ScenarioSpec(seed=1, leads=5))
    assert not truth_path(settings.attribution_db_path).exists()
