"""Every SQL statement of the delivery worker, replay and the deliveries admin: claim, record, filter.

SQL is written once where DuckDB and PostgreSQL agree; the splits (`is_postgres`) say why. On PostgreSQL any number
of instances claim from one table at the same moment: claims lock what they take (FOR UPDATE SKIP LOCKED, a
transaction lock per journey). What instances share about a destination is `delivery_lanes` (lanes.py).
"""

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
from ingest.outbox.records import ClaimedDelivery, RecordedOutcome, Unclaimed
from ingest.store.postgres import is_postgres
from ingest.store.rows import batch_select

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
        clauses.append("strpos(lower(coalesce(last_error, '') || ' ' || coalesce(reason, '')), lower(?)) > 0")
        params.append(query.error)
    return " and ".join(clauses), params


def _uuids(values: Sequence[UUID | None]) -> list[str]:
    return [str(value) for value in values if value is not None]


def release_all_claims(conn: duckdb.DuckDBPyConnection) -> int:
    """Drop every lease (the embedded store at start-up: they all belong to a process that is gone)."""
    rows = conn.execute(
        "update deliveries set claimed_until = null, claim_token = null where claimed_until is not null "
        "returning delivery_id"
    ).fetchall()
    return len(rows)


def expired_leases(conn: duckdb.DuckDBPyConnection, now: datetime) -> int:
    """How many leases have run out without an outcome (their worker stopped): claims take them over."""
    row = conn.execute(
        "select count(*) from deliveries where claimed_until is not null and claimed_until < ?", [now]
    ).fetchone()
    return int(row[0]) if row else 0


def due_candidates(
    conn: duckdb.DuckDBPyConnection, limits: dict[str, int], now: datetime, urgent: Sequence[UUID]
) -> list[dict[str, Any]]:
    """Due, unleased deliveries: the named urgent ones, then per destination the `limits[d]` due first.

    PostgreSQL: other instances claim at the same moment, so rows another claim has locked are skipped (and stay
    locked by this one until its transaction ends), and so are journeys another instance has in flight there.
    """
    columns = ", ".join(_CANDIDATE_COLUMNS)
    shared = is_postgres(conn)
    lock = " for update skip locked" if shared else ""
    # A journey with a live lease at this destination waits (one delivery per destination and event_id out).
    sibling = (
        " and (event_id is null or not exists (select 1 from deliveries s where s.destination = "
        "deliveries.destination and s.event_id = deliveries.event_id and s.claimed_until >= ?))"
        if shared
        else ""
    )
    parts: list[str] = []
    params: list[Any] = []
    if urgent:
        parts.append(
            f"select {columns} from deliveries "  # noqa: S608 - fixed fragments
            f"where delivery_id in (select unnest(?::uuid[])) and {_WAITING_DUE}{sibling}{lock}"
        )
        params += [_uuids(urgent), now, now] + ([now] if shared else [])
    for destination, limit in limits.items():
        parts.append(
            f"select {columns} from deliveries where destination = ? and {_WAITING_DUE}{sibling} "  # noqa: S608
            f"order by next_attempt_at, created_at limit ?{lock}"
        )
        params += [destination, now, now] + ([now] if shared else []) + [limit]
    if not parts:
        return []
    if shared:  # PostgreSQL refuses FOR UPDATE under UNION; each locking select is a CTE of its own
        ctes = ", ".join(f"c{index} as ({part})" for index, part in enumerate(parts))
        selects = " union all ".join(f"select * from c{index}" for index in range(len(parts)))  # noqa: S608
        sql = f"with {ctes} {selects}"
    else:
        sql = " union all ".join(f"({part})" for part in parts)
    cursor = conn.execute(sql, params)
    return [dict(zip(_CANDIDATE_COLUMNS, row, strict=True)) for row in cursor.fetchall()]


# The namespace of the transaction locks a claim takes per (destination, event_id) on PostgreSQL ("outb"); the
# other key is a hash of the pair. Two-key locks never meet the migrations' one-key lock.
_JOURNEY_LOCKS = 1869968482


def journeys_held_elsewhere(
    conn: duckdb.DuckDBPyConnection, pairs: Sequence[tuple[str, UUID]], now: datetime
) -> set[tuple[str, str]]:
    """PostgreSQL: lock each (destination, event_id) about to be leased for this transaction, and name those
    another claim holds right now or another instance has in flight (a live lease)."""
    if not pairs:
        return set()
    destinations = [destination for destination, _ in pairs]
    events = [str(event_id) for _, event_id in pairs]
    locked = {
        (row[0], row[1])
        for row in conn.execute(
            "select k.destination, k.event_id::varchar from unnest(?::text[], ?::uuid[]) as k(destination, event_id) "
            "where pg_try_advisory_xact_lock(?, hashtext(k.destination || ':' || k.event_id::text))",
            [destinations, events, _JOURNEY_LOCKS],
        ).fetchall()
    }
    # A statement of its own, so a snapshot taken after the locks were ours: it sees the lease of any claim that
    # committed before (a claim's locks are released only once its leases are visible).
    leased = {
        (row[0], row[1])
        for row in conn.execute(
            "select destination, event_id::varchar from deliveries "
            "where claimed_until >= ? and event_id in (select unnest(?::uuid[]))",
            [now, events],
        ).fetchall()
    }
    wanted = set(zip(destinations, events, strict=True))
    return (wanted - locked) | (wanted & leased)


def any_due(conn: duckdb.DuckDBPyConnection, destinations: Sequence[str], now: datetime) -> bool:
    """Whether any delivery to these destinations is due and unleased: a read, so an idle poll writes nothing."""
    row = conn.execute(
        f"select 1 from deliveries where destination in (select unnest(?::varchar[])) and {_WAITING_DUE} limit 1",  # noqa: S608
        [list(destinations), now, now],
    ).fetchone()
    return row is not None


def lease(conn: duckdb.DuckDBPyConnection, ids: Sequence[UUID], until: datetime, token: UUID) -> None:
    """Take the lease on these deliveries under one claim token."""
    conn.execute(
        "update deliveries set claimed_until = ?, claim_token = ? where delivery_id in (select unnest(?::uuid[]))",
        [until, token, _uuids(ids)],
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
        select 'e', event_id::varchar, max(recorded_at),
               (array_agg(marketing_consent order by recorded_at desc))[1],
               (array_agg(analytics_consent order by recorded_at desc))[1]
        from consent_ledger where event_id in (select unnest(?::uuid[])) group by event_id
        union all
        select 's', user_session_id::varchar, max(recorded_at),
               (array_agg(marketing_consent order by recorded_at desc))[1],
               (array_agg(analytics_consent order by recorded_at desc))[1]
        from consent_ledger where user_session_id in (select unnest(?::uuid[])) group by user_session_id
        """,
        [events, sessions],
    ).fetchall()
    by_event = {row[1]: (row[2], row[3], row[4]) for row in rows if row[0] == "e"}
    by_session = {row[1]: (row[2], row[3], row[4]) for row in rows if row[0] == "s"}
    return Journeys(leads, by_event, by_session)


def claimed_delivery(
    row: dict[str, Any], journeys: Journeys, token: UUID | None = None, send_in: float | None = None
) -> ClaimedDelivery:
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
        claim_token=token,
        send_in=send_in,
    )


_TEXT, _INT, _TIME = pa.string(), pa.int32(), pa.timestamp("us")  # UUIDs travel as text, cast back in SQL
_OUTCOME_SCHEMA = pa.schema([
    ("delivery_id", _TEXT), ("event_id", _TEXT), ("attempted", pa.bool_()), ("attempt_number", _INT),
    ("started_at", _TIME), ("duration_ms", pa.float64()), ("status_code", _INT), ("response_body", _TEXT),
    ("error", _TEXT), ("outcome", _TEXT), ("status", _TEXT), ("reason", _TEXT), ("next_attempt_at", _TIME),
    ("spent", _INT), ("delivered_at", _TIME), ("subscriber_id", _TEXT), ("contact_id", _TEXT),
    ("claim_token", _TEXT),
])  # fmt: skip


def _arrow(items: Sequence[Any], schema: pa.Schema) -> pa.Table:
    columns: dict[str, list[Any]] = {}
    for field in schema:
        values = [getattr(item, field.name) for item in items]
        if pa.types.is_string(field.type):  # UUIDs travel as text and are cast back in SQL
            values = [None if value is None else str(value) for value in values]
        columns[field.name] = values
    return pa.table(columns, schema=schema)


# How an outcome moves its delivery (`b` is the batch of outcomes), written once for both engines.
_MOVE_DELIVERY = """
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
        claim_token = null,
        updated_at = ?
    from {batch} b
    where deliveries.delivery_id = b.delivery_id{uuid} and deliveries.claim_token is not distinct from b.claim_token{uuid}
    {returning}
"""
_RETURNING = (
    "returning deliveries.delivery_id"  # PostgreSQL; DuckDB counts instead (RETURNING doubles its update)
)
_ATTEMPT_INSERT = (
    "insert into delivery_attempts "
    "(delivery_id, attempt_number, started_at, duration_ms, status_code, response_body, error, outcome) "
)
_LEARNED = """
    update leads set
        mailerlite_subscriber_id = coalesce(b.subscriber_id, leads.mailerlite_subscriber_id),
        crm_contact_id = coalesce(b.contact_id, leads.crm_contact_id),
        updated_at = ?
    from (
        select event_id{uuid} as event_id, max(subscriber_id) as subscriber_id, max(contact_id) as contact_id
        from {batch}
        where event_id is not null and (subscriber_id is not null or contact_id is not null)
        group by event_id
    ) b
    where leads.event_id = b.event_id
"""


def record_outcomes(
    conn: duckdb.DuckDBPyConnection, outcomes: Sequence[RecordedOutcome], now: datetime
) -> set[UUID]:
    """Move the deliveries, append the attempts and put the ids learned onto leads; return the deliveries whose
    outcome was recorded.

    Only outcomes whose claim token still holds the row are recorded: a worker whose lease ran out and was taken
    over (another instance claimed the row) is refused, so it cannot overwrite the new owner's result; the new
    owner sends again with the same idempotency key. A delivery suppressed by a consent withdrawal while its request
    was in flight stays suppressed unless the request did deliver it: the row then says what really happened.
    """
    if not outcomes:
        return set()
    if is_postgres(conn):  # no arrow tables there: the batch travels as unnested arrays
        return _record_outcomes_postgres(conn, outcomes, now)
    conn.register("_outcome_batch", _arrow(outcomes, _OUTCOME_SCHEMA))
    try:
        sql = _MOVE_DELIVERY.format(batch="_outcome_batch", uuid="::uuid", returning="")
        recorded = {item.delivery_id for item in outcomes}
        if _count(conn.execute(sql, [now])) < len(
            recorded
        ):  # some refused: the rows moved carry this update's time
            recorded = {
                row[0]
                for row in conn.execute(
                    "select delivery_id from deliveries where updated_at = ? and delivery_id in (select unnest(?::uuid[]))",
                    [now, _uuids(list(recorded))],
                ).fetchall()
            }
            conn.unregister("_outcome_batch")
            outcomes = [item for item in outcomes if item.delivery_id in recorded]
            conn.register("_outcome_batch", _arrow(outcomes, _OUTCOME_SCHEMA))
        if not outcomes:
            return recorded
        conn.execute(
            _ATTEMPT_INSERT  # noqa: S608 - fixed fragments
            + "select delivery_id::uuid, attempt_number, started_at, duration_ms, status_code, response_body, "
            "error, outcome from _outcome_batch where attempted"
        )
        if any(item.subscriber_id or item.contact_id for item in outcomes):
            conn.execute(_LEARNED.format(batch="_outcome_batch", uuid="::uuid"), [now])
        return recorded
    finally:
        conn.unregister("_outcome_batch")


_OUTCOME_FIELDS = tuple(field.name for field in _OUTCOME_SCHEMA)
_OUTCOME_CASTS = {"attempted": "boolean", "spent": "integer", "subscriber_id": "text", "contact_id": "text"}


def _record_outcomes_postgres(conn: Any, outcomes: Sequence[RecordedOutcome], now: datetime) -> set[UUID]:
    """record_outcomes in one statement: the move, then the attempts and learned ids of the rows it moved."""
    types = {**conn.column_types("delivery_attempts"), **conn.column_types("deliveries")}
    casts = {name: types[name] for name in _OUTCOME_FIELDS if name in types} | _OUTCOME_CASTS
    rows = [{name: getattr(item, name) for name in _OUTCOME_FIELDS} for item in outcomes]
    select, params = batch_select(_OUTCOME_FIELDS, rows, casts)
    sql = f"""
        with b as (select {select}),
        moved as ({_MOVE_DELIVERY.format(batch="b", uuid="", returning=_RETURNING)}),
        kept as (select b.* from b join moved using (delivery_id)),
        attempts as (
            {_ATTEMPT_INSERT}
            select delivery_id, attempt_number, started_at, duration_ms, status_code, response_body, error, outcome
            from kept where attempted
        ),
        learned as ({_LEARNED.format(batch="kept", uuid="")})
        select delivery_id from moved
    """  # noqa: S608 - fixed fragments; values travel as parameters
    return {row[0] for row in conn.execute(sql, [*params, now, now]).fetchall()}


_UNCLAIMED_SCHEMA = pa.schema([("delivery_id", _TEXT), ("not_before", _TIME), ("claim_token", _TEXT)])
_RELEASE = """
    update deliveries set
        claimed_until = null,
        claim_token = null,
        next_attempt_at = greatest(deliveries.next_attempt_at, coalesce(b.not_before, deliveries.next_attempt_at))
    from {batch} b
    where deliveries.delivery_id = b.delivery_id{uuid} and deliveries.claim_token is not distinct from b.claim_token{uuid}
    {returning}
"""


def _count(cursor: Any) -> int:
    """The rows a DuckDB update changed (it answers with their count)."""
    row = cursor.fetchone()
    return int(row[0]) if row else 0


def release_claims(conn: duckdb.DuckDBPyConnection, released: Sequence[Unclaimed]) -> set[UUID]:
    """Give leases back without an attempt, pushing each row's next attempt to its `not_before`; return those
    given back (a lease another claim has taken over since is not this worker's to give)."""
    if not released:
        return set()
    if is_postgres(conn):  # no arrow tables there: the batch travels as unnested arrays
        fields = ("delivery_id", "not_before", "claim_token")
        batch = [{name: getattr(item, name) for name in fields} for item in released]
        casts = {"delivery_id": "uuid", "not_before": "timestamp", "claim_token": "uuid"}
        select, params = batch_select(fields, batch, casts)
        sql = f"with b as (select {select}) {_RELEASE.format(batch='b', uuid='', returning=_RETURNING)}"
        return {row[0] for row in conn.execute(sql, params).fetchall()}
    conn.register("_unclaimed_batch", _arrow(released, _UNCLAIMED_SCHEMA))
    try:
        given = {item.delivery_id for item in released}
        sql = _RELEASE.format(batch="_unclaimed_batch", uuid="::uuid", returning="")
        if _count(conn.execute(sql)) < len(given):  # some refused: those another claim holds now
            held = conn.execute(
                "select delivery_id from deliveries where claim_token is not null "
                "and delivery_id in (select unnest(?::uuid[]))",
                [_uuids(list(given))],
            ).fetchall()
            given -= {row[0] for row in held}
        return given
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
    if rows and is_postgres(conn):  # every instance's worker hears of them at commit (wakeups.py)
        conn.execute("select pg_notify('attribution_deliveries', '')")
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
        "select destination, status, count(*) from deliveries group by destination, status "
        "order by destination, status"
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
        select event_id::varchar, destination, kind, coalesce(payload->>'transaction_id', ''),
               status, created_at
        from deliveries
        where status in ('pending', 'retrying', 'delivered') and event_id in (select unnest(?::uuid[]))
        """,
        [_uuids(event_ids)],
    ).fetchall()
    return [(str(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4]), r[5]) for r in rows]
