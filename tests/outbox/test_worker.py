"""The delivery worker against the sandbox fakes over real loopback HTTP, on each engine."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

from ingest.core.clock import utcnow
from ingest.core.vocabulary import DeliveryKind, Destination
from ingest.leads.consent import RequestContext, consent_row, record_consents
from ingest.leads.schemas import ConsentIn
from ingest.outbox.leases import ClaimRequest, claim_deliveries
from ingest.outbox.replay import DeliveryFilter, ReplayRequest, replay_deliveries
from ingest.store.database import open_database
from sandbox import Sandbox
from tests.outbox.conftest import (
    async_wait_until,
    attempt_rows,
    capture,
    delivery_rows,
    insert,
    planned,
    queue,
    running_worker,
    sandbox_settings,
    statuses,
    subscriber_requests,
)


def _keys(sandbox: Sandbox, dest: str, *, ok_only: bool = False) -> Counter[str]:
    return Counter(
        r.headers.get("idempotency-key", "")
        for r in sandbox.requests(dest)  # type: ignore[arg-type]
        if not ok_only or (r.status is not None and 200 <= r.status < 300)
    )


async def test_a_lead_reaches_each_destination_once_and_the_ids_land_on_the_lead(
    tmp_path: Path, sandbox: Sandbox, store: dict[str, Any]
) -> None:
    settings = sandbox_settings(tmp_path, sandbox, **store)
    async with running_worker(settings) as (database, worker):
        event_id = await capture(database, settings)
        worker.wake()
        await async_wait_until(lambda: statuses(database) == {"delivered": 4})
        rows = {r["destination"]: r for r in delivery_rows(database)}
        stored = database.read(
            lambda c: c.execute("select crm_contact_id, mailerlite_subscriber_id from leads").fetchone()
        )
    (ml,) = subscriber_requests(sandbox)
    (crm,) = sandbox.requests("crm")
    (sgtm,) = sandbox.requests("sgtm")
    assert ml.body["email"] == "ana.teste@example.com" and ml.body["fields"]["event_id"] == str(event_id)
    assert crm.headers["idempotency-key"] == f"{event_id}:crm:contact_upsert"
    assert crm.headers["x-attribution-signature"].startswith("t=")
    assert sgtm.body["events"][0]["name"] == "generate_lead" and "@" not in sgtm.raw_body
    assert all(r["attempt_count"] == 1 and r["claimed_until"] is None for r in rows.values())
    contact = sandbox.state("crm")["contacts"]["ana.teste@example.com"]["contact_id"]
    subscriber = sandbox.state("mailerlite")["subscribers"]["ana.teste@example.com"]["id"]
    assert stored == (contact, subscriber)


async def test_outage_opens_the_circuit_spends_no_retries_and_loses_or_doubles_nothing(
    tmp_path: Path, sandbox: Sandbox, store: dict[str, Any]
) -> None:
    settings = sandbox_settings(tmp_path, sandbox, **store, crm_concurrency=2)
    sandbox.set_faults("crm", fail_5xx_until=time.time() + 600)  # down until the breaker has opened
    async with running_worker(settings) as (database, worker):
        for n in range(30):
            await capture(database, settings, email=f"buyer{n}@example.com")
        worker.wake()
        outage_started = time.monotonic()
        await async_wait_until(lambda: worker.status()["crm"]["breaker_opened"] >= 1)
        sandbox.set_faults("crm", clear=True)
        outage_seconds = time.monotonic() - outage_started
        await async_wait_until(lambda: statuses(database).get("delivered", 0) == 120)
        crm_rows = delivery_rows(database, "destination = 'crm'")
    failed = [r for r in sandbox.requests("crm") if r.status == 503]
    # Without the breaker, 30 deliveries x 4 attempts would hit the dead CRM; with it: the threshold, what was
    # in flight when it opened, and about one probe per cool-down.
    probes = outage_seconds / settings.attribution_circuit_breaker_cooldown_seconds + 2
    assert (
        len(failed) <= settings.attribution_circuit_breaker_threshold + 2 * settings.crm_concurrency + probes
    )
    assert all(r["status"] == "delivered" for r in crm_rows)
    assert max(r["failure_count"] for r in crm_rows) < settings.dlq_max_retries
    delivered = _keys(sandbox, "crm", ok_only=True)
    assert len(delivered) == 30 and set(delivered.values()) == {1}
    assert sandbox.state("crm")["duplicates"] == 0


async def test_a_permanent_4xx_is_dead_at_once_with_the_reason(
    tmp_path: Path, sandbox: Sandbox, store: dict[str, Any]
) -> None:
    settings = sandbox_settings(tmp_path, sandbox, **store)
    sandbox.set_faults("crm", reject_status=422)
    async with running_worker(settings) as (database, worker):
        await capture(database, settings)
        worker.wake()
        await async_wait_until(lambda: delivery_rows(database, "destination = 'crm' and status = 'dead'"))
        (row,) = delivery_rows(database, "destination = 'crm'")
        attempts = attempt_rows(database, row["delivery_id"])
    assert row["reason"].startswith("HTTP 422") and row["attempt_count"] == 1
    assert [(a["attempt_number"], a["status_code"], a["outcome"]) for a in attempts] == [(1, 422, "dead")]
    assert "Rejected by sandbox" in attempts[0]["response_body"]
    assert len(sandbox.requests("crm")) == 1


async def test_retries_used_up_is_dead_after_the_backoff_schedule(
    tmp_path: Path, sandbox: Sandbox, store: dict[str, Any]
) -> None:
    settings = sandbox_settings(tmp_path, sandbox, **store, attribution_circuit_breaker_threshold=100)
    sandbox.set_faults("crm", error_rate=1.0)
    async with running_worker(settings) as (database, worker):
        await capture(database, settings)
        worker.wake()
        await async_wait_until(lambda: delivery_rows(database, "destination = 'crm' and status = 'dead'"))
        (row,) = delivery_rows(database, "destination = 'crm'")
        attempts = attempt_rows(database, row["delivery_id"])
    assert len(attempts) == settings.dlq_max_retries + 1
    assert [a["outcome"] for a in attempts] == ["retrying"] * settings.dlq_max_retries + ["dead"]
    assert row["reason"].startswith("retries used up")
    gaps = [(b["started_at"] - a["started_at"]).total_seconds() for a, b in itertools.pairwise(attempts)]
    base, multiplier = settings.dlq_backoff_base_seconds, settings.dlq_backoff_multiplier
    for n, gap in enumerate(gaps, start=1):
        assert gap >= base * multiplier ** (n - 1), (n, gap)


async def test_429_is_paced_by_retry_after_without_spending_a_retry(
    tmp_path: Path, sandbox: Sandbox, store: dict[str, Any]
) -> None:
    settings = sandbox_settings(tmp_path, sandbox, **store)
    async with running_worker(settings) as (database, worker):
        sandbox.set_faults("mailerlite", status_429_retry_after=1, count_429=1)
        await capture(database, settings)
        worker.wake()
        await async_wait_until(
            lambda: delivery_rows(database, "destination = 'mailerlite' and status = 'delivered'"), timeout=5
        )
        (row,) = delivery_rows(database, "destination = 'mailerlite'")
        attempts = attempt_rows(database, row["delivery_id"])
    first, second = subscriber_requests(sandbox)
    assert first.status == 429 and second.status == 201
    assert second.received_at - first.received_at >= 1.0
    assert [a["outcome"] for a in attempts] == ["rate_limited", "delivered"]
    assert row["failure_count"] == 0


async def test_a_reset_connection_is_retried_with_the_same_idempotency_key(
    tmp_path: Path, sandbox: Sandbox, store: dict[str, Any]
) -> None:
    settings = sandbox_settings(tmp_path, sandbox, **store)
    sandbox.set_faults("crm", reset_connection=True)
    async with running_worker(settings) as (database, worker):
        await capture(database, settings)
        worker.wake()
        await async_wait_until(lambda: len(sandbox.requests("crm")) >= 2)
        sandbox.set_faults("crm", clear=True)
        await async_wait_until(
            lambda: delivery_rows(database, "destination = 'crm' and status = 'delivered'")
        )
        (row,) = delivery_rows(database, "destination = 'crm'")
        attempts = attempt_rows(database, row["delivery_id"])
    assert attempts[0]["status_code"] is None and attempts[0]["error"]
    assert len(set(_keys(sandbox, "crm"))) == 1


async def test_mailerlite_requests_are_spaced_to_its_rate_limit(
    tmp_path: Path, sandbox: Sandbox, store: dict[str, Any]
) -> None:
    settings = sandbox_settings(
        tmp_path, sandbox, **store, mailerlite_requests_per_minute=600
    )  # one every 0.1 s
    async with running_worker(settings) as (database, worker):
        for n in range(6):
            await capture(database, settings, email=f"paced{n}@example.com")
        worker.wake()
        await async_wait_until(
            lambda: len(delivery_rows(database, "destination = 'mailerlite' and status = 'delivered'")) == 6
        )
    times = sorted(r.received_at for r in subscriber_requests(sandbox))
    # Six sends at one per 0.1 s span at least 0.5 s; unpaced they would arrive within milliseconds.
    assert times[-1] - times[0] >= 0.45
    assert min(b - a for a, b in itertools.pairwise(times)) >= 0.05


async def test_a_delivery_for_someone_who_withdrew_consent_is_never_sent(
    tmp_path: Path, sandbox: Sandbox, store: dict[str, Any]
) -> None:
    settings = sandbox_settings(tmp_path, sandbox, **store)
    sandbox.set_faults("sgtm", fail_5xx_until=time.time() + 60)
    sandbox.set_faults("meta", fail_5xx_until=time.time() + 60)
    async with running_worker(settings) as (database, worker):
        sandbox.set_faults("mailerlite", fail_5xx_until=time.time() + 60)
        event_id = await capture(database, settings)
        worker.wake()
        await async_wait_until(
            lambda: subscriber_requests(sandbox) and sandbox.requests("sgtm") and sandbox.requests("meta")
        )
        lead = database.read(lambda c: c.execute("select user_session_id from leads").fetchone())
        assert lead is not None
        withdrawal = ConsentIn(
            user_session_id=lead[0],
            event_id=event_id,
            marketing_consent=False,
            analytics_consent=False,
            consent_method="modal",
            consent_version="1.0",
        )
        context = RequestContext(received_at=utcnow(), ip="203.0.113.7", user_agent="pytest")
        row = consent_row(
            settings,
            withdrawal,
            user_session_id=lead[0],
            event_id=event_id,
            source="consent",
            context=context,
        )
        await database.writer.submit(record_consents, row)
        sandbox.set_faults("mailerlite", clear=True)
        sandbox.set_faults("sgtm", clear=True)
        sandbox.set_faults("meta", clear=True)
        # Queued after the withdrawal (e.g. a payment webhook): gated at send time by the ledger.
        await queue(
            database,
            settings,
            destination=Destination.SGTM,
            kind=DeliveryKind.PURCHASE,
            event_id=event_id,
            user_session_id=lead[0],
            payload={"transaction_id": "pi_1", "value": 120.0, "currency": "EUR"},
        )
        worker.wake()
        await async_wait_until(lambda: statuses(database) == {"delivered": 1, "suppressed": 4})
        rows = {r["kind"]: r for r in delivery_rows(database)}
    assert rows["subscriber_upsert"]["status"] == "suppressed" and rows["purchase"]["status"] == "suppressed"
    assert rows["purchase"]["attempt_count"] == 0
    assert all(r.status == 503 for r in subscriber_requests(sandbox))
    assert all(r.status == 503 for r in sandbox.requests("sgtm"))
    assert sandbox.state("mailerlite")["subscribers"] == {} and sandbox.state("sgtm")["accepted"] == []
    assert sandbox.state("meta")["events"] == []


async def test_withdrawing_marketing_consent_unsubscribes_an_existing_subscriber(
    tmp_path: Path, sandbox: Sandbox, store: dict[str, Any]
) -> None:
    settings = sandbox_settings(tmp_path, sandbox, **store)
    async with running_worker(settings) as (database, worker):
        event_id = await capture(database, settings)
        worker.wake()
        await async_wait_until(lambda: statuses(database) == {"delivered": 4})
        session = database.read(lambda c: c.execute("select user_session_id from leads").fetchone())
        assert session is not None
        context = RequestContext(received_at=utcnow(), ip="203.0.113.7", user_agent="pytest")
        for _ in range(2):  # withdrawing twice queues one unsubscribe
            withdrawal = ConsentIn(
                user_session_id=session[0],
                marketing_consent=False,
                analytics_consent=True,
                consent_method="modal",
                consent_version="1.0",
            )
            row = consent_row(
                settings,
                withdrawal,
                user_session_id=session[0],
                event_id=None,
                source="consent",
                context=context,
            )
            await database.writer.submit(record_consents, row)
        worker.wake()
        await async_wait_until(
            lambda: delivery_rows(database, "kind = 'unsubscribe' and status = 'delivered'")
        )
        assert len(delivery_rows(database, "kind = 'unsubscribe'")) == 1
    subscriber = sandbox.state("mailerlite")["subscribers"]["ana.teste@example.com"]
    assert subscriber["status"] == "unsubscribed"
    assert sandbox.requests("mailerlite")[-1].headers["idempotency-key"].startswith(f"{event_id}:mailerlite:")


async def test_a_later_crm_update_carries_the_contact_id_learned_earlier(
    tmp_path: Path, sandbox: Sandbox, store: dict[str, Any]
) -> None:
    settings = sandbox_settings(tmp_path, sandbox, **store)
    async with running_worker(settings) as (database, worker):
        event_id = await capture(database, settings)
        worker.wake()
        await async_wait_until(lambda: statuses(database) == {"delivered": 4})
        await queue(
            database,
            settings,
            destination=Destination.CRM,
            kind=DeliveryKind.CONTACT_UPSERT,
            event_id=event_id,
            key_suffix="paid",
            payload={"lead_status": "paid", "amount_cents": 12000, "currency": "eur"},
        )
        worker.wake()
        await async_wait_until(lambda: statuses(database) == {"delivered": 5})
    first, update = sandbox.requests("crm")
    assert "contact_id" not in first.body
    assert update.body["contact_id"] == first.response["contact_id"]
    assert update.body["lead_status"] == "paid" and update.body["amount"] == 120.0


async def test_orphan_deliveries_are_handled_without_a_lead(
    tmp_path: Path, sandbox: Sandbox, store: dict[str, Any]
) -> None:
    settings = sandbox_settings(tmp_path, sandbox, **store)
    orphan = uuid.uuid4()
    async with running_worker(settings) as (database, worker):
        crm = await queue(
            database, settings, destination=Destination.CRM, kind=DeliveryKind.CONTACT_UPSERT, event_id=orphan,
            payload={"lead_status": "paid", "amount_cents": 5000},
        )  # fmt: skip
        purchase = await queue(
            database, settings, destination=Destination.SGTM, kind=DeliveryKind.PURCHASE, event_id=orphan,
            payload={"transaction_id": "pi_orphan", "value": 50.0, "currency": "EUR"},
        )  # fmt: skip
        worker.wake()
        await async_wait_until(
            lambda: "pending" not in statuses(database) and "retrying" not in statuses(database)
        )
        rows = {r["delivery_id"]: r for r in delivery_rows(database)}
    assert rows[crm.delivery_id]["status"] == "dead"
    assert "no lead stored" in rows[crm.delivery_id]["reason"]
    # No lead means no recorded analytics consent: with REQUIRE_CONSENT it is not sent.
    assert rows[purchase.delivery_id]["status"] == "suppressed"
    assert sandbox.requests("crm") == [] and sandbox.requests("sgtm") == []


async def test_a_destination_unconfigured_at_send_time_is_recorded_disabled(
    tmp_path: Path, sandbox: Sandbox, store: dict[str, Any]
) -> None:
    configured = sandbox_settings(tmp_path, sandbox, **store)
    database = open_database(configured)  # rows queued while configured, nothing sent
    await capture(database, configured)
    database.close()
    unconfigured = configured.model_copy(update={"crm_webhook_url": None})
    async with running_worker(unconfigured) as (database, worker):
        worker.wake()
        await async_wait_until(lambda: "pending" not in statuses(database))
        (crm,) = delivery_rows(database, "destination = 'crm'")
    assert crm["status"] == "disabled" and crm["reason"] == "crm is not configured"
    assert sandbox.requests("crm") == []


async def test_a_lease_left_by_a_dead_worker_is_sent_again_with_the_same_key(
    tmp_path: Path, sandbox: Sandbox, store: dict[str, Any]
) -> None:
    settings = sandbox_settings(tmp_path, sandbox, **store)
    on_postgres = settings.attribution_database_url is not None
    async with running_worker(settings) as (database, worker):
        await worker.stop()  # this one never sends
        event_id = await capture(database, settings)
        # Claim as a worker would, then "die" before sending: the lease stays in the table.
        now, claimed_at = utcnow(), time.time()
        # ATTRIBUTION_DELIVERY_LEASE_SECONDS, as the worker passes it (on PostgreSQL one that runs out in the test).
        lease = timedelta(seconds=1.5 if on_postgres else 45)
        claim = await database.writer.submit(claim_deliveries, ClaimRequest(now, {"crm": 10}, lease=lease))
        assert len(claim.deliveries) == 1
        (row,) = delivery_rows(database, "destination = 'crm'")
        assert row["claimed_until"] == now + lease and row["claim_token"] == claim.deliveries[0].claim_token
    # The embedded store's next start releases the dead process's lease. On PostgreSQL a lease found at start
    # may be another instance's live one: nothing is released, and the row is taken over once its lease ran out.
    async with running_worker(settings) as (database, worker):
        worker.wake()
        await async_wait_until(lambda: statuses(database) == {"delivered": 4})
        (row,) = delivery_rows(database, "destination = 'crm'")
    assert _keys(sandbox, "crm") == Counter({f"{event_id}:crm:contact_upsert": 1})
    assert row["claimed_until"] is None and row["claim_token"] is None and row["attempt_count"] == 1
    if on_postgres:
        (sent,) = sandbox.requests("crm")
        assert sent.received_at >= claimed_at + lease.total_seconds() - 0.05


async def test_replaying_a_thousand_dead_deliveries_delivers_them_all(
    tmp_path: Path, sandbox: Sandbox, store: dict[str, Any]
) -> None:
    settings = sandbox_settings(tmp_path, sandbox, **store, crm_concurrency=32, crm_enable_lead_capture=True)
    sandbox.set_faults("crm", reject_status=400)
    async with running_worker(settings) as (database, worker):
        payloads = [{"lead_status": "paid", "email": f"buyer{n}@example.com"} for n in range(1000)]
        orphans = [
            planned(
                settings,
                destination=Destination.CRM,
                kind=DeliveryKind.CONTACT_UPSERT,
                event_id=uuid.uuid4(),
                payload=payload,
            )
            for payload in payloads
        ]
        await insert(database, orphans)
        worker.wake()
        await async_wait_until(lambda: statuses(database) == {"dead": 1000}, timeout=30)
        sandbox.set_faults("crm", clear=True)
        replayed = await database.writer.submit(
            replay_deliveries, ReplayRequest(DeliveryFilter(destination=Destination.CRM), utcnow())
        )
        assert replayed == 1000
        worker.wake()
        await async_wait_until(lambda: statuses(database) == {"delivered": 1000}, timeout=30)
        history = attempt_rows(database, delivery_rows(database)[0]["delivery_id"])
    assert [a["outcome"] for a in history] == ["dead", "delivered"]
    assert [a["attempt_number"] for a in history] == [1, 2]
    delivered = _keys(sandbox, "crm", ok_only=True)
    assert len(delivered) == 1000 and set(delivered.values()) == {1}


async def test_an_idle_worker_writes_nothing_yet_sends_a_row_queued_without_a_wake(
    tmp_path: Path, sandbox: Sandbox, store: dict[str, Any]
) -> None:
    settings = sandbox_settings(tmp_path, sandbox, **store)
    async with running_worker(settings) as (database, _worker):
        await asyncio.sleep(0.3)  # a few polls: the first finds nothing, the later ones only read
        before = database.writer.batches_committed
        await asyncio.sleep(0.5)
        idle_commits = database.writer.batches_committed - before
        # Captured straight through the handler, so nobody wakes the worker: its polling read must find them.
        await capture(database, settings)
        await async_wait_until(lambda: statuses(database) == {"delivered": 4})
    assert idle_commits == 0
    assert [
        len(subscriber_requests(sandbox)),
        len(sandbox.requests("crm")),
        len(sandbox.requests("sgtm")),
        len(sandbox.requests("meta")),
    ] == [1, 1, 1, 1]


async def test_mailerlite_is_held_until_our_custom_fields_exist_then_they_are_kept(
    tmp_path: Path, sandbox: Sandbox, store: dict[str, Any]
) -> None:
    # A new MailerLite account has none of our fields, and MailerLite silently drops unknown ones.
    settings = sandbox_settings(tmp_path, sandbox, **store)
    sandbox.set_faults("mailerlite", fail_5xx_until=time.time() + 60)  # the field check cannot get through
    async with running_worker(settings, wait_ready=False) as (database, worker):
        event_id = await capture(database, settings)
        worker.wake()
        await async_wait_until(
            lambda: delivery_rows(database, "destination = 'crm' and status = 'delivered'")
        )
        await asyncio.sleep(0.3)
        (held,) = delivery_rows(database, "destination = 'mailerlite'")
        reason = worker.status()["mailerlite"]["held"]
        sandbox.set_faults("mailerlite", clear=True)
        await async_wait_until(
            lambda: delivery_rows(database, "destination = 'mailerlite' and status = 'delivered'"), timeout=10
        )
    assert (held["status"], held["attempt_count"]) == ("pending", 0)  # held, not sent nor spending retries
    assert reason is not None and "custom fields" in reason
    assert subscriber_requests(sandbox)[0].body["fields"]["event_id"] == str(event_id)
    fields = sandbox.state("mailerlite")["subscribers"]["ana.teste@example.com"]["fields"]
    assert (fields["event_id"], fields["utm_source"]) == (str(event_id), "instagram")  # not dropped


async def test_a_mailerlite_base_url_ending_in_api_is_accepted(
    tmp_path: Path, sandbox: Sandbox, store: dict[str, Any]
) -> None:
    # MailerLite's docs write the base as https://connect.mailerlite.com/api.
    settings = sandbox_settings(
        tmp_path, sandbox, **store, mailerlite_base_url=sandbox.mailerlite_url + "/api/"
    )
    async with running_worker(settings) as (database, worker):
        await capture(database, settings)
        worker.wake()
        await async_wait_until(lambda: statuses(database) == {"delivered": 4})
    assert [r.path for r in subscriber_requests(sandbox)] == ["/api/subscribers"]
