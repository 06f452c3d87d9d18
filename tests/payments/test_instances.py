"""Stripe with several instances on one PostgreSQL database: one event delivered to two of them at once, first clicks
on two of them, two syncs at once, and an instance that dies holding a lock."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import psycopg
import pytest

from ingest.core.clock import utcnow
from ingest.payments import repository as payments_repository
from ingest.payments.events import parse_event
from ingest.payments.webhooks import EventJob, EventOutcome, receive_events_sync
from ingest.store import postgres
from ingest.store.postgres import PostgresDatabase
from sandbox import LocalStripe, Sandbox
from tests.conftest import ADMIN_TOKEN, ApiProcess, free_port, make_settings, wait_until
from tests.leads.test_instances import at_once
from tests.payments import events
from tests.payments.conftest import PRICE_CENTS, RunningApi, serve_app, stripe_settings

ON_POSTGRES = pytest.mark.parametrize("engine", ["postgresql"], indirect=True)
# The delivery worker is the outbox's (tested there); here what the Stripe side commits is what matters.
NO_WORKER = {"attribution_delivery_worker": False}
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
def two_apps(
    tmp_path: Path, localstripe: LocalStripe, sandbox: Sandbox, store: dict[str, Any]
) -> Iterator[tuple[RunningApi, RunningApi]]:
    """Two served instances of the app on the test's one database."""

    def settings(name: str) -> Any:
        (tmp_path / name).mkdir()
        return stripe_settings(tmp_path / name, localstripe, sandbox, **store, **NO_WORKER)

    with serve_app(settings("one")) as one, serve_app(settings("two")) as two:
        yield one, two


def _payment(api: RunningApi, payment_intent_id: str) -> dict[str, Any]:
    def read(conn: Any) -> dict[str, Any] | None:
        return payments_repository.get_payment(conn, payment_intent_id)

    payment = api.database.read(read)
    assert payment is not None, f"no payment {payment_intent_id}"
    return payment


def _deliver(api: RunningApi, text: str, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(api.webhook_url, content=text, headers=headers, timeout=30)


def _url(api: RunningApi) -> str:
    return str(api.settings.attribution_database_url.get_secret_value())  # type: ignore[union-attr]


@ON_POSTGRES
def test_one_event_delivered_to_two_instances_at_once_is_processed_once(
    two_apps: tuple[RunningApi, RunningApi],
) -> None:
    one, two = two_apps
    secret = one.settings.stripe_webhook_secrets()[0]
    rounds = 15
    for _ in range(rounds):
        event_id = one.create_lead()
        text, headers = events.signed(events.succeeded(events.new_id("pi"), event_id), secret)

        answers = at_once(lambda: _deliver(one, text, headers), lambda: _deliver(two, text, headers))

        assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
        assert sorted(a.json()["duplicate"] for a in answers) == [False, True]
        assert {a.json()["status"] for a in answers} == {"processed"}
    assert one.rows("select status, processing_attempts, count(*) from stripe_events group by 1, 2") == [
        ("processed", 1, rounds)
    ]
    assert two.rows("select status, count(*) from payments group by 1") == [("succeeded", rounds)]
    assert two.rows("select status, count(*) from leads group by 1") == [("paid", rounds)]
    # Each journey's purchase once per destination, and one paid state for the CRM and MailerLite.
    assert sorted(
        one.rows(
            "select destination, kind, count(*) from deliveries where kind <> 'generate_lead' group by 1, 2"
        )
    ) == [
        ("crm", "contact_upsert", rounds * 2),  # the lead's own, and the paid one
        ("mailerlite", "subscriber_upsert", rounds * 2),
        ("meta", "purchase", rounds),
        ("sgtm", "purchase", rounds),
    ]
    malformed = httpx.post(one.webhook_url, content="{not json", headers=headers, timeout=30)
    assert malformed.status_code == 400


@ON_POSTGRES
def test_changes_of_one_payment_on_two_instances_at_once_keep_every_state(
    two_apps: tuple[RunningApi, RunningApi],
) -> None:
    one, two = two_apps
    secret = one.settings.stripe_webhook_secrets()[0]
    for _ in range(8):
        event_id = one.create_lead()
        checkout = one.client.post("/v1/payment-intents", json={"event_id": str(event_id)})
        pi = checkout.json()["payment_intent_id"]  # the payment is stored, open: each change updates its row
        success = events.succeeded(pi, event_id)
        copy = success | {"id": events.new_id("evt")}  # Stripe's second Event object for the same change
        refund = events.refunded(pi, charge_id=success["data"]["object"]["latest_charge"])
        sent = [events.signed(body, secret) for body in (success, copy, refund)]

        answers = at_once(
            lambda: _deliver(one, *sent[0]), lambda: _deliver(two, *sent[1]), lambda: _deliver(one, *sent[2])
        )

        assert [a.status_code for a in answers] == [200, 200, 200], [a.text for a in answers]
        statuses = sorted(a.json()["status"] for a in answers[:2])
        assert statuses == ["duplicate", "processed"]  # one change, processed once whichever instance won
        payment = _payment(two, pi)
        # Never moved back by a change computed from the row as it was before the other instance's commit.
        assert (payment["status"], payment["refunded_cents"], payment["amount_cents"]) == (
            "refunded", PRICE_CENTS, PRICE_CENTS,
        )  # fmt: skip
        assert payment["succeeded_at"] is not None and payment["refunded_at"] is not None
        assert one.one("select status from leads where event_id = ?", [event_id]) == "refunded"
        kinds = one.rows(
            "select kind, count(*) from deliveries where destination = 'sgtm' and event_id = ? "
            "and kind <> 'generate_lead' group by 1 order by 1",
            [event_id],
        )
        assert kinds == [("purchase", 1), ("refund", 1)]
    processed = one.rows(
        "select event_type, count(*) from stripe_events where status = 'processed' group by 1"
    )
    assert sorted(processed) == [("charge.refunded", 8), ("payment_intent.succeeded", 8)]


def _all_intents_for(localstripe: LocalStripe, event_id: UUID) -> list[tuple[str, str]]:
    """Every PaymentIntent localstripe holds whose metadata names this lead, canceled or not."""
    listed = localstripe.client().v1.payment_intents.list(params={"limit": 100}).auto_paging_iter()
    return [(pi.id, pi.status) for pi in listed if pi.metadata.to_dict().get("event_id") == str(event_id)]


@ON_POSTGRES
def test_first_clicks_on_two_instances_create_one_payment_intent(
    two_apps: tuple[RunningApi, RunningApi], localstripe: LocalStripe
) -> None:
    one, two = two_apps
    for _ in range(6):
        event_id = one.create_lead()
        body = {"event_id": str(event_id)}
        clicks = [
            lambda u=f"{api.client.base_url}/v1/payment-intents", b=body: httpx.post(u, json=b, timeout=30)
            for api in (one, two, one, two, one, two)
        ]

        answers = at_once(*clicks)

        assert {a.status_code for a in answers} == {200}, [a.text for a in answers]
        (intent_id,) = {a.json()["payment_intent_id"] for a in answers}
        # Not even a second one created and cancelled: the instances waited for each other before Stripe.
        assert _all_intents_for(localstripe, event_id) == [(intent_id, "requires_payment_method")]
        assert one.one("select payment_intent_id from leads where event_id = ?", [event_id]) == intent_id
        assert two.one("select count(*) from payments where event_id = ?", [event_id]) == 1
    unknown = two.client.post(
        "/v1/payment-intents", json={"event_id": "00000000-0000-4000-8000-000000000000"}
    )
    assert unknown.status_code == 404


def _hold_lock(url: str, namespace: int, name: str) -> psycopg.Connection[Any]:
    """Another instance mid-way: a connection whose open transaction holds the advisory lock on `name`."""
    holder = psycopg.connect(url)
    holder.execute("select pg_advisory_xact_lock(%s, hashtext(%s))", [namespace, name])
    return holder


def _die(url: str, holder: psycopg.Connection[Any]) -> None:
    """The holding instance dies (kill -9): the server ends its session, and with it the transaction's locks."""
    pid = holder.info.backend_pid
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute("select pg_terminate_backend(%s)", [pid])
        # The server ends the session asynchronously: its locks go when the backend has exited.
        wait_until(
            lambda: (
                admin.execute("select count(*) from pg_stat_activity where pid = %s", [pid]).fetchone()
                == (0,)
            ),
            what="the dead instance's session gone",
            timeout=10,
        )
    holder.close()


@ON_POSTGRES
def test_a_click_waits_for_an_instance_creating_the_intent_and_goes_on_when_it_dies(
    two_apps: tuple[RunningApi, RunningApi], localstripe: LocalStripe
) -> None:
    one, two = two_apps
    event_id = one.create_lead()
    url = _url(one)
    holder = _hold_lock(url, payments_repository.CHECKOUT_LOCKS, str(event_id))
    with ThreadPoolExecutor(max_workers=1) as pool:
        click = pool.submit(two.client.post, "/v1/payment-intents", json={"event_id": str(event_id)})
        time.sleep(1.0)
        assert not click.done()  # waiting on the other instance, not creating a second PaymentIntent
        _die(url, holder)
        answer = click.result(timeout=30)
    assert answer.status_code == 200, answer.text
    assert _all_intents_for(localstripe, event_id) == [
        (answer.json()["payment_intent_id"], "requires_payment_method")
    ]


@ON_POSTGRES
def test_an_event_held_by_an_instance_that_dies_is_processed_by_the_next(
    two_apps: tuple[RunningApi, RunningApi],
) -> None:
    one, two = two_apps
    event_id = one.create_lead()
    body = events.succeeded(events.new_id("pi"), event_id)
    url = _url(one)
    holder = _hold_lock(url, payments_repository.STRIPE_LOCKS, body["id"])
    with ThreadPoolExecutor(max_workers=1) as pool:
        delivery = pool.submit(two.post_event, body)
        time.sleep(1.0)
        assert not delivery.done()
        _die(url, holder)
        answer = delivery.result(timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"received": True, "duplicate": False, "status": "processed"}
    assert one.post_event(body).json()["duplicate"] is True  # Stripe's retry, on the other instance
    assert one.one("select status from leads where event_id = ?", [event_id]) == "paid"


@pytest.fixture
def instances(postgres_url: str) -> Iterator[tuple[PostgresDatabase, PostgresDatabase]]:
    """Two instances' stores on one migrated database, each with its own writer."""
    postgres.migrate(postgres_url)
    first, second = PostgresDatabase.connect(postgres_url), PostgresDatabase.connect(postgres_url)
    try:
        yield first, second
    finally:
        first.close()
        second.close()


def test_the_inbox_alone_processes_a_backfill_run_on_two_instances_once(
    instances: tuple[PostgresDatabase, PostgresDatabase], tmp_path: Path
) -> None:
    """What makes two syncs at once safe even without the sync lock: the same events fed to both writers."""
    first, second = instances
    settings = make_settings(tmp_path, product_price_cents=PRICE_CENTS)
    bodies = [events.succeeded(events.new_id("pi")) for _ in range(60)]
    bodies += [events.refunded(body["data"]["object"]["id"]) for body in bodies[:20]]

    def backfill(database: PostgresDatabase) -> list[Any]:
        jobs = [EventJob(parse_event(json.dumps(b)), "sync", utcnow(), settings) for b in bodies]
        return list(receive_events_sync(database, jobs))

    mine, theirs = at_once(lambda: backfill(first), lambda: backfill(second))

    assert all(isinstance(outcome, EventOutcome) for outcome in mine + theirs), mine + theirs
    for a, b in zip(mine, theirs, strict=True):
        assert sorted([a.duplicate, b.duplicate]) == [False, True]
    rows = first.read(
        lambda conn: conn.execute(
            "select status, processing_attempts, count(*) from stripe_events group by 1, 2"
        ).fetchall()
    )
    assert rows == [("processed", 1, len(bodies))]
    statuses = second.read(
        lambda conn: conn.execute("select status, count(*) from payments group by 1 order by 1").fetchall()
    )
    assert statuses == [("refunded", 20), ("succeeded", 40)]


def _pay(localstripe: LocalStripe, api: RunningApi) -> UUID:
    """A lead pays on localstripe while no webhook reaches us (what a sync recovers)."""
    event_id = api.create_lead()
    intent = api.client.post("/v1/payment-intents", json={"event_id": str(event_id)}).json()[
        "payment_intent_id"
    ]
    stripe = localstripe.client()
    stripe.v1.payment_intents.update(intent, params={"payment_method": "pm_card_visa"})
    assert stripe.v1.payment_intents.confirm(intent).status == "succeeded"
    return event_id


DEAD_URL = f"http://127.0.0.1:{free_port()}/v1/webhooks/stripe"


@ON_POSTGRES
def test_a_sync_while_another_instance_syncs_is_refused_until_that_one_ends(
    two_apps: tuple[RunningApi, RunningApi], localstripe: LocalStripe
) -> None:
    one, two = two_apps
    localstripe.flush()
    localstripe.register_webhook("attribution-tests", DEAD_URL, localstripe.webhook_secret)
    event_id = _pay(localstripe, one)
    url = _url(one)
    holder = _hold_lock(url, payments_repository.SYNC_LOCKS, "events")

    refused = two.client.post("/v1/admin/sync/stripe", headers=ADMIN)

    assert refused.status_code == 409, refused.text
    assert "another instance" in refused.json()["message"]
    assert two.one("select count(*) from stripe_events") == 0
    malformed = two.client.post("/v1/admin/sync/stripe", json={"since": "yesterday"}, headers=ADMIN)
    assert malformed.status_code == 422
    _die(url, holder)  # the syncing instance died: its lock went with it
    report = two.client.post("/v1/admin/sync/stripe", headers=ADMIN)
    assert report.status_code == 200, report.text
    assert (report.json()["seen"] >= 1, report.json()["processed"], report.json()["failed"]) == (True, 1, 0)
    assert one.one("select status from leads where event_id = ?", [event_id]) == "paid"


@ON_POSTGRES
def test_two_instance_processes_syncing_at_once_process_each_event_once(
    two_apps: tuple[RunningApi, RunningApi], localstripe: LocalStripe, tmp_path: Path
) -> None:
    one, _ = two_apps
    localstripe.flush()
    localstripe.register_webhook("attribution-tests", DEAD_URL, localstripe.webhook_secret)
    paid = [_pay(localstripe, one) for _ in range(4)]
    env = {
        **localstripe.env(),
        "ATTRIBUTION_DATABASE_URL": _url(one),
        "ATTRIBUTION_ADMIN_TOKEN": ADMIN_TOKEN,
        "ATTRIBUTION_DELIVERY_WORKER": "false",
        "ATTRIBUTION_RATE_LIMIT_PER_MINUTE": "0",
        "ATTRIBUTION_DB_PATH": str(tmp_path / "unused.duckdb"),
        "ATTRIBUTION_REPLICA_PATH": str(tmp_path / "unused.replica.duckdb"),
        "PRODUCT_PRICE_CENTS": str(PRICE_CENTS),
    }
    processes = [ApiProcess(env), ApiProcess(env)]  # two `attribution serve` on the one database
    try:
        for process in processes:
            process.start()
        answers = at_once(
            *(
                lambda u=f"{p.base_url}/v1/admin/sync/stripe": httpx.post(u, headers=ADMIN, timeout=60)
                for p in processes
            )
        )
    finally:
        for process in processes:
            process.stop()

    assert {a.status_code for a in answers} <= {200, 409}, [a.text for a in answers]
    reports = [a.json() for a in answers if a.status_code == 200]
    assert reports, [a.text for a in answers]
    assert sum(report["processed"] for report in reports) == len(paid)  # whichever ran, each event once
    assert sum(report["failed"] for report in reports) == 0
    assert one.rows(
        "select processing_attempts, count(*) from stripe_events where status = 'processed' group by 1"
    ) == [(1, len(paid))]
    for event_id in paid:
        assert one.one("select status from leads where event_id = ?", [event_id]) == "paid"
