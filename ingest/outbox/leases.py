"""Leases, through the writer: claim due deliveries with their lead and consent, record what their sends came
to (which drops the lease), and at start-up release every lease a dead process left behind (embedded store).

On PostgreSQL any number of instances claim from one table. A claim locks the due rows it reads (FOR UPDATE SKIP
LOCKED: another instance's claim skips them) and each journey it takes per destination (a transaction lock, then a
look at live leases), leases them under a fresh claim token, and first reads what instances share about each
destination (lanes.py: an open circuit, its one probe, a requests-per-minute budget). A lease that expires (its
instance died) makes its row due again for any claim, and its late outcome, if one ever comes, is refused by the
token.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import duckdb

from ingest.core.clock import utcnow
from ingest.outbox import repository
from ingest.outbox.lanes import (
    LaneView,
    Slots,
    reserve_slots,
    shared_circuits,
    shared_pacing,
    take_probe,
)
from ingest.outbox.records import ClaimedDelivery, RecordedOutcome, Unclaimed
from ingest.store.postgres import is_postgres

# How long a claimed delivery belongs to the worker that claimed it (ATTRIBUTION_DELIVERY_LEASE_SECONDS): it
# outlives the send (Settings refuses a lease not longer than the delivery timeout) and the short wait for a
# rate-limit slot. A process that dies leaves it behind: the embedded store's next start releases it; on
# PostgreSQL another instance takes it over once it has expired.
DEFAULT_LEASE = timedelta(seconds=30)


@dataclass(frozen=True)
class ClaimRequest:
    """Lease up to `limits[destination]` due deliveries, skipping journeys already in flight there."""

    now: datetime
    limits: dict[str, int]
    busy: frozenset[tuple[str, UUID]] = frozenset()
    urgent: tuple[UUID, ...] = ()
    lease: timedelta = DEFAULT_LEASE
    inflight: frozenset[UUID] = frozenset()  # still being sent by this worker: never claimed again by it
    # PostgreSQL: seconds between two requests to a destination, for all instances together (its requests per
    # minute); a paced destination claims only the request slots that start within `horizon` seconds.
    paced: dict[str, float] = field(default_factory=dict)
    horizon: float = 1.0


@dataclass(frozen=True)
class Claim:
    """The deliveries one claim leased, and what it learned of each destination's shared state."""

    deliveries: list[ClaimedDelivery]
    lanes: dict[str, LaneView] = field(default_factory=dict)


def pick_claims(
    candidates: Sequence[dict[str, Any]],
    limits: dict[str, int],
    busy: frozenset[tuple[str, UUID]],
    inflight: frozenset[UUID] = frozenset(),
) -> list[dict[str, Any]]:
    """In candidate order: up to each destination's limit, and one delivery per (destination, event_id) out at
    a time, so two updates about one person never race each other at the receiver."""
    taken: set[tuple[str, UUID]] = set(busy)
    seen: set[UUID] = set(inflight)
    counts: Counter[str] = Counter()
    picked = []
    for row in candidates:
        destination, event_id = row["destination"], row["event_id"]
        if row["delivery_id"] in seen or counts[destination] >= limits.get(destination, 0):
            continue
        if event_id is not None and (destination, event_id) in taken:
            continue
        picked.append(row)
        seen.add(row["delivery_id"])
        counts[destination] += 1
        if event_id is not None:
            taken.add((destination, event_id))
    return picked


def _claim(conn: Any, request: ClaimRequest) -> Claim:
    shared = is_postgres(conn)  # other instances claim from the same table at the same moment
    limits = {destination: limit for destination, limit in request.limits.items() if limit > 0}
    views: dict[str, LaneView] = {}
    probes: set[str] = set()
    slots: dict[str, Slots] = {}
    if shared and limits:
        shared_circuits(conn, limits, views, probes)
        slots = shared_pacing(conn, request.paced, request.horizon, limits, views)
    # Fetch a little beyond the limit: some candidates may be skipped as their journey is in flight (a claim that
    # comes up short is topped up by the next; every row fetched costs Python objects).
    fetch = {destination: limit + limit // 4 + 8 for destination, limit in limits.items() if limit > 0}
    if not fetch:
        return Claim([], views)
    candidates = repository.due_candidates(conn, fetch, request.now, request.urgent)
    picked = pick_claims(candidates, limits, request.busy, request.inflight)
    if shared and picked:
        pairs = [(row["destination"], row["event_id"]) for row in picked if row["event_id"] is not None]
        held = repository.journeys_held_elsewhere(conn, pairs, request.now)
        picked = [
            row
            for row in picked
            if row["event_id"] is None or (row["destination"], str(row["event_id"])) not in held
        ]
    for destination in probes:
        if not any(row["destination"] == destination for row in picked):
            continue  # nothing due to probe with: the circuit stays half-open for whoever has something
        if take_probe(conn, destination, request.lease.total_seconds()):
            views[destination] = LaneView(circuit_open=True, probe=True)
        else:  # another instance took it first
            picked = [row for row in picked if row["destination"] != destination]
            views[destination] = LaneView(circuit_open=True, probing_elsewhere=True, wait=None)
    send_in = reserve_slots(conn, slots, picked, request.horizon, views)
    if not picked:
        return Claim([], views)
    token = uuid.uuid4()
    repository.lease(conn, [row["delivery_id"] for row in picked], request.now + request.lease, token)
    journeys = repository.journeys(
        conn, [row["event_id"] for row in picked], [row["user_session_id"] for row in picked]
    )
    deliveries = [
        repository.claimed_delivery(row, journeys, token, send_in.get(row["delivery_id"])) for row in picked
    ]
    return Claim(deliveries, views)


def claim_deliveries(conn: duckdb.DuckDBPyConnection, requests: Sequence[ClaimRequest]) -> list[Claim]:
    """Writer batch handler: lease due deliveries and read their lead and the consent in force."""
    return [_claim(conn, request) for request in requests]


@dataclass(frozen=True)
class Flush:
    """Outcomes and given-back leases gathered since the last commit."""

    outcomes: tuple[RecordedOutcome, ...]
    released: tuple[Unclaimed, ...] = ()


def record_deliveries(conn: duckdb.DuckDBPyConnection, flushes: Sequence[Flush]) -> list[frozenset[UUID]]:
    """Writer batch handler: attempts, delivery states and learned ids of many sends in a few statements. Returns,
    per flush, the deliveries refused because another claim holds their lease now (the late answer of a lease
    that had run out: the new owner's result stands)."""
    outcomes = [item for flush in flushes for item in flush.outcomes]
    released = [item for flush in flushes for item in flush.released]
    recorded = repository.record_outcomes(conn, outcomes, utcnow())
    given = repository.release_claims(conn, released)
    return [
        frozenset(item.delivery_id for item in flush.outcomes if item.delivery_id not in recorded)
        | frozenset(item.delivery_id for item in flush.released if item.delivery_id not in given)
        for flush in flushes
    ]


def any_due(destinations: list[str], conn: duckdb.DuckDBPyConnection) -> bool:
    """Whether any delivery to these destinations is due and unleased (a read: an idle poll commits nothing)."""
    return repository.any_due(conn, destinations, utcnow())


def expired_leases(conn: duckdb.DuckDBPyConnection) -> int:
    """A read: leases that ran out without an outcome (their instance stopped), which claims take over."""
    return repository.expired_leases(conn, utcnow())


def release_all_deliveries(conn: duckdb.DuckDBPyConnection, items: Sequence[None]) -> list[int]:
    """Writer batch handler: drop every lease (the embedded store's start: they belong to a process that is gone).

    On PostgreSQL it releases nothing: other instances' leases are live, and a dead one's expire by themselves.
    """
    released = 0 if is_postgres(conn) else repository.release_all_claims(conn)
    return [released] + [0] * (len(items) - 1)
