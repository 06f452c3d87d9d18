"""Several instances on one PostgreSQL database: each its own store connections and delivery worker, against the
sandbox fakes over loopback. Claims split the work without sending anything twice, a stopped instance's leases are
taken over once they expire, a late answer cannot overwrite the new owner's result, the MailerLite budget and the
circuit hold for all instances together, and replay works from either.

PostgreSQL only: the embedded DuckDB file admits one process."""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from ingest.core.settings import Settings
from ingest.core.vocabulary import DeliveryKind, Destination
from ingest.outbox.worker import DeliveryWorker
from ingest.store import postgres
from ingest.store.database import Database, open_database
from ingest.store.writer import StoreUnavailable
from sandbox import Sandbox
from tests.conftest import ADMIN_TOKEN, ApiProcess, lead_body
from tests.outbox.conftest import (
    FAST,
    async_wait_until,
    attempt_rows,
    capture,
    delivery_rows,
    queue,
    sandbox_settings,
    statuses,
    subscriber_requests,
)

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
def store(postgres_url: str) -> dict[str, Any]:
    """A fresh migrated PostgreSQL database (these tests need a server several instances share)."""
    postgres.migrate(postgres_url)
    return {"attribution_database_url": postgres_url}


@asynccontextmanager
async def instances(
    settings: Settings, count: int = 2
) -> AsyncIterator[list[tuple[Database, DeliveryWorker]]]:
    """`count` instances on the test's event loop, as `count` API processes would run them: each its own
    PostgresDatabase (writer connection and read pool) and DeliveryWorker, all started and ready."""
    started: list[tuple[Database, DeliveryWorker]] = []
    try:
        for _ in range(count):
            database = open_database(settings)
            worker = DeliveryWorker(database, settings)
            started.append((database, worker))
            await worker.start()
        for _, worker in started:
            await async_wait_until(lambda w=worker: w.status()["mailerlite"]["held"] is None, timeout=10)
        yield started
    finally:
        for database, worker in reversed(started):
            await worker.stop()
            database.close()


def _sent(worker: DeliveryWorker) -> int:
    return sum(lane["sent"] for lane in worker.status().values())


def _keys(sandbox: Sandbox, destination: str, *, ok_only: bool = False) -> Counter[str]:
    return Counter(
        r.headers.get("idempotency-key", r.body.get("event_id", "") if isinstance(r.body, dict) else "")
        for r in sandbox.requests(destination)  # type: ignore[arg-type]
        if not ok_only or (r.status is not None and 200 <= r.status < 300)
    )


async def test_two_workers_split_the_work_and_send_each_delivery_once_under_one_key(
    tmp_path: Path, sandbox: Sandbox, store: dict[str, Any]
) -> None:
    settings = sandbox_settings(tmp_path, sandbox, **store, crm_concurrency=4)
    leads = 40
    async with instances(settings) as [(first, worker_a), (second, worker_b)]:
        for batch in range(4):  # leads reach both instances, a batch at a time while both workers claim
            for n in range(leads // 4):
                await capture((first, second)[n % 2], settings, email=f"split{batch}-{n}@example.com")
            await asyncio.sleep(0.05)
        await async_wait_until(lambda: statuses(first) == {"delivered": 4 * leads}, timeout=30)
        rows = delivery_rows(second)
        sent_a, sent_b = _sent(worker_a), _sent(worker_b)
    assert sent_a > 0 and sent_b > 0, (sent_a, sent_b)  # both claimed a share
    assert sent_a + sent_b == 4 * leads  # and no request was made twice
    assert all(row["attempt_count"] == 1 and row["claim_token"] is None for row in rows)
    for destination in ("crm", "sgtm", "meta"):
        keys = Counter(r.headers["idempotency-key"] for r in sandbox.requests(destination))  # type: ignore[arg-type]
        assert len(keys) == leads and set(keys.values()) == {1}, destination
    assert len(subscriber_requests(sandbox)) == leads
    assert sandbox.state("crm")["duplicates"] == 0 and sandbox.state("crm")["unique"] == leads


async def test_one_delivery_per_journey_and_destination_is_in_flight_across_instances(
    tmp_path: Path, sandbox: Sandbox, store: dict[str, Any]
) -> None:
    # Three CRM updates about each person: two workers must never have two of them at the CRM at once.
    settings = sandbox_settings(tmp_path, sandbox, **store, crm_concurrency=8)
    sandbox.set_faults("crm", latency_ms=150)
    async with instances(settings) as [(first, _), (second, _)]:
        events = [await capture(first, settings, email=f"journey{n}@example.com") for n in range(6)]
        for n, (event_id, step) in enumerate(itertools.product(events, ("checkout", "paid"))):
            await queue(
                (first, second)[n % 2],
                settings,
                destination=Destination.CRM,
                kind=DeliveryKind.CONTACT_UPSERT,
                event_id=event_id,
                key_suffix=step,
                payload={"lead_status": step, "amount_cents": 12000, "currency": "eur"},
            )
        await async_wait_until(
            lambda: len(delivery_rows(first, "destination = 'crm' and status = 'delivered'")) == 18,
            timeout=30,
        )
    by_event: dict[str, list[float]] = {}
    for request in sandbox.requests("crm"):
        by_event.setdefault(request.body["event_id"], []).append(request.received_at)
    assert len(by_event) == 6
    for times in by_event.values():
        times.sort()
        assert len(times) == 3
        # Each answered after 150 ms: the next about the same person was sent only once the last was answered.
        assert min(b - a for a, b in itertools.pairwise(times)) >= 0.14, times


async def test_a_stopped_instances_leases_are_taken_over_only_once_they_expire(
    tmp_path: Path, sandbox: Sandbox, store: dict[str, Any]
) -> None:
    lease = 2.0
    settings = sandbox_settings(
        tmp_path,
        sandbox,
        **store,
        crm_concurrency=16,
        attribution_delivery_lease_seconds=lease,
        attribution_delivery_timeout_seconds=1.0,
    )
    sandbox.set_faults("crm", latency_ms=700)  # CRM answers come after the instance stopped
    leads = 8
    async with instances(settings, count=1) as [(doomed, _)]:
        for n in range(leads):
            await capture(doomed, settings, email=f"taken{n}@example.com")
        claimed_at = time.time()
        await async_wait_until(lambda: sandbox.arrived("crm") == leads)
        # The instance dies with every CRM request in flight: its writer is gone, so nothing it learns is recorded
        # (its requests still reach the CRM, as a killed process's last packets would).
        doomed.writer.stop()
        async with instances(settings, count=1) as [(survivor, _)]:
            # Starting, it released nothing: those leases might be a live instance's.
            leased = delivery_rows(survivor, "destination = 'crm' and claimed_until is not null")
            assert len(leased) == leads
            await async_wait_until(lambda: statuses(survivor) == {"delivered": 4 * leads}, timeout=30)
            crm_rows = delivery_rows(survivor, "destination = 'crm'")
            attempts = [attempt_rows(survivor, row["delivery_id"]) for row in crm_rows]
    by_key: dict[str, list[float]] = {}
    for request in sandbox.requests("crm"):
        by_key.setdefault(request.headers["idempotency-key"], []).append(request.received_at)
    assert set(by_key) == {row["idempotency_key"] for row in crm_rows} and len(by_key) == leads
    for times in by_key.values():
        # Sent by the stopped one (a request cut off as it stopped may have gone out twice), then again by the
        # survivor with the same key, not before the lease ran out.
        assert len(times) >= 2
        assert max(times) >= claimed_at + lease - 0.1
    assert sandbox.state("crm")["unique"] == leads  # the CRM holds each contact once
    assert all(row["attempt_count"] == 1 for row in crm_rows)  # each delivery finished once
    assert all([a["outcome"] for a in history] == ["delivered"] for history in attempts)


def _refused(caplog: pytest.LogCaptureFixture) -> Counter[str]:
    return Counter(
        str(getattr(r, "delivery_id", "")) for r in caplog.records if "outcome refused" in r.getMessage()
    )


def test_kill_9_of_one_serve_process_and_the_other_finishes_its_deliveries_under_the_same_keys(
    tmp_path: Path, sandbox: Sandbox, store: dict[str, Any]
) -> None:
    lease, leads = 6.0, 8
    env = (
        sandbox.env()
        | {name.upper(): str(value) for name, value in FAST.items()}
        | {
            "ATTRIBUTION_DATABASE_URL": store["attribution_database_url"],
            "ATTRIBUTION_DB_PATH": str(tmp_path / "unused.duckdb"),
            "ATTRIBUTION_ADMIN_TOKEN": ADMIN_TOKEN,
            "ATTRIBUTION_INLINE_DELIVERY_MS": "0",
            "ATTRIBUTION_DELIVERY_LEASE_SECONDS": str(lease),
            "ATTRIBUTION_DELIVERY_TIMEOUT_SECONDS": "2",
            "CRM_CONCURRENCY": "16",
        }
    )
    sandbox.set_faults("crm", latency_ms=1500)  # CRM requests are in flight at the kill
    doomed, survivor = ApiProcess(env), ApiProcess(env)
    doomed.start()
    try:
        posted_at = time.time()
        with httpx.Client(base_url=doomed.base_url, timeout=10) as client:
            for n in range(leads):
                assert client.post("/v1/leads", json=lead_body(email=f"k{n}@example.com")).status_code == 200
        _wait(lambda: sandbox.arrived("crm") == leads)
        doomed.kill()
        survivor.start()
        with httpx.Client(base_url=survivor.base_url, timeout=10) as client:
            # Its start released nothing: the killed instance's CRM leases still hold.
            assert all(d["in_flight"] for d in _deliveries(client, destination="crm"))
            _wait(lambda: len(_deliveries(client, status="delivered")) == 4 * leads, timeout=60)
            crm_rows = _deliveries(client, destination="crm")
    finally:
        survivor.stop()
        doomed.kill()
    _wait(lambda: len(sandbox.requests("crm")) == 2 * leads)  # the cut-off ones are recorded when answered
    by_key: dict[str, list[float]] = {}
    for request in sandbox.requests("crm"):
        by_key.setdefault(request.headers["idempotency-key"], []).append(request.received_at)
    assert set(by_key) == {row["idempotency_key"] for row in crm_rows} and len(by_key) == leads
    assert all(len(times) == 2 and max(times) >= posted_at + lease for times in by_key.values())
    assert sandbox.state("crm")["unique"] == leads  # none doubled at the receiver
    assert all(row["attempt_count"] == 1 for row in crm_rows)  # the cut-off send left no attempt behind


class _Paused:
    """An instance whose event loop runs in a thread of its own, so the test can freeze it (a stalled process:
    a long GC pause, a SIGSTOP, a VM migration) while another instance carries on."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="paused-instance", daemon=True)
        self.database: Database | None = None
        self.worker: DeliveryWorker | None = None

    def start(self) -> DeliveryWorker:
        self.thread.start()
        self.database = open_database(self.settings)

        async def started() -> DeliveryWorker:
            assert self.database is not None
            worker = DeliveryWorker(self.database, self.settings)
            await worker.start()
            return worker

        self.worker = asyncio.run_coroutine_threadsafe(started(), self.loop).result(10)
        return self.worker

    def freeze(self, seconds: float) -> None:
        self.loop.call_soon_threadsafe(time.sleep, seconds)

    def stop(self) -> None:
        if self.worker is not None:
            asyncio.run_coroutine_threadsafe(self.worker.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        if self.database is not None:
            self.database.close()


async def test_a_late_answer_from_an_expired_lease_cannot_overwrite_the_new_owners_result(
    tmp_path: Path, sandbox: Sandbox, store: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    lease = 2.0
    settings = sandbox_settings(
        tmp_path,
        sandbox,
        **store,
        attribution_delivery_lease_seconds=lease,
        attribution_delivery_timeout_seconds=1.5,
    )
    paused = _Paused(settings)
    worker = paused.start()
    try:
        await async_wait_until(lambda: worker.status()["mailerlite"]["held"] is None, timeout=10)
        sandbox.set_faults("crm", latency_ms=300)
        assert paused.database is not None
        event_id = await asyncio.wrap_future(
            asyncio.run_coroutine_threadsafe(capture(paused.database, settings), paused.loop)
        )
        await async_wait_until(lambda: sandbox.arrived("crm") == 1)
        paused.freeze(lease + 1.5)  # its CRM answer arrives while it is frozen, long after its lease ran out
        async with instances(settings, count=1) as [(other, _)]:
            await async_wait_until(
                lambda: delivery_rows(other, "destination = 'crm' and status = 'delivered'"), timeout=15
            )
            (taken_over,) = delivery_rows(other, "destination = 'crm'")
            crm_id = str(taken_over["delivery_id"])
            await async_wait_until(lambda: crm_id in _refused(caplog), timeout=15)
            (after,) = delivery_rows(other, "destination = 'crm'")
            history = attempt_rows(other, after["delivery_id"])
    finally:
        paused.stop()
    assert _refused(caplog)[crm_id] == 1
    assert after == taken_over  # the late answer changed nothing
    assert after["status"] == "delivered" and after["attempt_count"] == 1
    assert [a["outcome"] for a in history] == ["delivered"]
    keys = _keys(sandbox, "crm")
    assert keys == Counter({f"{event_id}:crm:contact_upsert": 2})  # one key, from both instances


async def test_the_mailerlite_budget_holds_for_two_workers_together(
    tmp_path: Path, sandbox: Sandbox, store: dict[str, Any]
) -> None:
    per_minute = (
        300  # one request every 0.2 s for all instances together; alone, two workers would send twice that
    )
    settings = sandbox_settings(
        tmp_path, sandbox, **store, mailerlite_requests_per_minute=per_minute, mailerlite_concurrency=4
    )
    leads = 15
    async with instances(settings) as [(first, worker_a), (second, worker_b)]:
        for n in range(leads):
            await capture((first, second)[n % 2], settings, email=f"budget{n}@example.com")
        await async_wait_until(
            lambda: len(delivery_rows(first, "destination = 'mailerlite' and status = 'delivered'")) == leads,
            timeout=30,
        )
        sent = (worker_a.status()["mailerlite"]["sent"], worker_b.status()["mailerlite"]["sent"])
    times = sorted(r.received_at for r in subscriber_requests(sandbox))
    assert len(times) == leads and sum(sent) == leads
    window, allowed = 1.0, per_minute / 60  # the per-minute budget, scaled to a window the test can wait for
    most = max(sum(1 for t in times if start <= t < start + window) for start in times)
    assert most <= allowed + 1, (most, times)  # +1: one request's network jitter at a window's edge
    assert times[-1] - times[0] >= (leads - 1) * 60 / per_minute - 0.3


async def test_an_outage_opens_the_circuit_for_every_instance_and_one_probe_goes_at_a_time(
    tmp_path: Path, sandbox: Sandbox, store: dict[str, Any]
) -> None:
    settings = sandbox_settings(tmp_path, sandbox, **store, crm_concurrency=2)
    cooldown = settings.attribution_circuit_breaker_cooldown_seconds
    sandbox.set_faults("crm", fail_5xx_until=time.time() + 600)
    async with instances(settings) as [(first, worker_a), (second, worker_b)]:
        for n in range(20):
            await capture((first, second)[n % 2], settings, email=f"outage{n}@example.com")
        # Whichever instance saw the outage first opened it; the other follows at its next claim.
        await async_wait_until(
            lambda: all(w.status()["crm"]["breaker"] != "closed" for w in (worker_a, worker_b)), timeout=15
        )
        opened = [w.status()["crm"]["breaker_opened"] for w in (worker_a, worker_b)]
        both_open = time.time()
        await asyncio.sleep(8 * cooldown)  # the outage goes on: probes only
        failed_while_open = sum(
            1 for r in sandbox.requests("crm") if r.status == 503 and r.received_at > both_open + 0.2
        )
        sandbox.set_faults("crm", clear=True)
        await async_wait_until(lambda: statuses(first) == {"delivered": 80}, timeout=30)
        closed = [w.status()["crm"]["breaker"] for w in (worker_a, worker_b)]
        crm_rows = delivery_rows(first, "destination = 'crm'")
    # One probe per cool-down for both instances together (each on its own would probe as often again).
    assert failed_while_open <= 8 + 2, failed_while_open
    assert max(opened) == 1  # opened once (by one, or by both at the same moment), then probes only
    failed = [r for r in sandbox.requests("crm") if r.status == 503]
    threshold = settings.attribution_circuit_breaker_threshold
    in_flight = 2 * 2 * settings.crm_concurrency  # what both instances may hold claimed when it opens
    assert len(failed) <= threshold + in_flight + 8 + 4, len(failed)
    assert closed == ["closed", "closed"]
    assert max(r["failure_count"] for r in crm_rows) < settings.dlq_max_retries
    delivered = Counter(r.headers["idempotency-key"] for r in sandbox.requests("crm") if r.status == 200)
    assert len(delivered) == 20 and set(delivered.values()) == {1}


async def test_claims_survive_the_server_dropping_every_connection(
    tmp_path: Path, sandbox: Sandbox, store: dict[str, Any]
) -> None:
    settings = sandbox_settings(tmp_path, sandbox, **store)
    url = store["attribution_database_url"]
    async with instances(settings, count=1) as [(database, worker)]:
        await capture(database, settings, email="before@example.com")
        await async_wait_until(lambda: statuses(database) == {"delivered": 4})
        with psycopg.connect(url, autocommit=True) as admin:  # what a server restart does to its clients
            admin.execute(
                "select pg_terminate_backend(pid) from pg_stat_activity "
                "where datname = current_database() and pid <> pg_backend_pid()"
            )
        await asyncio.sleep(0.3)  # a few polls meet the dropped connections
        await _capture_retrying(database, settings, "after@example.com")
        await async_wait_until(lambda: statuses(database) == {"delivered": 8}, timeout=15)
        assert worker.status()["crm"]["sent"] == 2


async def _capture_retrying(database: Database, settings: Settings, email: str) -> uuid.UUID:
    """Capture once the writer answers again (its first job after the drop may meet the dead connection)."""
    for _ in range(20):
        try:
            return await capture(database, settings, email=email)
        except StoreUnavailable:  # while the writer's connection is opened again
            await asyncio.sleep(0.1)
    raise AssertionError("the store never wrote again")


async def test_a_lead_on_another_instance_wakes_this_worker_without_waiting_for_its_poll(
    tmp_path: Path, sandbox: Sandbox, store: dict[str, Any]
) -> None:
    # The worker polls only every 5 s: what it sends sooner, the other instance's commit told it (LISTEN/NOTIFY).
    settings = sandbox_settings(tmp_path, sandbox, **store, attribution_delivery_poll_seconds=5.0)
    capturing = open_database(settings)  # an instance whose worker does not send them
    try:
        async with instances(settings, count=1) as [(sending, worker)]:
            await asyncio.sleep(0.5)  # idle: its last look found nothing
            waits = []
            for round_ in range(2):
                started = time.monotonic()
                await _capture_retrying(capturing, settings, f"woken{round_}@example.com")
                await async_wait_until(lambda r=round_: len(sandbox.requests("crm")) == r + 1, timeout=10)
                waits.append(time.monotonic() - started)
                if round_ == 0:  # the server drops every connection, the listener's too: it listens again
                    with psycopg.connect(store["attribution_database_url"], autocommit=True) as admin:
                        admin.execute(
                            "select pg_terminate_backend(pid) from pg_stat_activity "
                            "where datname = current_database() and pid <> pg_backend_pid()"
                        )
                    await async_wait_until(lambda: worker.status()["crm"]["in_flight"] == 0)
                    _drain_dropped(
                        sending
                    )  # the read pool's dropped connections (not what this test is about)
                    await asyncio.sleep(1.5)  # RELISTEN_SECONDS and a margin
    finally:
        capturing.close()
    assert all(wait < 2.0 for wait in waits), waits  # not the 5 s poll


def _drain_dropped(database: Database) -> None:
    """Read until the pool hands out a live connection (each dropped one fails once and is discarded)."""
    for _ in range(postgres.POOL_SIZE + 1):
        try:
            database.read(lambda conn: conn.execute("select 1").fetchone())
            return
        except StoreUnavailable:  # a dropped pooled connection: discarded
            continue


def test_lead_answers_still_come_from_the_capturing_instance_while_another_listens(
    sandbox: Sandbox, api_with: Callable[..., httpx.Client]
) -> None:
    env = {name.lower(): value for name, value in sandbox.env().items()}
    app_a, app_b = (api_with(**(env | FAST | {"attribution_inline_delivery_ms": 3000})) for _ in range(2))
    answers = [
        (app_a, app_b)[n % 2].post("/v1/leads", json=lead_body(email=f"inline{n}@example.com")).json()
        for n in range(6)
    ]
    # Each was woken at the other's commit too, yet the instance that captured the lead sent it (its answer waits for
    # its own sends), so every answer carries the ids MailerLite and the CRM gave.
    assert all(
        a["mailerlite"]["status"] == "delivered" and a["crm"]["status"] == "delivered" for a in answers
    )
    assert len({a["crm"]["contact_id"] for a in answers}) == 6
    assert len(subscriber_requests(sandbox)) == 6 and len(sandbox.requests("crm")) == 6


@pytest.fixture
def two_apps(
    api_with: Callable[..., httpx.Client], sandbox: Sandbox, tmp_path: Path
) -> Iterator[tuple[httpx.Client, httpx.Client]]:
    """Two served apps (each its own store connections and worker) on the one database."""
    env = {name.lower(): value for name, value in sandbox.env().items()}
    overrides = env | FAST | {"attribution_inline_delivery_ms": 0}
    yield api_with(**overrides), api_with(**overrides)


def _deliveries(api: httpx.Client, **params: Any) -> list[dict[str, Any]]:
    response = api.get("/v1/admin/deliveries", params={"limit": 1000, **params}, headers=ADMIN)
    assert response.status_code == 200, response.text
    deliveries: list[dict[str, Any]] = response.json()["deliveries"]
    return deliveries


def test_replay_works_from_either_instance_and_sends_each_once(
    sandbox: Sandbox, two_apps: tuple[httpx.Client, httpx.Client]
) -> None:
    app_a, app_b = two_apps
    sandbox.set_faults("crm", reject_status=400)
    for n in range(6):
        assert (app_a, app_b)[n % 2].post(
            "/v1/leads", json=lead_body(email=f"r{n}@example.com")
        ).status_code == 200
    _wait(lambda: len(_deliveries(app_b, status="dead")) == 6)
    dead = _deliveries(app_a, status="dead")
    sandbox.set_faults("crm", clear=True)
    dry = app_b.post("/v1/admin/deliveries/replay", json={"dry_run": True}, headers=ADMIN).json()
    assert dry == {"replayed": 6, "dry_run": True}
    one = app_b.post("/v1/admin/deliveries/replay", json={"ids": [dead[0]["delivery_id"]]}, headers=ADMIN)
    assert one.json() == {"replayed": 1, "dry_run": False}
    rest = app_a.post("/v1/admin/deliveries/replay", json={"destination": "crm"}, headers=ADMIN).json()
    assert rest == {"replayed": 5, "dry_run": False}
    again = app_b.post("/v1/admin/deliveries/replay", json={"destination": "crm"}, headers=ADMIN).json()
    assert again["replayed"] == 0  # nothing dead is left to re-queue (in flight or delivered)
    _wait(lambda: len(_deliveries(app_a, destination="crm", status="delivered")) == 6)
    delivered = Counter(r.headers["idempotency-key"] for r in sandbox.requests("crm") if r.status == 200)
    assert len(delivered) == 6 and set(delivered.values()) == {1}
    detail = app_b.get(f"/v1/admin/deliveries/{dead[0]['delivery_id']}", headers=ADMIN).json()
    assert [(a["attempt_number"], a["status_code"]) for a in detail["attempts"]] == [(1, 400), (2, 200)]
    bad = app_a.post("/v1/admin/deliveries/replay", json={"ids": ["not-a-uuid"]}, headers=ADMIN)
    assert bad.status_code == 422


def _wait(predicate: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)
