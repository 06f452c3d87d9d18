"""Every SQL statement of the delivery worker, replay and the deliveries admin: claim, record, filter."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import duckdb
import orjson
import pyarrow as pa

from ingest.core.vocabulary import WAITING, DeliveryStatus

_LISTED_COLUMNS = (
    "delivery_id", "event_id", "user_session_id", "destination", "kind", "purpose", "idempotency_key",
    "payload", "status", "reason", "attempt_count", "failure_count", "next_attempt_at", "last_error",
    "created_at", "updated_at", "delivered_at", "claimed_until",
)  # fmt: skip
_ATTEMPT_COLUMNS = (
    "attempt_number", "started_at", "duration_ms", "status_code", "response_body", "error", "outcome",
)  # fmt: skip
_CANDIDATE_COLUMNS = (
    "delivery_id", "event_id", "user_session_id", "destination", "kind", "purpose", "idempotency_key",
    "payload", "attempt_count", "failure_count", "created_at", "next_attempt_at",
)  # fmt: skip
# What rendering reads from a lead (the referrer is never sent; the landing page, user agent and Meta's browser
# ids go to Meta; the ids are the delivery's own).
_LEAD_COLUMNS = (
    "full_name", "email", "phone", "utm_source", "utm_medium", "utm_campaign",
    "utm_content", "utm_term", "ga_client_id", "lead_created_at", "checkout_started_at", "marketing_consent",
    "analytics_consent", "consent_method", "consent_at", "consent_ip", "status", "crm_contact_id",
    "mailerlite_subscriber_id", "landing_page", "consent_user_agent", "fbp", "fbc",
)  # fmt: skip
_WAITING_DUE = "status in ('pending', 'retrying') and next_attempt_at <= ? and (claimed_until is null or claimed_until < ?)"


@dataclass(frozen=True)
class ClaimedDelivery:
    """A delivery the worker holds a lease on, with the lead and the consent in force when it was claimed."""

    delivery_id: UUID
    event_id: UUID | None
    user_session_id: UUID | None
    destination: str
    kind: str
    purpose: str
    idempotency_key: str
    payload: dict[str, Any]
    attempt_count: int
    failure_count: int
    created_at: datetime
    lead: dict[str, Any] | None
    consent_marketing: bool | None  # latest consent ledger row for the event_id or session; None: none
    consent_analytics: bool | None


@dataclass(frozen=True)
class RecordedOutcome:
    """What one send (or decision not to send) does to its delivery row, attempt log and lead."""

    delivery_id: UUID
    event_id: UUID | None
    attempted: bool  # False: no request was made (suppressed, disabled), so no attempt row
    attempt_number: int
    started_at: datetime
    duration_ms: float | None
    status_code: int | None
    response_body: str | None
    error: str | None
    outcome: str  # the attempt's outcome: delivered | retrying | dead | rate_limited | probe_failed | ...
    status: DeliveryStatus  # the delivery's new status
    reason: str | None
    next_attempt_at: datetime | None
    spent: int  # 1 when this attempt uses up one retry of the budget
    delivered_at: datetime | None
    subscriber_id: str | None
    contact_id: str | None


@dataclass(frozen=True)
class Unclaimed:
    """A lease given back without an attempt (circuit open, long pause); not due before `not_before`."""

    delivery_id: UUID
    not_before: datetime | None = None


@dataclass(frozen=True)
class DeliveryQuery:
    """A filter over deliveries; every field left None matches everything."""

    ids: tuple[UUID, ...] | None = None
    destination: str | None = None
    status: DeliveryStatus | None = None
    event_id: UUID | None = None
    since: datetime | None = None
    until: datetime | None = None
    error: str | None = None


def _where(query: DeliveryQuery) -> tuple[str, list[Any]]:
    """A parameterised WHERE clause built from fixed fragments; only values come from the query."""
    clauses: list[str] = ["true"]
    params: list[Any] = []
    if query.ids is not None:
        clauses.append("delivery_id in (select unnest(?::uuid[]))")
        params.append([str(item) for item in query.ids])
    if query.destination is not None:
        clauses.append("destination = ?")
        params.append(query.destination)
    if query.status is not None:
        clauses.append("status = ?")
        params.append(query.status)
    if query.event_id is not None:
        clauses.append("event_id = ?")
        params.append(query.event_id)
    if query.since is not None:
        clauses.append("created_at >= ?")
        params.append(query.since)
    if query.until is not None:
        clauses.append("created_at < ?")
        params.append(query.until)
    if query.error is not None:
        clauses.append("contains(lower(coalesce(last_error, '') || ' ' || coalesce(reason, '')), lower(?))")
        params.append(query.error)
    return " and ".join(clauses), params


def _uuids(values: Sequence[UUID | None]) -> list[str]:
    return [str(value) for value in values if value is not None]


def release_all_claims(conn: duckdb.DuckDBPyConnection) -> int:
    """Drop every lease; at start-up they all belong to a process that is gone."""
    rows = conn.execute(
        "update deliveries set claimed_until = null where claimed_until is not null returning delivery_id"
    ).fetchall()
    return len(rows)


def due_candidates(
    conn: duckdb.DuckDBPyConnection, limits: dict[str, int], now: datetime, urgent: Sequence[UUID]
) -> list[dict[str, Any]]:
    """Due, unleased deliveries: the named urgent ones, then per destination the `limits[d]` due first."""
    columns = ", ".join(_CANDIDATE_COLUMNS)
    parts: list[str] = []
    params: list[Any] = []
    if urgent:
        parts.append(
            f"(select {columns} from deliveries "  # noqa: S608 - fixed fragments
            f"where delivery_id in (select unnest(?::uuid[])) and {_WAITING_DUE})"
        )
        params += [_uuids(urgent), now, now]
    for destination, limit in limits.items():
        parts.append(
            f"(select {columns} from deliveries where destination = ? and {_WAITING_DUE} "  # noqa: S608
            "order by next_attempt_at, created_at limit ?)"
        )
        params += [destination, now, now, limit]
    if not parts:
        return []
    cursor = conn.execute(" union all ".join(parts), params)
    return [dict(zip(_CANDIDATE_COLUMNS, row, strict=True)) for row in cursor.fetchall()]


def any_due(conn: duckdb.DuckDBPyConnection, destinations: Sequence[str], now: datetime) -> bool:
    """Whether any delivery to these destinations is due and unleased: a read, so an idle poll writes nothing."""
    row = conn.execute(
        f"select 1 from deliveries where destination in (select unnest(?::varchar[])) and {_WAITING_DUE} limit 1",  # noqa: S608
        [list(destinations), now, now],
    ).fetchone()
    return row is not None


def lease(conn: duckdb.DuckDBPyConnection, ids: Sequence[UUID], until: datetime) -> None:
    """Take the lease on these deliveries."""
    conn.execute(
        "update deliveries set claimed_until = ? where delivery_id in (select unnest(?::uuid[]))",
        [until, _uuids(ids)],
    )


@dataclass(frozen=True)
class Journeys:
    """Leads by event_id, and the latest consent ledger row by event_id and by session (ids as text: a claim
    turns thousands of ids into Python objects, and parsing a UUID costs several times more than printing one)."""

    leads: dict[str, dict[str, Any]]
    consent_by_event: dict[str, tuple[datetime, bool, bool]]
    consent_by_session: dict[str, tuple[datetime, bool, bool]]


def journeys(
    conn: duckdb.DuckDBPyConnection, event_ids: Sequence[UUID | None], session_ids: Sequence[UUID | None]
) -> Journeys:
    """The leads of these event_ids, and the latest consent decision of each event_id and session."""
    events, sessions = _uuids(event_ids), _uuids(session_ids)
    cursor = conn.execute(
        f"select event_id::varchar, {', '.join(_LEAD_COLUMNS)} from leads "  # noqa: S608 - fixed fragments
        "where event_id in (select unnest(?::uuid[]))",
        [events],
    )
    leads = {row[0]: dict(zip(_LEAD_COLUMNS, row[1:], strict=True)) for row in cursor.fetchall()}
    rows = conn.execute(
        """
        select 'e', event_id::varchar, max(recorded_at), arg_max(marketing_consent, recorded_at),
               arg_max(analytics_consent, recorded_at)
        from consent_ledger where event_id in (select unnest(?::uuid[])) group by event_id
        union all
        select 's', user_session_id::varchar, max(recorded_at), arg_max(marketing_consent, recorded_at),
               arg_max(analytics_consent, recorded_at)
        from consent_ledger where user_session_id in (select unnest(?::uuid[])) group by user_session_id
        """,
        [events, sessions],
    ).fetchall()
    by_event = {row[1]: (row[2], row[3], row[4]) for row in rows if row[0] == "e"}
    by_session = {row[1]: (row[2], row[3], row[4]) for row in rows if row[0] == "s"}
    return Journeys(leads, by_event, by_session)


def claimed_delivery(row: dict[str, Any], journeys: Journeys) -> ClaimedDelivery:
    """A candidate row with its lead and the latest consent decision of its event_id or session."""
    event_id = str(row["event_id"]) if row["event_id"] is not None else None
    found = [
        journeys.consent_by_event.get(event_id) if event_id is not None else None,
        journeys.consent_by_session.get(str(row["user_session_id"]))
        if row["user_session_id"] is not None
        else None,
    ]
    decisions = [item for item in found if item is not None]
    latest = max(decisions, key=lambda item: item[0]) if decisions else None
    payload = row["payload"]
    return ClaimedDelivery(
        delivery_id=row["delivery_id"],
        event_id=row["event_id"],
        user_session_id=row["user_session_id"],
        destination=row["destination"],
        kind=row["kind"],
        purpose=row["purpose"],
        idempotency_key=row["idempotency_key"],
        payload=orjson.loads(payload) if payload else {},
        attempt_count=row["attempt_count"],
        failure_count=row["failure_count"],
        created_at=row["created_at"],
        lead=journeys.leads.get(event_id) if event_id is not None else None,
        consent_marketing=latest[1] if latest else None,
        consent_analytics=latest[2] if latest else None,
    )


_OUTCOME_SCHEMA = pa.schema(
    [
        ("delivery_id", pa.string()),
        ("event_id", pa.string()),
        ("attempted", pa.bool_()),
        ("attempt_number", pa.int32()),
        ("started_at", pa.timestamp("us")),
        ("duration_ms", pa.float64()),
        ("status_code", pa.int32()),
        ("response_body", pa.string()),
        ("error", pa.string()),
        ("outcome", pa.string()),
        ("status", pa.string()),
        ("reason", pa.string()),
        ("next_attempt_at", pa.timestamp("us")),
        ("spent", pa.int32()),
        ("delivered_at", pa.timestamp("us")),
        ("subscriber_id", pa.string()),
        ("contact_id", pa.string()),
    ]
)


def _arrow(items: Sequence[Any], schema: pa.Schema) -> pa.Table:
    columns: dict[str, list[Any]] = {}
    for field in schema:
        values = [getattr(item, field.name) for item in items]
        if pa.types.is_string(field.type):  # UUIDs travel as text and are cast back in SQL
            values = [None if value is None else str(value) for value in values]
        columns[field.name] = values
    return pa.table(columns, schema=schema)


def record_outcomes(
    conn: duckdb.DuckDBPyConnection, outcomes: Sequence[RecordedOutcome], now: datetime
) -> None:
    """Append the attempts and move the deliveries (and the ids learned onto leads) in three statements.

    A delivery suppressed by a consent withdrawal while its request was in flight stays suppressed unless the
    request did deliver it: the row then says what really happened.
    """
    if not outcomes:
        return
    conn.register("_outcome_batch", _arrow(outcomes, _OUTCOME_SCHEMA))
    try:
        conn.execute(
            """
            insert into delivery_attempts
                (delivery_id, attempt_number, started_at, duration_ms, status_code, response_body, error, outcome)
            select delivery_id::uuid, attempt_number, started_at, duration_ms, status_code, response_body,
                   error, outcome
            from _outcome_batch where attempted
            """
        )
        conn.execute(
            """
            update deliveries set
                status = case when deliveries.status = 'suppressed' and b.status <> 'delivered'
                              then 'suppressed' else b.status end,
                reason = case when deliveries.status = 'suppressed' and b.status <> 'delivered'
                              then deliveries.reason else b.reason end,
                next_attempt_at = case when deliveries.status = 'suppressed' and b.status <> 'delivered'
                                       then null else b.next_attempt_at end,
                last_error = case when b.attempted then b.error else deliveries.last_error end,
                attempt_count = deliveries.attempt_count + case when b.attempted then 1 else 0 end,
                failure_count = deliveries.failure_count + b.spent,
                delivered_at = coalesce(b.delivered_at, deliveries.delivered_at),
                claimed_until = null,
                updated_at = ?
            from _outcome_batch b
            where deliveries.delivery_id = b.delivery_id::uuid
            """,
            [now],
        )
        learned = [item for item in outcomes if item.subscriber_id or item.contact_id]
        if learned:
            conn.execute(
                """
                update leads set
                    mailerlite_subscriber_id = coalesce(b.subscriber_id, leads.mailerlite_subscriber_id),
                    crm_contact_id = coalesce(b.contact_id, leads.crm_contact_id),
                    updated_at = ?
                from (
                    select event_id::uuid as event_id, max(subscriber_id) as subscriber_id,
                           max(contact_id) as contact_id
                    from _outcome_batch
                    where event_id is not null and (subscriber_id is not null or contact_id is not null)
                    group by event_id
                ) b
                where leads.event_id = b.event_id
                """,
                [now],
            )
    finally:
        conn.unregister("_outcome_batch")


_UNCLAIMED_SCHEMA = pa.schema([("delivery_id", pa.string()), ("not_before", pa.timestamp("us"))])


def release_claims(conn: duckdb.DuckDBPyConnection, released: Sequence[Unclaimed]) -> None:
    """Give leases back without an attempt, pushing each row's next attempt to its `not_before`."""
    if not released:
        return
    conn.register("_unclaimed_batch", _arrow(released, _UNCLAIMED_SCHEMA))
    try:
        conn.execute(
            """
            update deliveries set
                claimed_until = null,
                next_attempt_at = greatest(deliveries.next_attempt_at, coalesce(b.not_before, deliveries.next_attempt_at))
            from _unclaimed_batch b
            where deliveries.delivery_id = b.delivery_id::uuid
            """
        )
    finally:
        conn.unregister("_unclaimed_batch")


def queue_unsubscribes(
    conn: duckdb.DuckDBPyConnection,
    *,
    event_id: UUID | None,
    user_session_id: UUID,
    consent_id: UUID,
    now: datetime,
) -> int:
    """Queue a MailerLite unsubscribe for each journey of this session / event_id that is subscribed there.

    Subscribed means an upsert was delivered or is in flight, with no unsubscribe queued since. The
    unsubscribe's purpose is `contact`, so the withdrawal that causes it does not suppress it.
    """
    rows = conn.execute(
        """
        insert into deliveries (delivery_id, event_id, user_session_id, destination, kind, purpose,
                                idempotency_key, payload, status, reason, next_attempt_at, created_at, updated_at)
        select gen_random_uuid(), s.event_id, s.user_session_id, 'mailerlite', 'unsubscribe', 'contact',
               s.event_id::varchar || ':mailerlite:unsubscribe:' || ?::varchar, '{}', 'pending', null, ?, ?, ?
        from (
            select event_id, max(user_session_id::varchar)::uuid as user_session_id, max(created_at) as upserted_at
            from deliveries
            where destination = 'mailerlite' and kind <> 'unsubscribe' and event_id is not null
              and (user_session_id = ? or event_id = ?)
              and (status = 'delivered' or claimed_until is not null)
            group by event_id
        ) s
        where not exists (
            select 1 from deliveries u
            where u.destination = 'mailerlite' and u.kind = 'unsubscribe' and u.event_id = s.event_id
              and u.status <> 'dead' and u.created_at >= s.upserted_at
        )
        returning delivery_id
        """,
        [str(consent_id), now, now, now, user_session_id, event_id],
    ).fetchall()
    return len(rows)


def list_deliveries(
    conn: duckdb.DuckDBPyConnection, query: DeliveryQuery, limit: int
) -> list[dict[str, Any]]:
    """Deliveries matching `query`, newest first."""
    where, params = _where(query)
    cursor = conn.execute(
        f"select {', '.join(_LISTED_COLUMNS)} from deliveries where {where} "  # noqa: S608 - fixed fragments
        "order by created_at desc, delivery_id limit ?",
        [*params, limit],
    )
    return [dict(zip(_LISTED_COLUMNS, row, strict=True)) for row in cursor.fetchall()]


def count_deliveries(conn: duckdb.DuckDBPyConnection, query: DeliveryQuery) -> int:
    """How many deliveries match `query` and are not in flight (what a replay would re-queue)."""
    where, params = _where(query)
    row = conn.execute(
        f"select count(*) from deliveries where {where} and claimed_until is null",  # noqa: S608
        params,
    ).fetchone()
    return int(row[0]) if row else 0


def get_delivery(conn: duckdb.DuckDBPyConnection, delivery_id: UUID) -> dict[str, Any] | None:
    """One delivery with its attempts, oldest attempt first."""
    found = list_deliveries(conn, DeliveryQuery(ids=(delivery_id,)), 1)
    if not found:
        return None
    cursor = conn.execute(
        f"select {', '.join(_ATTEMPT_COLUMNS)} from delivery_attempts where delivery_id = ? "  # noqa: S608
        "order by attempt_number",
        [delivery_id],
    )
    attempts = [dict(zip(_ATTEMPT_COLUMNS, row, strict=True)) for row in cursor.fetchall()]
    return found[0] | {"attempts": attempts}


def requeue_deliveries(conn: duckdb.DuckDBPyConnection, query: DeliveryQuery, now: datetime) -> list[UUID]:
    """Make matching deliveries not in flight pending now with a fresh retry budget; attempts are kept."""
    where, params = _where(query)
    sql = (
        "update deliveries set status = ?, failure_count = 0, next_attempt_at = ?, reason = null, "  # noqa: S608
        f"updated_at = ? where {where} and claimed_until is null returning delivery_id"
    )
    rows = conn.execute(sql, [DeliveryStatus.PENDING, now, now, *params]).fetchall()
    return [row[0] for row in rows]


def suppress_pending_deliveries(
    conn: duckdb.DuckDBPyConnection,
    *,
    event_id: UUID | None,
    user_session_id: UUID,
    purposes: Sequence[str],
    reason: str,
    now: datetime,
) -> int:
    """Mark not-yet-sent deliveries of `purposes` for this journey suppressed; return how many."""
    row = conn.execute(
        "update deliveries set status = ?, reason = ?, next_attempt_at = null, updated_at = ? "
        "where status in (select unnest(?::text[])) and purpose in (select unnest(?::text[])) "
        "and (user_session_id = ? or event_id = ?) returning delivery_id",
        [DeliveryStatus.SUPPRESSED, reason, now, sorted(WAITING), list(purposes), user_session_id, event_id],
    ).fetchall()
    return len(row)


def deliveries_by_status(conn: duckdb.DuckDBPyConnection) -> dict[str, dict[str, int]]:
    """Delivery counts by destination, then status."""
    result: dict[str, dict[str, int]] = {}
    for destination, status, count in conn.execute(
        "select destination, status, count(*) from deliveries group by all order by all"
    ).fetchall():
        result.setdefault(destination, {})[status] = int(count)
    return result


def sent_or_waiting(
    conn: duckdb.DuckDBPyConnection, event_ids: Sequence[UUID]
) -> list[tuple[str, str, str, str, str, datetime]]:
    """(event_id, destination, kind, transaction_id or '', status, created_at) of these journeys' deliveries that
    are delivered or still waiting to be sent."""
    rows = conn.execute(
        """
        select event_id::varchar, destination, kind, coalesce(json_extract_string(payload, '$.transaction_id'), ''),
               status, created_at
        from deliveries
        where status in ('pending', 'retrying', 'delivered') and event_id in (select unnest(?::uuid[]))
        """,
        [_uuids(event_ids)],
    ).fetchall()
    return [(str(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4]), r[5]) for r in rows]
