"""Payments and Stripe events of a chunk: what each checkout's webhooks left, plus orphans and poison events."""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa

from sandbox.bulk.columns import (
    EVENT_TABLE,
    NEVER,
    PAYMENT_TABLE,
    US,
    Tally,
    append_rows,
    as_text,
    as_times,
    latest,
    only,
    stripe_ids,
    uuids,
)


def _event_payload(event_id: str, event_type: str, created: int, object_id: str, extra: str) -> str:
    # Realistic size and shape (~1.3 KB): what Stripe sends, trimmed to the fields the service reads plus padding
    # of the kind Stripe always includes.
    return (
        f'{{"id": "{event_id}", "object": "event", "api_version": "2024-06-20", "created": {created}, '
        f'"data": {{"object": {{"id": "{object_id}", {extra}, "capture_method": "automatic", '
        '"confirmation_method": "automatic", "livemode": false, "payment_method_types": ["card"], '
        '"payment_method_options": {"card": {"installments": null, "mandate_options": null, "network": null, '
        '"request_three_d_secure": "automatic"}}, "shipping": null, "statement_descriptor": null, '
        '"statement_descriptor_suffix": null, "transfer_data": null, "transfer_group": null, '
        '"setup_future_usage": null, "review": null, "processing": null, "on_behalf_of": null, '
        '"next_action": null, "invoice": null, "description": null, "customer": null, "canceled_at": null, '
        '"cancellation_reason": null, "application": null, "application_fee_amount": null}}, '
        f'"livemode": false, "pending_webhooks": 1, "request": {{"id": null, "idempotency_key": null}}, '
        f'"type": "{event_type}"}}'
    )


def write_payments(
    conn: duckdb.DuckDBPyConnection,
    tally: Tally,
    rng: np.random.Generator,
    start_us: int,
    days: int,
    event_ids: np.ndarray,
    sessions: np.ndarray,
    pi_ids: np.ndarray,
    amounts: np.ndarray,
    refunded_cents: np.ndarray,
    checkout: np.ndarray,
    succeeded: np.ndarray,
    failed: np.ndarray,
    refunded: np.ndarray,
    checkout_at: np.ndarray,
    success_at: np.ndarray,
    refund_at: np.ndarray,
) -> None:
    """The stripe_events and payments tables: each checkout's events and payment, orphans and poison events."""
    payer = np.flatnonzero(checkout)
    orphans = int(rng.binomial(succeeded.sum(), 0.004))
    orphan_ids = stripe_ids(rng, "pi", orphans).astype(str)
    orphan_events = only(rng.random(orphans) < 0.5, uuids(rng, orphans).astype(str))
    orphan_at = start_us + rng.integers(0, days * 86_400 * US, size=orphans)

    # Events, one list per kind; each payment's last processed event becomes its last_stripe_event_id.
    events: list[dict[str, np.ndarray]] = []

    def add_events(
        objects: np.ndarray,
        kind: str,
        status: str,
        at: np.ndarray,
        metadata: np.ndarray,
        amount: np.ndarray,
        attempts: int = 1,
        duplicate_of: np.ndarray | None = None,
    ) -> np.ndarray:
        count = len(objects)
        ids = stripe_ids(rng, "evt", count).astype(str)
        events.append(
            {
                "id": ids,
                "object": objects,
                "type": np.full(count, kind),
                "status": np.full(count, status),
                "at": at,
                "metadata": metadata,
                "amount": amount,
                "attempts": np.full(count, attempts),
                "duplicate_of": np.full(count, None, dtype=object) if duplicate_of is None else duplicate_of,
            }
        )
        return ids  # fmt: skip

    meta = event_ids.astype(str).astype(object)
    add_events(
        pi_ids[payer],
        "payment_intent.created",
        "ignored",
        checkout_at[payer],
        meta[payer],
        amounts[payer],
    )
    paid = np.flatnonzero(succeeded)
    # A few succeeded events failed once (a transient error) and were processed on Stripe's retry.
    retried = rng.random(len(paid)) < 0.003
    last_event = np.full(len(event_ids), None, dtype=object)
    succeeded_ids = add_events(pi_ids[paid], "payment_intent.succeeded", "processed", success_at[paid], meta[paid],
                               amounts[paid], attempts=1)  # fmt: skip
    events[-1]["attempts"] = np.where(retried, 2, 1)
    last_event[paid] = succeeded_ids
    # Stripe sometimes reports one change in two Event objects: the second is stored as a duplicate.
    doubled = rng.random(len(paid)) < 0.02
    dup = paid[doubled]
    add_events(pi_ids[dup], "payment_intent.succeeded", "duplicate", success_at[dup] + US, meta[dup], amounts[dup],
               0, succeeded_ids[doubled].astype(object))  # fmt: skip
    lost = np.flatnonzero(failed)
    last_event[lost] = add_events(pi_ids[lost], "payment_intent.payment_failed", "processed", checkout_at[lost] + 40 * US,
                                  meta[lost], amounts[lost])  # fmt: skip
    back = np.flatnonzero(refunded)
    last_event[back] = add_events(stripe_ids(rng, "ch", len(back)).astype(str), "charge.refunded", "processed",
                                  refund_at[back], meta[back], amounts[back])  # fmt: skip
    orphan_event_ids = add_events(orphan_ids, "payment_intent.succeeded", "processed", orphan_at,
                                  np.where(orphan_events == None, "", orphan_events), np.full(orphans, 4700))  # noqa: E711  # fmt: skip
    # Events whose processing failed for good: poison payloads that never processed.
    broken = int(rng.binomial(len(paid) + orphans, 0.002))
    add_events(stripe_ids(rng, "pi", broken).astype(str), "payment_intent.succeeded", "failed",
               start_us + rng.integers(0, days * 86_400 * US, size=broken), np.full(broken, "", dtype=object),
               np.full(broken, 4700))  # fmt: skip

    columns = {key: np.concatenate([part[key] for part in events]) for key in events[0]}
    total = len(columns["id"])
    payloads = np.array([
        _event_payload(columns["id"][i], columns["type"][i], int(columns["at"][i] // US), columns["object"][i],
                       f'"object": "payment_intent", "amount": {int(columns["amount"][i])}, "currency": "eur", '
                       f'"metadata": {{"event_id": "{columns["metadata"][i]}"}}')
        for i in range(total)
    ], dtype=object)  # fmt: skip
    status = columns["status"]
    change = np.char.add(np.char.add(columns["type"].astype(str), ":"), columns["object"].astype(str))
    append_rows(conn, EVENT_TABLE, {
        "stripe_event_id": as_text(columns["id"].astype(object)),
        "event_type": as_text(columns["type"].astype(object)),
        "object_id": as_text(columns["object"].astype(object)),
        "stripe_created_at": as_times(columns["at"]),
        "received_at": as_times(columns["at"] + US),
        "source": pa.array(np.full(total, "webhook")),
        "payload": as_text(payloads),
        "status": as_text(status.astype(object)),
        "error": as_text(only(status == "failed", "OverflowError: int too big to convert")),
        "processing_attempts": pa.array(columns["attempts"].astype(np.int32)),
        "processed_at": as_times(np.where(status == "failed", NEVER, columns["at"] + US)),
        "change_key": as_text(change.astype(object)),
        "duplicate_of": as_text(columns["duplicate_of"]),
    }, tally)  # fmt: skip
    tally.add("system_resilience", (status == "failed").sum(), total)

    status_of = np.where(
        refunded, "refunded", np.where(succeeded, "succeeded", np.where(failed, "failed", "open"))
    )
    count = len(payer) + orphans
    append_rows(conn, PAYMENT_TABLE, {
        "payment_intent_id": as_text(np.concatenate([pi_ids[payer], orphan_ids]).astype(object)),
        "event_id": as_text(np.concatenate([event_ids[payer].astype(str).astype(object), orphan_events])),
        "user_session_id": as_text(np.concatenate([sessions[payer].astype(str).astype(object), np.full(orphans, None, dtype=object)])),
        "amount_cents": pa.array(np.concatenate([amounts[payer], np.full(orphans, 4700)]).astype(np.int64)),
        "currency": pa.array(np.full(count, "eur")),
        "status": as_text(np.concatenate([status_of[payer], np.full(orphans, "succeeded")]).astype(object)),
        "is_orphan": pa.array(np.concatenate([np.zeros(len(payer), dtype=bool), np.ones(orphans, dtype=bool)])),
        "refunded_cents": pa.array(np.concatenate([refunded_cents[payer], np.zeros(orphans, dtype=np.int64)]).astype(np.int64)),
        "source": as_text(np.concatenate([np.full(len(payer), "checkout"), np.full(orphans, "webhook")]).astype(object)),
        "created_at": as_times(np.concatenate([checkout_at[payer], orphan_at])),
        "updated_at": as_times(np.concatenate([latest(checkout_at[payer], success_at[payer], refund_at[payer]), orphan_at])),
        "succeeded_at": as_times(np.concatenate([success_at[payer], orphan_at])),
        "refunded_at": as_times(np.concatenate([refund_at[payer], np.full(orphans, NEVER)])),
        "last_stripe_event_id": as_text(np.concatenate([last_event[payer], orphan_event_ids.astype(object)])),
    }, tally)  # fmt: skip
    tally.add("data_consistency", 0, orphans)
