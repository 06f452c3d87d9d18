"""Every SQL statement of the Stripe side (payments, stripe_events, the sync cursor, lead payment state).

The connection is always passed in. A writer batch of events costs a fixed handful of statements (each column
travels as one list parameter); table and column names come only from the constants here.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import duckdb

from ingest.store.postgres import is_postgres
from ingest.store.rows import batch_select

EVENT_COLUMNS = (
    "stripe_event_id", "event_type", "object_id", "stripe_created_at", "received_at", "source", "payload",
    "status", "error", "processing_attempts", "processed_at", "change_key", "duplicate_of",
)  # fmt: skip
PAYMENT_COLUMNS = (
    "payment_intent_id", "event_id", "user_session_id", "amount_cents", "currency", "status", "is_orphan",
    "refunded_cents", "failure_code", "source", "created_at", "updated_at", "succeeded_at", "refunded_at",
    "last_stripe_event_id", "charge_id", "expected_amount_cents", "expected_currency", "is_price_mismatch",
)  # fmt: skip
UNLINKED_REFUND_COLUMNS = (
    "charge_id", "event_id", "amount_cents", "refunded_cents", "currency", "first_seen_at", "updated_at",
    "last_stripe_event_id",
)  # fmt: skip
_UNLINKED_REFUND_TYPES = {"event_id": "uuid", "amount_cents": "bigint", "currency": "varchar"}
LEAD_PAYMENT_COLUMNS = ("event_id", "status", "payment_intent_id", "updated_at")
_LEAD_PAYMENT_TYPES = {
    "event_id": "uuid",
    "status": "varchar",
    "payment_intent_id": "varchar",
    "updated_at": "timestamp",
}

Row = Mapping[str, Any]


def _text(value: Any) -> Any:
    return str(value) if isinstance(value, UUID) else value


def _column_types(conn: Any, table: str) -> dict[str, str] | None:
    """The casts a bulk insert into `table` needs: PostgreSQL types an array parameter only when told."""
    return conn.column_types(table) if is_postgres(conn) else None


# --- locks every instance sees (PostgreSQL) ------------------------------------------------------------------

# Namespaces of the advisory locks (the first of their two int4 keys; the second is a hash of the name locked).
# Two-key locks never meet the migrations' one-key lock. A hash collision only makes two names wait for each other.
STRIPE_LOCKS = 0x73747270  # "strp": a Stripe event, and the PaymentIntent, charge and journey it changes
CHECKOUT_LOCKS = 0x63686B74  # "chkt": creating the PaymentIntent of one event_id
SYNC_LOCKS = 0x73796E63  # "sync": one Stripe sync at a time
LOCK_WAIT_SECONDS = 60  # a holder is bounded by Stripe's timeouts; past this the caller is answered 503


def lock_names(conn: Any, namespace: int, names: Iterable[str]) -> None:
    """Wait for, and hold until the transaction ends, the lock on each name: in one statement and one order, so two
    instances locking overlapping names cannot deadlock on them. The embedded file has one writer, which already
    serialises every write: nothing to lock there."""
    wanted = sorted(set(names))
    if is_postgres(conn) and wanted:
        conn.execute(
            "select count(pg_advisory_xact_lock(?::integer, k)) from "
            "(select distinct hashtext(n) as k from unnest(?::text[]) as t(n) order by k) s",
            [namespace, wanted],
        )


@contextmanager
def instance_lock(conn: Any, namespace: int, name: str, *, wait: bool) -> Iterator[bool]:
    """Hold the lock on `name` for the block, against every instance; yield whether it is held.

    On PostgreSQL a transaction on this (read) connection holds an advisory lock, released when the block ends or
    the connection is lost with its process. `wait`: wait up to LOCK_WAIT_SECONDS for it; else take it only if
    free. The embedded file has one process, whose own locks serialise: always held.
    """
    if not is_postgres(conn):
        yield True
        return
    with conn.raw.transaction():
        if wait:
            conn.execute("select set_config('lock_timeout', ?, true)", [f"{LOCK_WAIT_SECONDS}s"])
            conn.execute("select pg_advisory_xact_lock(?::integer, hashtext(?))", [namespace, name])
            yield True
        else:
            row = conn.execute(
                "select pg_try_advisory_xact_lock(?::integer, hashtext(?))", [namespace, name]
            ).fetchone()
            yield bool(row and row[0])


# --- stripe_events -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EventLookup:
    """What is stored about a batch of incoming events."""

    statuses: dict[str, str]  # stripe_event_id → status, for the ids already stored
    processed_changes: dict[str, str]  # change_key → the stripe_event_id that processed that change


def lookup_events(
    conn: duckdb.DuckDBPyConnection, stripe_event_ids: Iterable[str], change_keys: Iterable[str]
) -> EventLookup:
    """The stored status of these event ids, and which of these changes were already processed (one scan)."""
    ids, keys = list(set(stripe_event_ids)), list(set(change_keys))
    rows = conn.execute(
        "select stripe_event_id, status, change_key from stripe_events "
        "where stripe_event_id in (select unnest(?::text[])) or (status = 'processed' and change_key in (select unnest(?::text[])))",
        [ids, keys],
    ).fetchall()
    wanted_ids, wanted_keys = set(ids), set(keys)
    statuses = {row[0]: row[1] for row in rows if row[0] in wanted_ids}
    processed: dict[str, str] = {}
    for stripe_event_id, status, change_key in sorted(rows):
        if status == "processed" and change_key in wanted_keys:
            processed.setdefault(change_key, stripe_event_id)
    return EventLookup(statuses, processed)


def insert_events(conn: duckdb.DuckDBPyConnection, rows: Sequence[Row]) -> None:
    """Append new Stripe event rows."""
    if rows:
        select, params = batch_select(EVENT_COLUMNS, rows, _column_types(conn, "stripe_events"))
        conn.execute(f"insert into stripe_events ({', '.join(EVENT_COLUMNS)}) select {select}", params)


def settle_event(
    conn: duckdb.DuckDBPyConnection,
    stripe_event_id: str,
    status: str,
    duplicate_of: str | None,
    now: datetime,
    *,
    rejection: str | None = None,
) -> None:
    """Settle a stored event that had failed before; its last error is kept as history (a rejection replaces it)."""
    conn.execute(
        "update stripe_events set status = ?, duplicate_of = ?, processed_at = ?, error = coalesce(?, error), "
        "processing_attempts = processing_attempts + 1 where stripe_event_id = ?",
        [status, duplicate_of, now, rejection, stripe_event_id],
    )


def record_event_failure(conn: duckdb.DuckDBPyConnection, row: Row) -> None:
    """Store a failed event with its error, or count one more failed attempt; a settled event keeps its status."""
    values = [_text(row[column]) for column in EVENT_COLUMNS]
    conn.execute(
        f"insert into stripe_events ({', '.join(EVENT_COLUMNS)}) values ({', '.join('?' for _ in EVENT_COLUMNS)}) "  # noqa: S608
        "on conflict (stripe_event_id) do update set "
        "status = case when stripe_events.status in ('processed', 'ignored', 'duplicate', 'rejected') "
        "then stripe_events.status else 'failed' end, "
        "error = excluded.error, processing_attempts = stripe_events.processing_attempts + 1",
        values,
    )


# --- payments ----------------------------------------------------------------------------------------------


def get_payments(
    conn: duckdb.DuckDBPyConnection, payment_intent_ids: Iterable[str]
) -> dict[str, dict[str, Any]]:
    """Stored payments among `payment_intent_ids`, keyed by PaymentIntent id."""
    ids = list(set(payment_intent_ids))
    if not ids:
        return {}
    columns = ", ".join(PAYMENT_COLUMNS)
    rows = conn.execute(
        f"select {columns} from payments where payment_intent_id in (select unnest(?::text[]))",  # noqa: S608
        [ids],
    ).fetchall()
    return {row[0]: dict(zip(PAYMENT_COLUMNS, row, strict=True)) for row in rows}


def insert_payments(conn: duckdb.DuckDBPyConnection, rows: Sequence[Row]) -> None:
    """Append payments of PaymentIntents not stored yet."""
    if rows:
        select, params = batch_select(PAYMENT_COLUMNS, rows, _column_types(conn, "payments"))
        conn.execute(f"insert into payments ({', '.join(PAYMENT_COLUMNS)}) select {select}", params)


# Every column but the key and the creation facts, with its type (a list of only nulls needs one).
PAYMENT_UPDATES = {
    "event_id": "uuid", "user_session_id": "uuid", "amount_cents": "bigint", "currency": "varchar",
    "status": "varchar", "is_orphan": "boolean", "refunded_cents": "bigint", "failure_code": "varchar",
    "updated_at": "timestamp", "succeeded_at": "timestamp", "refunded_at": "timestamp",
    "last_stripe_event_id": "varchar", "charge_id": "varchar", "expected_amount_cents": "bigint",
    "expected_currency": "varchar", "is_price_mismatch": "boolean",
}  # fmt: skip


def update_payments(conn: duckdb.DuckDBPyConnection, rows: Sequence[Row], columns: Iterable[str]) -> None:
    """Write `columns` (names of PAYMENT_UPDATES) of stored payments, one row per PaymentIntent.

    Only the columns a batch changed are written: DuckDB's cost of an update grows with its column count.
    """
    names = [name for name in PAYMENT_UPDATES if name in set(columns)]  # the allow-list, in a fixed order
    if rows and names:
        casts = {"payment_intent_id": "varchar", **PAYMENT_UPDATES}
        select, params = batch_select(["payment_intent_id", *names], rows, casts)
        conn.execute(
            "update payments set "  # noqa: S608 - names come from PAYMENT_UPDATES
            + ", ".join(f"{name} = b.{name}" for name in names)
            + f" from (select {select}) b where payments.payment_intent_id = b.payment_intent_id",
            params,
        )


def insert_payment_if_absent(conn: duckdb.DuckDBPyConnection, row: Row) -> None:
    """Insert one payment unless its PaymentIntent is already stored."""
    conn.execute(
        f"insert into payments ({', '.join(PAYMENT_COLUMNS)}) values ({', '.join('?' for _ in PAYMENT_COLUMNS)}) "  # noqa: S608
        "on conflict (payment_intent_id) do nothing",
        [_text(row[column]) for column in PAYMENT_COLUMNS],
    )


def payment_intents_of_charges(conn: duckdb.DuckDBPyConnection, charge_ids: Iterable[str]) -> dict[str, str]:
    """charge_id → the PaymentIntent of the stored payment holding that charge, for the charges among `charge_ids`."""
    ids = list(set(charge_ids))
    if not ids:
        return {}
    rows = conn.execute(
        "select charge_id, payment_intent_id from payments where charge_id in (select unnest(?::text[]))",
        [ids],
    ).fetchall()
    return {charge_id: payment_intent_id for charge_id, payment_intent_id in rows}


def upsert_unlinked_refunds(conn: duckdb.DuckDBPyConnection, rows: Sequence[Row]) -> None:
    """Keep refunds of charges no stored payment holds, one row per charge; the refunded amount only grows."""
    if rows:
        casts = _column_types(conn, "unlinked_refunds") or _UNLINKED_REFUND_TYPES
        select, params = batch_select(UNLINKED_REFUND_COLUMNS, rows, casts)
        conn.execute(
            f"insert into unlinked_refunds ({', '.join(UNLINKED_REFUND_COLUMNS)}) select {select} "
            "on conflict (charge_id) do update set "
            "refunded_cents = greatest(unlinked_refunds.refunded_cents, excluded.refunded_cents), "
            "updated_at = excluded.updated_at, last_stripe_event_id = excluded.last_stripe_event_id",
            params,
        )


def get_payment(conn: duckdb.DuckDBPyConnection, payment_intent_id: str) -> dict[str, Any] | None:
    """One stored payment."""
    return get_payments(conn, [payment_intent_id]).get(payment_intent_id)


# --- leads and consent, as the payment side needs them ----------------------------------------------------


@dataclass(frozen=True)
class ConsentInForce:
    """The latest consent decision recorded for a journey."""

    marketing: bool
    analytics: bool
    recorded_at: datetime


@dataclass(frozen=True)
class LeadJourney:
    """What payment processing needs of a stored lead, with the consent in force for it."""

    event_id: UUID
    user_session_id: UUID
    status: str
    payment_intent_id: str | None
    consent: ConsentInForce | None


# Each lead in `l` with every consent_ledger row recorded for its event_id or its session (the latest is picked in
# Python: a grouped arg_max costs DuckDB ~10 ms of hash-table set-up per statement). Two equi-joins instead of one
# join on "event_id or session", which would be a nested loop.
_WITH_CONSENT_ROWS = """
select l.event_id, l.user_session_id, l.status, l.payment_intent_id,
    c.marketing_consent, c.analytics_consent, c.recorded_at
from l left join consent_ledger c on c.event_id = l.event_id
union all
select l.event_id, l.user_session_id, l.status, l.payment_intent_id,
    c.marketing_consent, c.analytics_consent, c.recorded_at
from l join consent_ledger c on c.user_session_id = l.user_session_id
"""
_LEAD_JOURNEYS_SQL = (
    "with l as (select event_id, user_session_id, status, payment_intent_id from leads "  # noqa: S608
    "where event_id in (select unnest(?::uuid[])))" + _WITH_CONSENT_ROWS
)
_LEAD_JOURNEY_SQL = (
    "with l as (select event_id, user_session_id, status, payment_intent_id from leads "  # noqa: S608
    "where event_id = ?)" + _WITH_CONSENT_ROWS
)


def _journeys(rows: Iterable[tuple[Any, ...]]) -> dict[UUID, LeadJourney]:
    journeys: dict[UUID, LeadJourney] = {}
    for event_id, user_session_id, status, payment_intent_id, marketing, analytics, recorded_at in rows:
        known = journeys.get(event_id)
        consent = ConsentInForce(marketing, analytics, recorded_at) if recorded_at is not None else None
        if known is None or (
            consent is not None and (known.consent is None or consent.recorded_at > known.consent.recorded_at)
        ):
            journeys[event_id] = LeadJourney(event_id, user_session_id, status, payment_intent_id, consent)
    return journeys


def lead_journeys(conn: duckdb.DuckDBPyConnection, event_ids: Iterable[UUID]) -> dict[UUID, LeadJourney]:
    """The stored leads among `event_ids`, each with the consent in force for it (its latest ledger row)."""
    return _journeys(
        conn.execute(_LEAD_JOURNEYS_SQL, [[str(event_id) for event_id in set(event_ids)]]).fetchall()
    )


# leads.status only moves forward along this order.
LEAD_RANK = {"lead": 0, "paid": 1, "refunded": 2}


def _lead_rank(column: str) -> str:
    ranks = " ".join(f"when '{status}' then {rank}" for status, rank in LEAD_RANK.items())
    return f"case {column} {ranks} end"


def update_lead_payments(conn: duckdb.DuckDBPyConnection, rows: Sequence[Row]) -> None:
    """Set leads' status and, where none is linked yet, their PaymentIntent."""
    if rows:
        select, params = batch_select(LEAD_PAYMENT_COLUMNS, rows, _LEAD_PAYMENT_TYPES)
        conn.execute(
            # Forward only, decided on the row as it is when updated: another instance may have moved it since
            # it was read (a second PaymentIntent of the same journey).
            f"update leads set status = case when {_lead_rank('b.status')} > {_lead_rank('leads.status')} "  # noqa: S608 - constants
            "then b.status else leads.status end, "
            "payment_intent_id = coalesce(leads.payment_intent_id, b.payment_intent_id), updated_at = b.updated_at "
            f"from (select {select}) b where leads.event_id = b.event_id",
            params,
        )


def link_payment_intent(
    conn: duckdb.DuckDBPyConnection, event_id: UUID, payment_intent_id: str, now: datetime
) -> str | None:
    """Record a lead's PaymentIntent unless it has one; answer the one it has now (None: no such lead).

    Decided on the row as it is when updated, so two instances linking at once cannot both win.
    """
    row = conn.execute(
        "update leads set payment_intent_id = coalesce(payment_intent_id, ?), "
        "updated_at = case when payment_intent_id is null then ? else updated_at end "
        "where event_id = ? returning payment_intent_id",
        [payment_intent_id, now, event_id],
    ).fetchone()
    return str(row[0]) if row else None


def consent_in_force(conn: duckdb.DuckDBPyConnection, event_id: UUID) -> ConsentInForce | None:
    """The latest consent_ledger row for a stored lead, matched on its event_id or its session."""
    journey = _journeys(conn.execute(_LEAD_JOURNEY_SQL, [event_id]).fetchall()).get(event_id)
    return journey.consent if journey is not None else None


def existing_delivery_keys(conn: duckdb.DuckDBPyConnection, keys: Iterable[str]) -> set[str]:
    """The idempotency keys among `keys` that already have a delivery row."""
    rows = conn.execute(
        "select idempotency_key from deliveries where idempotency_key in (select unnest(?::text[]))",
        [list(set(keys))],
    ).fetchall()
    return {row[0] for row in rows}


# --- sync cursor -------------------------------------------------------------------------------------------


def get_sync_cursor(conn: duckdb.DuckDBPyConnection, name: str) -> datetime | None:
    """Where the named sync left off (events created at or after it are still to be checked)."""
    row = conn.execute("select created_cursor_at from stripe_sync_cursor where name = ?", [name]).fetchone()
    return row[0] if row else None


def set_sync_cursor(
    conn: duckdb.DuckDBPyConnection, name: str, created_cursor_at: datetime, now: datetime
) -> None:
    """Move the named sync cursor."""
    conn.execute(
        "insert into stripe_sync_cursor values (?, ?, ?) on conflict (name) do update set "
        "created_cursor_at = excluded.created_cursor_at, updated_at = excluded.updated_at",
        [name, created_cursor_at, now],
    )
