"""The alert queue when several instances share one store: a change alerts once, a dead-letter window is
summarised once, and an alert is POSTed by one sender, whose outcome alone is recorded."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ingest.core.clock import utcnow
from ingest.core.settings import Settings
from ingest.core.vocabulary import DeliveryKind, DeliveryStatus, Destination
from ingest.ops.alerts import AlertMonitor
from ingest.ops.messages import circuit_alert
from ingest.ops.repository import (
    AlertClaim,
    AlertOutcome,
    AlertStatus,
    DeadCounted,
    Observation,
    Observed,
    alert_states,
    claim_alerts,
    dead_cursor,
    next_alert,
    record_alert_outcomes,
    record_dead_counted,
    record_observations,
)
from ingest.outbox.gate import ConsentState
from ingest.outbox.planning import plan_delivery
from ingest.store.database import Database, open_database
from ingest.store.rows import insert_rows
from ingest.store.writer import BatchHandler
from sandbox.alerts import AlertReceiver
from tests.conftest import make_settings


@pytest.fixture
def instances(settings: Settings) -> Iterator[tuple[Database, Database]]:
    """Two instances' stores on one database: PostgreSQL takes two; the embedded file has one writer, shared."""
    first = open_database(settings)
    second = open_database(settings) if settings.attribution_database_url is not None else first
    try:
        yield first, second
    finally:
        if second is not first:
            second.close()
        first.close()


def _both_at_once(
    instances: tuple[Database, Database], handler: BatchHandler[Any, Any], items: Sequence[Any]
) -> list[Any]:
    """Submit items[0] through one instance and items[1] through the other at the same moment; on PostgreSQL each
    writer's transaction waits for the other's to have started, so both read the store before either commits."""
    assert len(items) == 2
    separate = instances[0] is not instances[1]
    barrier = threading.Barrier(len(items)) if separate else None

    def racing(conn: Any, batch: Sequence[Any]) -> Sequence[Any]:
        if barrier is not None:
            conn.execute("select 1")  # the transaction's snapshot is taken before the other commits
            barrier.wait(timeout=10)
        return handler(conn, batch)

    with ThreadPoolExecutor(len(items)) as pool:
        futures = [
            pool.submit(instances[index % 2].writer.submit_sync, racing, item)
            for index, item in enumerate(items)
        ]
        return [future.result(timeout=30) for future in futures]


def _circuit(state: str, now: datetime) -> Observed:
    opened = state == "open"
    observation = Observation(
        "circuit:crm", state, "closed", "circuit_open" if opened else "circuit_closed",
        circuit_alert(Destination.CRM, opened, now),
    )  # fmt: skip
    return Observed((observation,), now, True)


def _alerts(database: Database) -> list[tuple[str, str]]:
    return database.read(
        lambda conn: conn.execute("select alert, status from alerts order by created_at, alert").fetchall()
    )


def test_a_change_two_instances_record_at_once_is_alerted_once(instances: tuple[Database, Database]) -> None:
    now = utcnow()
    opened = _both_at_once(instances, record_observations, [_circuit("open", now), _circuit("open", now)])
    assert sum(opened) == 1
    again = _both_at_once(instances, record_observations, [_circuit("open", now), _circuit("open", now)])
    assert sum(again) == 0, "no change, no alert"
    later = now + timedelta(seconds=1)
    closed = _both_at_once(
        instances, record_observations, [_circuit("closed", later), _circuit("closed", later)]
    )
    assert sum(closed) == 1
    assert _alerts(instances[0]) == [("circuit_open", "pending"), ("circuit_closed", "pending")]
    assert instances[1].read(alert_states) == {"circuit:crm": "closed"}


def _dead_deliveries(settings: Settings, database: Database, count: int, at: datetime) -> None:
    rows = []
    for _ in range(count):
        delivery = plan_delivery(
            settings, destination=Destination.CRM, kind=DeliveryKind.CONTACT_UPSERT, event_id=uuid.uuid4(),
            user_session_id=uuid.uuid4(), consent=ConsentState(marketing=True, analytics=True), now=at,
        )  # fmt: skip
        rows.append(dataclasses.replace(delivery, status=DeliveryStatus.DEAD, updated_at=at).as_row())

    def insert(conn: Any, items: Sequence[None]) -> list[None]:
        insert_rows(conn, "deliveries", rows)
        return [None for _ in items]

    database.writer.submit_sync(insert, None)


def test_two_monitors_summarise_a_dead_window_once(
    instances: tuple[Database, Database], tmp_path: Path, store: dict[str, Any], receiver: AlertReceiver
) -> None:
    settings = make_settings(
        tmp_path,
        **store,
        crm_webhook_url="http://127.0.0.1:9/crm",
        attribution_alert_webhook_url=receiver.url,
    )
    clock = [utcnow()]
    monitors = [AlertMonitor(database, settings, clock=lambda: clock[0]) for database in instances]
    with ThreadPoolExecutor(2) as pool:
        assert list(pool.map(lambda monitor: monitor.check_dead(), monitors)) == [0, 0]  # the cursor is set
    start = instances[0].read(dead_cursor)
    assert start is not None
    _dead_deliveries(settings, instances[0], 5, start + timedelta(seconds=1))
    clock[0] = start + timedelta(seconds=2)
    with ThreadPoolExecutor(2) as pool:
        summaries = list(pool.map(lambda monitor: monitor.check_dead(), monitors))
    assert sorted(summaries) == [0, 1], "one monitor summarised the window"
    assert [alert for alert, _ in _alerts(instances[1])] == ["deliveries_dead"]
    assert instances[1].read(dead_cursor) == start + timedelta(seconds=1)
    assert [monitor.check_dead() for monitor in monitors] == [0, 0], "nothing new"


def test_two_monitors_racing_one_dead_window_queue_one_summary(instances: tuple[Database, Database]) -> None:
    now = utcnow()
    _both_at_once(instances, record_dead_counted, [_dead_counted(now, None, None)] * 2)
    payloads = [{"alert": "deliveries_dead", "alert_id": str(uuid.uuid4()), "count": 3} for _ in range(2)]
    later = now + timedelta(seconds=5)
    queued = _both_at_once(
        instances, record_dead_counted, [_dead_counted(later, payload, now) for payload in payloads]
    )
    assert sorted(queued) == [0, 1]
    assert instances[0].read(dead_cursor) == later
    stale = _dead_counted(later + timedelta(seconds=5), payloads[0], now)  # read the cursor before it moved
    assert instances[1].writer.submit_sync(record_dead_counted, stale) == 0
    assert len(_alerts(instances[0])) == 1


def _dead_counted(
    cursor_at: datetime, payload: dict[str, Any] | None, previous: datetime | None
) -> DeadCounted:
    return DeadCounted(cursor_at, payload, cursor_at, True, previous=previous)


def _queue_one(database: Database, now: datetime) -> uuid.UUID:
    assert database.writer.submit_sync(record_observations, _circuit("open", now)) == 1
    alert = database.read(next_alert)
    assert alert is not None
    return alert.alert_id


def test_an_alert_is_claimed_by_one_sender_and_only_its_outcome_counts(
    instances: tuple[Database, Database],
) -> None:
    now = utcnow()
    alert_id = _queue_one(instances[0], now)
    claims = [AlertClaim(alert_id, uuid.uuid4(), now, now + timedelta(seconds=30)) for _ in range(2)]
    taken = [item for item in _both_at_once(instances, claim_alerts, claims) if item is not None]
    assert len(taken) == 1 and taken[0].claim_id in {claim.claim_id for claim in claims}
    waiting = instances[1].read(next_alert)
    assert waiting is not None and waiting.due_at() == now + timedelta(seconds=30), "the next sender waits"

    other = next(claim for claim in claims if claim.claim_id != taken[0].claim_id)
    lost = AlertOutcome(alert_id, AlertStatus.SENT, None, now, now, other.claim_id)
    assert instances[1].writer.submit_sync(record_alert_outcomes, lost) is False
    sent = AlertOutcome(alert_id, AlertStatus.SENT, None, now, now, taken[0].claim_id)
    assert instances[0].writer.submit_sync(record_alert_outcomes, sent) is True
    assert _alerts(instances[1]) == [("circuit_open", "sent")]
    assert instances[0].read(next_alert) is None


def test_a_lease_that_ran_out_is_taken_over_and_the_late_answer_ignored(
    instances: tuple[Database, Database],
) -> None:
    now = utcnow()
    alert_id = _queue_one(instances[0], now)
    died = AlertClaim(alert_id, uuid.uuid4(), now, now + timedelta(seconds=30))
    assert instances[0].writer.submit_sync(claim_alerts, died) is not None
    early = AlertClaim(alert_id, uuid.uuid4(), now + timedelta(seconds=10), now + timedelta(seconds=40))
    assert instances[1].writer.submit_sync(claim_alerts, early) is None, "the lease still runs"
    later = now + timedelta(seconds=31)
    takeover = AlertClaim(alert_id, uuid.uuid4(), later, later + timedelta(seconds=30))
    taken = instances[1].writer.submit_sync(claim_alerts, takeover)
    assert taken is not None and taken.claim_id == takeover.claim_id and taken.attempts == 0
    late = AlertOutcome(
        alert_id, AlertStatus.PENDING, "ConnectTimeout", later, later + timedelta(seconds=9), died.claim_id
    )
    assert instances[0].writer.submit_sync(record_alert_outcomes, late) is False, "the dead owner's answer"
    sent = AlertOutcome(alert_id, AlertStatus.SENT, None, later, later, takeover.claim_id)
    assert instances[1].writer.submit_sync(record_alert_outcomes, sent) is True
    rows = instances[0].read(
        lambda conn: conn.execute("select status, attempts, lease_until, claim_id from alerts").fetchall()
    )
    assert rows == [("sent", 1, None, None)]


def test_a_claim_for_an_alert_not_due_or_unknown_takes_nothing(instances: tuple[Database, Database]) -> None:
    now = utcnow()
    alert_id = _queue_one(instances[0], now)
    too_early = AlertClaim(alert_id, uuid.uuid4(), now - timedelta(seconds=1), now + timedelta(seconds=30))
    assert instances[0].writer.submit_sync(claim_alerts, too_early) is None
    unknown = AlertClaim(uuid.uuid4(), uuid.uuid4(), now, now + timedelta(seconds=30))
    assert instances[1].writer.submit_sync(claim_alerts, unknown) is None
    assert instances[0].read(next_alert) is not None


async def test_two_senders_post_each_alert_once_in_order_through_an_outage(
    instances: tuple[Database, Database], tmp_path: Path, store: dict[str, Any], receiver: AlertReceiver
) -> None:
    settings = make_settings(
        tmp_path,
        **store,
        attribution_alert_webhook_url=receiver.url,
        attribution_alert_max_backoff_seconds=0.2,
        attribution_alert_timeout_seconds=2.0,
    )
    receiver.down = True
    monitors = [AlertMonitor(database, settings) for database in instances]
    for monitor in monitors:
        await monitor.start()
    try:
        start = utcnow()
        for step in range(6):  # the circuit opens and closes three times: six alerts, in this order
            state = "open" if step % 2 == 0 else "closed"
            await instances[step % 2].writer.submit(
                record_observations, _circuit(state, start + timedelta(milliseconds=step))
            )
        await _wait(lambda: receiver.attempts >= 4, "the senders retrying while the receiver is down")
        receiver.down = False
        await _wait(lambda: len(receiver.alerts()) >= 6, "the six alerts")
        await asyncio.sleep(1.0)  # a duplicate would arrive meanwhile
    finally:
        for monitor in monitors:
            await monitor.stop()
    alerts = receiver.alerts()
    assert [alert["alert"] for alert in alerts] == ["circuit_open", "circuit_closed"] * 3
    assert len({alert["alert_id"] for alert in alerts}) == 6
    assert all(status == "sent" for _, status in _alerts(instances[0]))


async def _wait(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)
