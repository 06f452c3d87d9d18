"""Leases, through the writer: claim due deliveries with their lead and consent, record what their sends came
to (which drops the lease), and at start-up release every lease a dead process left behind."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import duckdb

from ingest.core.clock import utcnow
from ingest.outbox import repository
from ingest.outbox.repository import ClaimedDelivery, RecordedOutcome, Unclaimed

# How long a claimed delivery belongs to the worker that claimed it (ATTRIBUTION_DELIVERY_LEASE_SECONDS): it
# outlives the send (Settings refuses a lease not longer than the delivery timeout) and the short wait for a
# rate-limit slot; a process that dies leaves it behind, and the next start releases it.
DEFAULT_LEASE = timedelta(seconds=30)


@dataclass(frozen=True)
class ClaimRequest:
    """Lease up to `limits[destination]` due deliveries, skipping journeys already in flight there."""

    now: datetime
    limits: dict[str, int]
    busy: frozenset[tuple[str, UUID]] = frozenset()
    urgent: tuple[UUID, ...] = ()
    lease: timedelta = DEFAULT_LEASE


def pick_claims(
    candidates: Sequence[dict[str, Any]], limits: dict[str, int], busy: frozenset[tuple[str, UUID]]
) -> list[dict[str, Any]]:
    """In candidate order: up to each destination's limit, and one delivery per (destination, event_id) out at
    a time, so two updates about one person never race each other at the receiver."""
    taken: set[tuple[str, UUID]] = set(busy)
    seen: set[UUID] = set()
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


def claim_deliveries(
    conn: duckdb.DuckDBPyConnection, requests: Sequence[ClaimRequest]
) -> list[list[ClaimedDelivery]]:
    """Writer batch handler: lease due deliveries and read their lead and the consent in force."""
    results: list[list[ClaimedDelivery]] = []
    for request in requests:
        # Fetch a little beyond the limit: some candidates may be skipped as their journey is in flight (a
        # claim that comes up short is topped up by the next; every row fetched costs Python objects).
        fetch = {
            destination: limit + limit // 4 + 8 for destination, limit in request.limits.items() if limit > 0
        }
        candidates = repository.due_candidates(conn, fetch, request.now, request.urgent)
        picked = pick_claims(candidates, request.limits, request.busy)
        if not picked:
            results.append([])
            continue
        repository.lease(conn, [row["delivery_id"] for row in picked], request.now + request.lease)
        journeys = repository.journeys(
            conn, [row["event_id"] for row in picked], [row["user_session_id"] for row in picked]
        )
        results.append([repository.claimed_delivery(row, journeys) for row in picked])
    return results


@dataclass(frozen=True)
class Flush:
    """Outcomes and given-back leases gathered since the last commit."""

    outcomes: tuple[RecordedOutcome, ...]
    released: tuple[Unclaimed, ...] = ()


def record_deliveries(conn: duckdb.DuckDBPyConnection, flushes: Sequence[Flush]) -> list[None]:
    """Writer batch handler: attempts, delivery states and learned ids of many sends in a few statements."""
    repository.record_outcomes(conn, [item for flush in flushes for item in flush.outcomes], utcnow())
    repository.release_claims(conn, [item for flush in flushes for item in flush.released])
    return [None] * len(flushes)


def any_due(destinations: list[str], conn: duckdb.DuckDBPyConnection) -> bool:
    """Whether any delivery to these destinations is due and unleased (a read: an idle poll commits nothing)."""
    return repository.any_due(conn, destinations, utcnow())


def release_all_deliveries(conn: duckdb.DuckDBPyConnection, items: Sequence[None]) -> list[int]:
    """Writer batch handler: drop every lease (start-up: they belong to a process that is gone)."""
    released = repository.release_all_claims(conn)
    return [released] + [0] * (len(items) - 1)
