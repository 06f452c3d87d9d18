"""Leases and claim tokens through the writer's handlers, on each engine: a lease that ran out is taken over, and
the outcome (or the given-back lease) of the claim that lost it is refused, so the new owner's result stands."""

from __future__ import annotations

import random
from datetime import timedelta
from pathlib import Path
from typing import Any

from ingest.core.clock import utcnow
from ingest.outbox.delivery import AttemptResult, Verdict, settle
from ingest.outbox.leases import ClaimRequest, Flush, claim_deliveries, pick_claims, record_deliveries
from ingest.outbox.records import Unclaimed
from ingest.store.database import open_database
from sandbox import Sandbox
from tests.outbox.conftest import attempt_rows, capture, delivery_rows, sandbox_settings

LEASE = timedelta(seconds=30)


def _answered(status: int) -> AttemptResult:
    verdict = Verdict.DELIVERED if status < 300 else Verdict.RETRY
    return AttemptResult(
        verdict, started_at=utcnow(), duration_ms=12.0, status_code=status, outage=status >= 500
    )


async def test_the_claim_that_lost_its_lease_cannot_record_over_the_new_owner(
    tmp_path: Path, sandbox: Sandbox, store: dict[str, Any]
) -> None:
    settings = sandbox_settings(tmp_path, sandbox, **store)
    rng = random.Random(1)
    database = open_database(settings)
    try:
        await capture(database, settings)
        now = utcnow()
        first = (
            await database.writer.submit(claim_deliveries, ClaimRequest(now, {"crm": 5}, lease=LEASE))
        ).deliveries
        # Still leased: nobody else gets it.
        again = await database.writer.submit(claim_deliveries, ClaimRequest(now, {"crm": 5}, lease=LEASE))
        assert len(first) == 1 and again.deliveries == []
        # Once the lease ran out, another claim takes the row over under a token of its own.
        later = now + LEASE + timedelta(seconds=1)
        taken = (
            await database.writer.submit(claim_deliveries, ClaimRequest(later, {"crm": 5}, lease=LEASE))
        ).deliveries
        assert [item.delivery_id for item in taken] == [first[0].delivery_id]
        assert (
            taken[0].claim_token != first[0].claim_token
            and taken[0].idempotency_key == first[0].idempotency_key
        )
        late = settle(first[0], _answered(503), settings=settings, now=utcnow(), rng=rng)
        refused = await database.writer.submit(record_deliveries, Flush((late,)))
        assert refused == frozenset({first[0].delivery_id})
        given_back = await database.writer.submit(
            record_deliveries, Flush((), (Unclaimed(first[0].delivery_id, None, first[0].claim_token),))
        )
        assert given_back == frozenset({first[0].delivery_id})
        (row,) = delivery_rows(database, "destination = 'crm'")
        assert row["claim_token"] == taken[0].claim_token and row["attempt_count"] == 0  # untouched
        outcome = settle(taken[0], _answered(200), settings=settings, now=utcnow(), rng=rng)
        assert await database.writer.submit(record_deliveries, Flush((outcome,))) == frozenset()
        (row,) = delivery_rows(database, "destination = 'crm'")
        history = attempt_rows(database, row["delivery_id"])
    finally:
        database.close()
    assert row["status"] == "delivered" and row["claim_token"] is None and row["claimed_until"] is None
    assert [(a["attempt_number"], a["status_code"]) for a in history] == [(1, 200)]


async def test_a_batch_with_one_refused_outcome_records_the_others(
    tmp_path: Path, sandbox: Sandbox, store: dict[str, Any]
) -> None:
    settings = sandbox_settings(tmp_path, sandbox, **store)
    rng = random.Random(2)
    database = open_database(settings)
    try:
        for n in range(3):
            await capture(database, settings, email=f"batch{n}@example.com")
        now = utcnow()
        short = await database.writer.submit(claim_deliveries, ClaimRequest(now, {"crm": 1}, lease=LEASE))
        long = await database.writer.submit(claim_deliveries, ClaimRequest(now, {"crm": 5}, lease=4 * LEASE))
        (stolen,), kept = short.deliveries, long.deliveries
        later = (
            now + LEASE + timedelta(seconds=1)
        )  # only the short lease ran out: another claim takes it over
        retaken = await database.writer.submit(claim_deliveries, ClaimRequest(later, {"crm": 5}, lease=LEASE))
        assert [c.delivery_id for c in retaken.deliveries] == [stolen.delivery_id] and len(kept) == 2
        outcomes = tuple(
            settle(c, _answered(200), settings=settings, now=utcnow(), rng=rng) for c in (stolen, *kept)
        )
        refused = await database.writer.submit(record_deliveries, Flush(outcomes))
        rows = {row["delivery_id"]: row for row in delivery_rows(database, "destination = 'crm'")}
    finally:
        database.close()
    assert refused == frozenset({stolen.delivery_id})
    assert rows[stolen.delivery_id]["status"] == "pending" and rows[stolen.delivery_id]["attempt_count"] == 0
    assert all(
        rows[c.delivery_id]["status"] == "delivered" and rows[c.delivery_id]["attempt_count"] == 1
        for c in kept
    )


def test_a_claim_never_takes_again_what_its_worker_still_sends_nor_a_second_of_one_journey() -> None:
    rows = [
        {"delivery_id": f"d{n}", "destination": "crm", "event_id": event}
        for n, event in enumerate(["e1", "e1", "e2", None, None])
    ]
    picked = pick_claims(rows, {"crm": 10}, frozenset({("crm", "e2")}), frozenset({"d3"}))  # type: ignore[arg-type]
    assert [row["delivery_id"] for row in picked] == ["d0", "d4"]
    assert (
        pick_claims(rows, {"crm": 0}, frozenset()) == [] and pick_claims(rows, {"sgtm": 5}, frozenset()) == []
    )
