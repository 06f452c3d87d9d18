"""Alerts to ATTRIBUTION_ALERT_WEBHOOK_URL: once per change of state, durable, retried, never with PII."""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psycopg

from ingest.ops.alerts import AlertMonitor
from ingest.reconcile.models import ModelParams
from ingest.reconcile.replica import publish_replica
from ingest.store.database import Database, open_database
from sandbox import Sandbox
from sandbox.alerts import AlertReceiver
from tests.conftest import make_settings, serve, store_query, wait_until
from tests.ops.conftest import ADMIN, EMAIL_DOMAIN, PHONE_DIGITS, ops_settings, pii_lead
from tests.outbox.conftest import capture

Read = Callable[..., list[tuple[Any, ...]]]

LEADS = 4


def _post_leads(client: httpx.Client, count: int, start: int = 0) -> None:
    with ThreadPoolExecutor(4) as pool:
        answers = list(
            pool.map(lambda n: client.post("/v1/leads", json=pii_lead(n)), range(start, start + count))
        )
    assert all(answer.status_code == 200 for answer in answers)


def _about(alerts: list[dict[str, Any]], kind: str, **fields: str) -> list[dict[str, Any]]:
    return [a for a in alerts if a["alert"] == kind and all(a.get(k) == v for k, v in fields.items())]


def _no_pii(alerts: list[dict[str, Any]]) -> None:
    text = json.dumps(alerts)
    assert EMAIL_DOMAIN not in text and "@" not in text and PHONE_DIGITS not in text


def _alert_rows(read_store: Read) -> list[tuple[str, str, int]]:
    rows = read_store("select alert, status, attempts from alerts order by created_at")
    return [(str(alert), str(status), int(attempts)) for alert, status, attempts in rows]


def test_one_alert_per_outage_and_one_on_recovery_while_probes_fail_between(
    tmp_path: Path, sandbox: Sandbox, receiver: AlertReceiver, store: dict[str, Any]
) -> None:
    settings = ops_settings(tmp_path, sandbox, receiver, **store)
    embedded = not store  # the embedded store publishes its own replica, on which the targets are evaluated
    outage_seconds = 2.5  # five cool-downs of 0.5 s: several half-open probes fail in between
    sandbox.set_faults("crm", fail_5xx_until=time.time() + 600)
    with serve(settings) as base_url, httpx.Client(base_url=base_url, timeout=30) as client:
        _post_leads(client, LEADS)
        wait_until(lambda: _about(receiver.alerts(), "circuit_open", destination="crm"), what="circuit_open")
        # Half-open probes go out (and fail) while the circuit stays open: wait for two of them, bounded.
        wait_until(
            lambda: sandbox.arrived("crm") >= LEADS + 2, timeout=outage_seconds * 10, what="two probes"
        )
        failed_during_outage = sandbox.arrived("crm")
        sandbox.set_faults("crm", clear=True)
        wait_until(
            lambda: _about(receiver.alerts(), "circuit_closed", destination="crm"), what="circuit_closed"
        )
        if embedded:
            wait_until(
                lambda: _about(receiver.alerts(), "target_met", metric="crm_coverage"),
                what="target met again",
            )
        time.sleep(1.0)  # anything else that was going to arrive, arrives
        alerts = receiver.alerts()

    # More failed requests than leads means half-open probes went out and failed while the circuit was open.
    assert failed_during_outage >= LEADS + 2
    circuit = [a["alert"] for a in alerts if a.get("destination") == "crm"]
    assert circuit == ["circuit_open", "circuit_closed"]
    assert not [a for a in alerts if a.get("destination") in ("mailerlite", "sgtm")]
    if embedded:
        coverage = [a["alert"] for a in alerts if a.get("metric") == "crm_coverage"]
        assert coverage == ["target_missed", "target_met"]
        missed = _about(alerts, "target_missed", metric="crm_coverage")[0]
        assert missed["numerator"] < missed["denominator"] and isinstance(missed["text"], str)
    _no_pii(alerts)


def test_an_alert_whose_receiver_is_down_then_up_arrives_once(
    tmp_path: Path, sandbox: Sandbox, receiver: AlertReceiver, store: dict[str, Any], read_store: Read
) -> None:
    settings = ops_settings(tmp_path, sandbox, receiver, **store)
    receiver.down = True
    sandbox.set_faults("crm", fail_5xx_until=time.time() + 600)
    with serve(settings) as base_url, httpx.Client(base_url=base_url, timeout=30) as client:
        _post_leads(client, LEADS)
        wait_until(lambda: receiver.attempts >= 3, what="the alert retried against a receiver that is down")
    # The API stopped with the alert still queued; it is sent after the next start, once the receiver is back.
    assert ("circuit_open", "pending") in [(a, s) for a, s, _ in _alert_rows(read_store)]
    receiver.down = False
    with serve(settings):
        wait_until(lambda: _about(receiver.alerts(), "circuit_open"), what="the queued alert")
        time.sleep(1.0)
        alerts = receiver.alerts()
    assert len(_about(alerts, "circuit_open", destination="crm")) == 1
    assert len({a["alert_id"] for a in alerts}) == len(alerts)
    sent = [row for row in _alert_rows(read_store) if row[0] == "circuit_open"]
    assert sent[0][1] == "sent" and sent[0][2] >= 4
    _no_pii(alerts)


def test_a_circuit_open_at_a_restart_is_probed_and_its_recovery_told(
    tmp_path: Path, sandbox: Sandbox, receiver: AlertReceiver, store: dict[str, Any]
) -> None:
    settings = ops_settings(tmp_path, sandbox, receiver, **store)
    sandbox.set_faults("crm", fail_5xx_until=time.time() + 600)
    with serve(settings) as base_url, httpx.Client(base_url=base_url, timeout=30) as client:
        _post_leads(client, LEADS)
        wait_until(lambda: _about(receiver.alerts(), "circuit_open"), what="circuit_open")
    sandbox.set_faults("crm", clear=True)  # the CRM recovers while the API is stopped
    with serve(settings):
        wait_until(
            lambda: _about(receiver.alerts(), "circuit_closed"), what="circuit_closed after the restart"
        )
        time.sleep(0.5)
        circuit = [a["alert"] for a in receiver.alerts() if a.get("destination") == "crm"]
    assert circuit == ["circuit_open", "circuit_closed"]


def test_deliveries_going_dead_are_summarised_not_alerted_one_by_one(
    tmp_path: Path, sandbox: Sandbox, receiver: AlertReceiver, store: dict[str, Any], read_store: Read
) -> None:
    settings = ops_settings(tmp_path, sandbox, receiver, attribution_alert_dead_window_seconds=1.5, **store)
    sandbox.set_faults(
        "crm", reject_status=400
    )  # permanent: each CRM delivery goes dead at its first attempt
    dead = 6
    with serve(settings) as base_url, httpx.Client(base_url=base_url, timeout=30) as client:
        # Deliveries dead before the monitor's first look are not news: wait until it has set its cursor.
        cursor = "select count(*) from alert_states where subject = 'deliveries_dead'"
        wait_until(lambda: read_store(cursor) == [(1,)], what="the dead-letter cursor")
        _post_leads(client, dead)

        def summarised() -> int:
            return sum(a["count"] for a in receiver.alerts("deliveries_dead"))

        wait_until(lambda: summarised() >= dead, timeout=20, what="the dead deliveries summarised")
        time.sleep(2.0)  # another window passes with nothing new: no further alert
        summaries = receiver.alerts("deliveries_dead")
    assert sum(a["count"] for a in summaries) == dead
    assert len(summaries) <= 2  # one per window (the burst may straddle two), never one per delivery
    assert all(set(a["by_destination"]) == {"crm"} for a in summaries)
    _no_pii(summaries)


def test_two_instances_alert_an_outage_once_and_its_recovery_once(
    tmp_path: Path, sandbox: Sandbox, receiver: AlertReceiver, postgres_store: dict[str, Any]
) -> None:
    settings = ops_settings(tmp_path, sandbox, receiver, **postgres_store)
    sandbox.set_faults("crm", fail_5xx_until=time.time() + 600)
    with (
        serve(settings) as first_url,
        serve(settings) as second_url,
        httpx.Client(base_url=first_url, timeout=30) as first,
        httpx.Client(base_url=second_url, timeout=30) as second,
    ):
        _post_leads(first, LEADS)
        _post_leads(second, LEADS, start=LEADS)

        def crm_open(client: httpx.Client) -> bool:
            state = client.get("/v1/admin/worker", headers=ADMIN).json()["destinations"].get("crm", {})
            return bool(state.get("breaker") not in (None, "closed"))

        # Each instance's worker met the outage: both circuits opened, one alert says so.
        wait_until(lambda: crm_open(first) and crm_open(second), what="both instances' CRM circuits open")
        wait_until(lambda: _about(receiver.alerts(), "circuit_open"), what="circuit_open")
        sandbox.set_faults("crm", clear=True)
        wait_until(lambda: not crm_open(first) and not crm_open(second), what="both circuits closed")
        wait_until(lambda: _about(receiver.alerts(), "circuit_closed"), what="circuit_closed")
        time.sleep(1.5)  # a second instance's duplicate would arrive meanwhile
        alerts = receiver.alerts()
    circuit = [a["alert"] for a in alerts if a.get("destination") == "crm"]
    assert circuit == ["circuit_open", "circuit_closed"]
    assert receiver.attempts == len(alerts), "no alert POSTed twice"
    _no_pii(alerts)


def test_two_instances_summarise_dead_deliveries_without_counting_any_twice(
    tmp_path: Path,
    sandbox: Sandbox,
    receiver: AlertReceiver,
    postgres_store: dict[str, Any],
) -> None:
    settings = ops_settings(
        tmp_path, sandbox, receiver, attribution_alert_dead_window_seconds=0.5, **postgres_store
    )
    read_store = functools.partial(store_query, settings)
    sandbox.set_faults("crm", reject_status=400)
    with (
        serve(settings) as first_url,
        serve(settings) as second_url,
        httpx.Client(base_url=first_url, timeout=30) as first,
        httpx.Client(base_url=second_url, timeout=30) as second,
    ):
        wait_until(
            lambda: (
                read_store("select count(*) from alert_states where subject = 'deliveries_dead'") == [(1,)]
            ),
            what="the dead-letter cursor",
        )
        for number in range(3):  # a burst on each instance, windows apart: several summaries, each its own
            _post_leads(first, 2, start=10 * number)
            _post_leads(second, 2, start=10 * number + 5)
            time.sleep(0.6)
        dead = 12

        def summarised() -> int:
            return sum(a["count"] for a in receiver.alerts("deliveries_dead"))

        wait_until(lambda: summarised() >= dead, timeout=20, what="the dead deliveries summarised")
        time.sleep(1.5)  # windows pass with nothing new: no further alert
        summaries = receiver.alerts("deliveries_dead")
    assert sum(a["count"] for a in summaries) == dead, "every dead delivery counted exactly once"
    assert read_store("select count(*) from deliveries where status = 'dead'") == [(dead,)]
    _no_pii(summaries)


def test_metrics_answer_503_while_postgresql_refuses_and_alerts_go_out_after(
    tmp_path: Path,
    sandbox: Sandbox,
    receiver: AlertReceiver,
    postgres_store: dict[str, Any],
) -> None:
    settings = ops_settings(tmp_path, sandbox, receiver, **postgres_store)
    read_store = functools.partial(store_query, settings)
    url = postgres_store["attribution_database_url"]
    name = url.rsplit("/", 1)[1]
    admin_url = url.rsplit("/", 1)[0] + "/postgres"
    receiver.down = True
    sandbox.set_faults("crm", fail_5xx_until=time.time() + 600)
    with serve(settings) as base_url, httpx.Client(base_url=base_url, timeout=30) as client:
        _post_leads(client, LEADS)
        wait_until(lambda: receiver.attempts >= 2, what="the circuit_open alert retried")
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f"alter database {name} with allow_connections false")
            admin.execute("select pg_terminate_backend(pid) from pg_stat_activity where datname = %s", [name])
            try:
                started = time.monotonic()
                refused = client.get("/metrics", headers=ADMIN)
                assert refused.status_code == 503 and refused.headers.get("retry-after"), refused.text
                assert time.monotonic() - started < 10, "answered, not hung"
                time.sleep(1.5)  # the sender and the dead-letter counter meet the outage too
            finally:
                admin.execute(f"alter database {name} with allow_connections true")
        receiver.down = False
        wait_until(lambda: _about(receiver.alerts(), "circuit_open"), what="the alert after the outage")
        wait_until(lambda: client.get("/metrics", headers=ADMIN).status_code == 200, what="metrics again")
        time.sleep(0.5)
        alerts = receiver.alerts()
    assert len(_about(alerts, "circuit_open", destination="crm")) == 1
    assert ("circuit_open", "sent") in [(alert, status) for alert, status, _ in _alert_rows(read_store)]


def test_target_alerts_evaluated_by_two_processes_on_postgresql_are_queued_and_sent_once(
    tmp_path: Path, sandbox: Sandbox, receiver: AlertReceiver, postgres_store: dict[str, Any]
) -> None:
    # The topology on PostgreSQL: `attribution warehouse` publishes the replica and evaluates the targets on it;
    # the API instances' senders POST what it queued. Here the copy is one published from a file whose leads never
    # reached the CRM (crm_coverage missed), and two monitors (two warehouses, say) evaluate it at the same moment.
    embedded = make_settings(tmp_path / "file", crm_webhook_url="http://127.0.0.1:9/crm")
    file_store = Database.open(embedded.attribution_db_path)
    try:
        for number in range(3):
            asyncio.run(capture(file_store, embedded, email=f"target{number}@example.com"))
        published = publish_replica(
            file_store, embedded.attribution_replica_path, ModelParams.from_settings(embedded)
        )
    finally:
        file_store.close()
    settings = ops_settings(
        tmp_path,
        sandbox,
        receiver,
        attribution_replica_path=embedded.attribution_replica_path,
        **postgres_store,
    )
    instances = [open_database(settings), open_database(settings)]
    try:
        monitors = [AlertMonitor(database, settings) for database in instances]
        with ThreadPoolExecutor(2) as pool:
            queued = list(pool.map(lambda monitor: monitor.evaluate_targets(published), monitors))
        assert [monitor.evaluate_targets(published) for monitor in monitors] == [0, 0], (
            "no change, nothing queued"
        )
    finally:
        for database in instances:
            database.close()
    missed = store_query(settings, "select subject from alert_states where state = 'missed' order by subject")
    assert ("target:crm_coverage",) in missed and sum(queued) == len(missed)
    with serve(settings):
        wait_until(
            lambda: len(receiver.alerts("target_missed")) >= len(missed), what="the target alerts sent"
        )
        time.sleep(1.0)
    sent = receiver.alerts("target_missed")
    assert sorted(f"target:{alert['metric']}" for alert in sent) == [subject for (subject,) in missed]
    assert receiver.attempts == len(receiver.alerts()), "each POSTed once"
