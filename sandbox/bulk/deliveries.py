"""The outbox of a chunk: deliveries planned group by group with drawn outcomes, then its rows and attempt log."""

from __future__ import annotations

from dataclasses import dataclass, field

import duckdb
import numpy as np
import pyarrow as pa

from sandbox.bulk.columns import (
    ATTEMPT_TABLE,
    DELIVERY_TABLE,
    NEVER,
    US,
    Tally,
    append_rows,
    as_text,
    as_times,
    only,
    uuids,
)
from sandbox.bulk.consent import Consent

RETRY_DELAY = 2 * US  # a retried delivery's second attempt, after its first failed
# Delivery outcomes drawn per delivery that may be sent: one attempt delivered, delivered on a second attempt after
# a 503, dead after a permanent 400, or still retrying after a 503.
DELIVERED, RETRIED, DEAD, RETRYING = 0, 1, 2, 3


@dataclass
class Deliveries:
    """Delivery rows of one chunk, group by group, before they become columns."""

    parts: list[dict[str, np.ndarray]] = field(default_factory=list)

    def add(
        self,
        rng: np.random.Generator,
        *,
        lead: np.ndarray,
        destination: str,
        kind: str,
        purpose: str,
        suffix: np.ndarray | None,
        payload: np.ndarray,
        created_at: np.ndarray,
        allowed: np.ndarray,
        gate_reason: str,
        probabilities: tuple[float, float, float, float],
    ) -> dict[str, np.ndarray]:
        """Plan one delivery per lead given; those `allowed` are sent with a drawn outcome, the rest suppressed."""
        n = len(lead)
        outcome = rng.choice(4, size=n, p=probabilities)
        part = {
            "lead": lead,
            "destination": np.full(n, destination, dtype=object),
            "kind": np.full(n, kind, dtype=object),
            "purpose": np.full(n, purpose, dtype=object),
            "suffix": suffix if suffix is not None else np.full(n, None, dtype=object),
            "payload": payload,
            "created_at": created_at,
            "sent_at": created_at + US + rng.integers(0, 900_000, size=n),
            "outcome": np.where(allowed, outcome, -1),
            "reason": only(~allowed, gate_reason),
        }
        self.parts.append(part)
        return part

    def columns(self) -> dict[str, np.ndarray]:
        """All groups as one set of columns."""
        return {key: np.concatenate([part[key] for part in self.parts]) for key in self.parts[0]}


def write_deliveries(
    conn: duckdb.DuckDBPyConnection,
    tally: Tally,
    rng: np.random.Generator,
    event_ids: np.ndarray,
    sessions: np.ndarray,
    rows: dict[str, np.ndarray],
    consent: Consent,
    withdraws: np.ndarray,
) -> None:
    """The deliveries table and its attempt log, from the planned rows and their drawn outcomes."""
    count = len(rows["lead"])
    outcome = rows["outcome"]
    # A withdrawal suppresses what was still waiting to go for the purposes it withdrew.
    lead = rows["lead"]
    withdrawn_purpose = (rows["purpose"] == "marketing") | (
        (rows["purpose"] == "analytics") & ~consent.withdrawn_analytics[lead]
    )
    stopped = (
        (outcome == RETRYING)
        & withdraws[lead]
        & withdrawn_purpose
        & (rows["created_at"] < consent.withdrawn_at[lead])
    )
    status = np.select(
        [outcome == -1, stopped, np.isin(outcome, (DELIVERED, RETRIED)), outcome == DEAD],
        ["suppressed", "suppressed", "delivered", "dead"],
        "retrying",
    ).astype(object)
    reason = rows["reason"].copy()
    reason[stopped] = "consent withdrawn"
    reason[outcome == DEAD] = "HTTP 400: rejected by the destination"
    sent_at = rows["sent_at"]
    retry_at = sent_at + RETRY_DELAY
    delivered_at = np.where(
        outcome == DELIVERED, sent_at + 80_000, np.where(outcome == RETRIED, retry_at + 80_000, NEVER)
    )
    attempts = np.select([outcome == -1, outcome == RETRIED], [0, 2], 1)
    attempts[stopped] = 1
    failures = np.where((outcome == RETRIED) | (outcome == DEAD) | (outcome == RETRYING), 1, 0)
    keys = np.char.add(
        np.char.add(
            np.char.add(np.char.add(event_ids[lead].astype(str), ":"), rows["destination"].astype(str)),
            ":",
        ),
        rows["kind"].astype(str),
    )
    suffix = rows["suffix"]
    has_suffix = suffix != None  # noqa: E711
    keys = np.where(
        has_suffix,
        np.char.add(np.char.add(keys, ":"), np.where(has_suffix, suffix, "").astype(str)),
        keys,
    )
    delivery_ids = uuids(rng, count)
    append_rows(conn, DELIVERY_TABLE, {
        "delivery_id": as_text(delivery_ids),
        "event_id": as_text(event_ids[lead]),
        "user_session_id": as_text(sessions[lead]),
        "destination": as_text(rows["destination"]),
        "kind": as_text(rows["kind"]),
        "purpose": as_text(rows["purpose"]),
        "idempotency_key": as_text(keys.astype(object)),
        "payload": as_text(rows["payload"]),
        "status": as_text(status),
        "reason": as_text(reason),
        "attempt_count": pa.array(attempts.astype(np.int32)),
        "failure_count": pa.array(failures.astype(np.int32)),
        "next_attempt_at": as_times(np.where(status == "retrying", retry_at + 4 * US, NEVER)),
        "last_error": as_text(only(failures > 0, np.where(outcome == DEAD, "HTTP 400: invalid", "HTTP 503: unavailable"))),
        "created_at": as_times(rows["created_at"]),
        "updated_at": as_times(np.where(delivered_at != NEVER, delivered_at, sent_at)),
        "delivered_at": as_times(delivered_at),
    }, tally)  # fmt: skip
    first = np.flatnonzero(attempts >= 1)
    second = np.flatnonzero(attempts == 2)
    which = np.concatenate([first, second])
    number = np.concatenate([np.ones(len(first), np.int32), np.full(len(second), 2, np.int32)])
    first_outcome = np.select(
        [outcome[first] == DELIVERED, outcome[first] == DEAD], ["delivered", "dead"], "retrying"
    )
    attempt_outcome = np.concatenate([first_outcome, np.full(len(second), "delivered")]).astype(object)
    code = np.select([attempt_outcome == "delivered", attempt_outcome == "dead"], [200, 400], 503).astype(
        np.int32
    )
    append_rows(conn, ATTEMPT_TABLE, {
        "delivery_id": as_text(delivery_ids[which]),
        "attempt_number": pa.array(number),
        "started_at": as_times(np.concatenate([sent_at[first], retry_at[second]])),
        "duration_ms": pa.array(rng.uniform(20, 200, size=len(which))),
        "status_code": pa.array(code),
        "response_body": as_text(np.where(code == 200, '{"data": {"id": "1"}}', '{"message": "unavailable"}').astype(object)),
        "error": as_text(only(code != 200, np.where(code == 400, "HTTP 400: invalid", "HTTP 503: unavailable"))),
        "outcome": as_text(attempt_outcome),
    }, tally)  # fmt: skip
