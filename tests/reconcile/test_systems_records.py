"""Reconciliation against the systems' own records: scenarios through the real API, the fakes and localstripe, whose
injected silent losses, foreign records and unseen payment must be found exactly."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import httpx
import pytest

from ingest.reconcile.models import run_data_tests
from ingest.reconcile.replica import reading
from sandbox import LocalStripe, Sandbox
from sandbox.exports import write_crm_export, write_ga4_export
from sandbox.fakes import MAILERLITE_API_KEY
from sandbox.scenario import GroundTruth, ScenarioSpec, run_scenario
from tests.conftest import ADMIN_TOKEN, serve, wait_until
from tests.reconcile.conftest import scenario_environment, scenario_settings

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
def store(engine: dict[str, Any]) -> dict[str, Any]:
    """The scenarios run on both engines: pulls, imports and repairs write the store, the models read it."""
    return engine


def read_every_system(client: httpx.Client, sandbox: Sandbox, folder: Path, *, parquet: bool = False) -> None:
    """Pull Stripe and MailerLite through the API, and import the CRM and GA4 exports of what the fakes keep."""
    response = client.post("/v1/admin/reconcile/pull", json={}, headers=ADMIN, timeout=120)
    assert response.status_code == 200, response.text
    assert {item["system"] for item in response.json()["pulled"]} == {"stripe", "mailerlite"}
    crm = write_crm_export(folder / "crm.csv", sandbox.state("crm"))
    ga4 = write_ga4_export(
        folder / ("ga4.parquet" if parquet else "ga4.csv"), sandbox.state("sgtm"), parquet=parquet
    )
    for system, path in (("crm", crm), ("ga4", ga4)):
        body = {
            "system": system,
            "file_name": path.name,
            "content_base64": base64.b64encode(path.read_bytes()).decode(),
        }
        response = client.post("/v1/admin/reconcile/import", json=body, headers=ADMIN)
        assert response.status_code == 200, response.text


def found_sets(report: dict[str, Any]) -> dict[str, Any]:
    """The reconcile JSON in the ground truth's shape."""
    found: dict[str, Any] = {
        item["system"]: {
            "missing": sorted(item["missing"]),
            "unexpected": sorted(item["unexpected"]),
            "stale": sorted([stale["event_id"], stale["field"]] for stale in item["stale"]),
        }
        for item in report["systems"]
    }
    metric = report["verified_data_consistency"]
    found["verified_data_consistency"] = {"value": [metric["numerator"], metric["denominator"]]}
    return found


# Three seeds on the embedded file; on PostgreSQL one (the store differs, the models and the scenarios do not).
@pytest.mark.parametrize(
    ("engine", "seed"),
    [("duckdb", 21), ("duckdb", 22), ("duckdb", 23), ("postgresql", 22)],
    indirect=["engine"],
)
def test_reconcile_finds_exactly_what_the_scenario_injected(
    tmp_path: Path, localstripe: LocalStripe, sandbox: Sandbox, seed: int, store: dict[str, Any]
) -> None:
    settings = scenario_settings(tmp_path, localstripe, sandbox, **store)
    with serve(settings) as base_url, httpx.Client(base_url=base_url, timeout=60) as client:
        truth = run_scenario(
            scenario_environment(settings, base_url, localstripe, sandbox), ScenarioSpec(seed=seed, leads=30)
        )
        read_every_system(client, sandbox, tmp_path, parquet=seed % 2 == 0)
        response = client.get("/v1/reconcile", headers=ADMIN)
        assert response.status_code == 200, response.text
        report = response.json()

    assert found_sets(report) == truth.systems
    if seed == 21:  # the data tests are slow to plan; once is enough
        with reading(settings, "database") as reader:
            assert run_data_tests(reader.conn) == {}
    assert GroundTruth.load(settings.attribution_db_path).systems == truth.systems
    # What was injected shows (else this test could not fail on a model that finds nothing).
    injected = truth.injected
    assert injected["mailerlite_silent_losses"] > 0 and injected["crm_silent_losses"] > 0
    assert truth.systems["mailerlite"]["missing"] and truth.systems["crm"]["missing"]
    assert truth.systems["mailerlite"]["stale"] and truth.systems["stripe"]["missing"]
    assert all(truth.systems[name]["unexpected"] for name in ("stripe", "mailerlite", "crm", "ga4"))
    metric = report["verified_data_consistency"]
    assert metric["verified_systems"] == ["crm", "ga4", "mailerlite", "stripe"] and not metric["met"]


def _session_of(client: httpx.Client, event_id: str) -> str:
    listed = client.get(
        "/v1/admin/deliveries", params={"event_id": event_id, "limit": 1}, headers=ADMIN
    ).json()
    return str(listed["deliveries"][0]["user_session_id"])


def _settled(client: httpx.Client) -> bool:
    return all(
        not client.get("/v1/admin/deliveries", params={"status": status, "limit": 1}, headers=ADMIN).json()[
            "deliveries"
        ]
        for status in ("pending", "retrying")
    )


def _deliveries(client: httpx.Client) -> int:
    return int(client.get("/v1/admin/status", headers=ADMIN).json()["tables"]["deliveries"])


def test_repair_then_a_fresh_pull_shows_none_missing_and_never_sends_without_consent(
    tmp_path: Path, localstripe: LocalStripe, sandbox: Sandbox, store: dict[str, Any]
) -> None:
    settings = scenario_settings(tmp_path, localstripe, sandbox, **store)
    with serve(settings) as base_url, httpx.Client(base_url=base_url, timeout=60) as client:
        truth = run_scenario(
            scenario_environment(settings, base_url, localstripe, sandbox), ScenarioSpec(seed=25, leads=30)
        )
        read_every_system(client, sandbox, tmp_path)
        lost_purchase = truth.systems["ga4"]["missing"][0]
        # The buyer withdraws analytics consent: GA4 still misses the purchase, but it may not be sent now.
        withdrawal = {
            "user_session_id": _session_of(client, lost_purchase),
            "event_id": lost_purchase,
            "marketing_consent": False,
            "analytics_consent": False,
            "consent_method": "modal",
            "consent_version": "1.0",
        }
        assert client.post("/v1/consent", json=withdrawal).status_code == 200
        wait_until(lambda: _settled(client), what="the withdrawal's unsubscribe")
        # Someone whose MailerLite record is stale unsubscribes there: the repair updates the fields, never the status.
        stale_journey = truth.systems["mailerlite"]["stale"][0][0]
        subscribers = sandbox.state("mailerlite")["subscribers"]
        [stale_email] = [e for e, s in subscribers.items() if s["fields"].get("event_id") == stale_journey]
        unsubscribe = {"email": stale_email, "status": "unsubscribed"}
        answer = httpx.post(
            f"{sandbox.mailerlite_url}/api/subscribers",
            json=unsubscribe,
            headers={"Authorization": f"Bearer {MAILERLITE_API_KEY}"},
            timeout=10,
        )
        assert answer.status_code == 200, answer.text
        before = _deliveries(client)

        dry = client.post("/v1/admin/reconcile/repair", json={"dry_run": True}, headers=ADMIN).json()
        assert dry["dry_run"] and dry["queued"] and all(item["delivery_id"] is None for item in dry["queued"])
        assert _deliveries(client) == before, "a dry run queues nothing"

        repaired = client.post("/v1/admin/reconcile/repair", json={}, headers=ADMIN).json()
        assert [(i["system"], i["event_id"]) for i in repaired["queued"]] == [
            (i["system"], i["event_id"]) for i in dry["queued"]
        ], "the dry run listed exactly what goes"
        queued = {(item["system"], item["event_id"]) for item in repaired["queued"]}
        expected = {
            (system, journey)
            for system in ("mailerlite", "crm", "ga4")
            for journey in truth.systems[system]["missing"]
            + [pair[0] for pair in truth.systems[system]["stale"]]
            if journey != lost_purchase or system == "crm"
        }
        assert queued == expected
        refused = {(item["system"], item["event_id"]): item["reason"] for item in repaired["not_repaired"]}
        assert "no analytics consent in force now" in refused[("ga4", lost_purchase)]
        assert all(("stripe", journey) in refused for journey in truth.systems["stripe"]["missing"])
        assert _deliveries(client) == before + len(repaired["queued"]), "fresh deliveries; the old rows stay"

        again = client.post("/v1/admin/reconcile/repair", json={}, headers=ADMIN).json()
        assert again["queued"] == [], "nothing queued twice before the records are read again"

        wait_until(lambda: _settled(client), timeout=60, what="the repairs to be sent")
        read_every_system(client, sandbox, tmp_path)
        report = client.get("/v1/reconcile", headers=ADMIN).json()

    assert sandbox.state("mailerlite")["subscribers"][stale_email]["status"] == "unsubscribed"
    after = found_sets(report)
    assert after["mailerlite"]["missing"] == after["crm"]["missing"] == []
    assert after["mailerlite"]["stale"] == []
    assert after["ga4"]["missing"] == [lost_purchase], "the purchase without consent was never sent"
    assert after["stripe"] == truth.systems["stripe"], "Stripe is reported, never written"
    sent = [
        event for event in sandbox.state("sgtm")["events"] if event["params"].get("event_id") == lost_purchase
    ]
    assert [event["name"] for event in sent if event["name"] == "purchase"] == []
