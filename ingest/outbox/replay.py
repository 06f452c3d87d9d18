"""Dead letters and replay: filter deliveries, and re-queue them with a fresh retry budget, history kept."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import duckdb
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ingest.core.clock import InputTimestamp, UtcTimestamp
from ingest.core.vocabulary import DeliveryKind, DeliveryStatus, Destination, Purpose
from ingest.outbox import repository
from ingest.outbox.repository import DeliveryQuery

MAX_REPLAY_IDS = 10_000


class DeliveryFilter(BaseModel):
    """Which deliveries: by id, or by destination, status, event_id, creation time and error text."""

    model_config = ConfigDict(extra="forbid")

    ids: list[UUID] | None = Field(default=None, min_length=1, max_length=MAX_REPLAY_IDS)
    destination: Destination | None = None
    status: DeliveryStatus | None = None
    event_id: UUID | None = None
    since: InputTimestamp | None = Field(
        default=None, description="created at or after (ISO-8601; naive means UTC)"
    )
    until: InputTimestamp | None = Field(
        default=None, description="created before (ISO-8601; naive means UTC)"
    )
    error: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        pattern=r"^[^\x00-\x1f\x7f]+$",  # no control characters (PostgreSQL refuses a NUL in text)
        description="text in the last error",
    )

    @model_validator(mode="after")
    def _window(self) -> DeliveryFilter:
        if self.since is not None and self.until is not None and self.since >= self.until:
            raise ValueError("since must be before until")
        return self

    def query(self, *, default_status: DeliveryStatus | None = None) -> DeliveryQuery:
        """The store's query; `default_status` applies when neither ids nor a status is given."""
        status = self.status or (default_status if self.ids is None else None)
        return DeliveryQuery(
            ids=tuple(self.ids) if self.ids is not None else None,
            destination=self.destination.value if self.destination else None,
            status=status,
            event_id=self.event_id,
            since=self.since,
            until=self.until,
            error=self.error,
        )


class DeliveryListIn(DeliveryFilter):
    """A listing of deliveries: the filter and how many at most, newest first."""

    limit: int = Field(default=100, ge=1, le=1000)


class ReplayIn(DeliveryFilter):
    """A replay: the deliveries to re-queue (dead ones unless ids or a status say otherwise)."""

    dry_run: bool = False


class ReplayOut(BaseModel):
    """How many deliveries were re-queued (or would be, on a dry run)."""

    replayed: int
    dry_run: bool


class DeliveryOut(BaseModel):
    """One delivery row as the admin API shows it."""

    delivery_id: UUID
    event_id: UUID | None
    user_session_id: UUID | None
    destination: Destination
    kind: DeliveryKind
    purpose: Purpose
    idempotency_key: str
    payload: Any
    status: DeliveryStatus
    reason: str | None
    attempt_count: int
    failure_count: int
    next_attempt_at: UtcTimestamp | None
    last_error: str | None
    created_at: UtcTimestamp
    updated_at: UtcTimestamp
    delivered_at: UtcTimestamp | None
    in_flight: bool


class AttemptOut(BaseModel):
    """One attempt of a delivery."""

    attempt_number: int
    started_at: UtcTimestamp
    duration_ms: float | None
    status_code: int | None
    response_body: str | None
    error: str | None
    outcome: str


class DeliveryDetail(DeliveryOut):
    """A delivery with its attempt history."""

    attempts: list[AttemptOut]


class DeliveryList(BaseModel):
    """Deliveries matching a filter, newest first."""

    deliveries: list[DeliveryOut]
    limit: int


def delivery_out(row: dict[str, Any]) -> dict[str, Any]:
    """A store row shaped for DeliveryOut."""
    payload = row.get("payload")
    shaped = {key: value for key, value in row.items() if key != "claimed_until"}
    shaped["payload"] = json.loads(payload) if isinstance(payload, str) else payload
    shaped["in_flight"] = row.get("claimed_until") is not None
    return shaped


def list_deliveries(conn: duckdb.DuckDBPyConnection, wanted: DeliveryFilter, limit: int) -> DeliveryList:
    """Deliveries matching the filter, newest first, at most `limit`."""
    rows = repository.list_deliveries(conn, wanted.query(), limit)
    return DeliveryList(deliveries=[DeliveryOut(**delivery_out(row)) for row in rows], limit=limit)


def get_delivery(conn: duckdb.DuckDBPyConnection, delivery_id: UUID) -> DeliveryDetail | None:
    """One delivery with its attempts."""
    row = repository.get_delivery(conn, delivery_id)
    return None if row is None else DeliveryDetail(**delivery_out(row))


def count_replayable(conn: duckdb.DuckDBPyConnection, wanted: DeliveryFilter) -> int:
    """How many deliveries a replay of `wanted` would re-queue."""
    return repository.count_deliveries(conn, wanted.query(default_status=DeliveryStatus.DEAD))


@dataclass(frozen=True)
class ReplayRequest:
    """A replay to apply at `now`."""

    wanted: DeliveryFilter
    now: datetime


def replay_deliveries(conn: duckdb.DuckDBPyConnection, requests: Sequence[ReplayRequest]) -> list[int]:
    """Writer batch handler: re-queue matching deliveries now with a fresh retry budget; return how many."""
    return [
        len(
            repository.requeue_deliveries(
                conn, request.wanted.query(default_status=DeliveryStatus.DEAD), request.now
            )
        )
        for request in requests
    ]
