"""Bulk mode of the scenario generator: a large synthetic database written straight into the tables, for benchmarks.

The HTTP scenario (`sandbox.scenario`) is the proof that the SQL models measure what the service does; it is too
slow for a million leads. This mode writes the same shapes the service writes (leads with their consent ledger,
the outbox with its attempt log, payments, Stripe events) from a seed, vectorised with numpy and appended through
Arrow, chunk by chunk, so a million leads with ~3.7 M deliveries take a minute or two on two cores. It keeps its own
ground truth: every count the five metrics need, computed from the arrays it drew, independently of the SQL.

What it draws, per lead: a capture time over `days`, a UTM mix, marketing / analytics consent, sometimes a second
lead in the same session (its consent then governs both), sometimes a later withdrawal (an unsubscribe follows),
and rarely a MailerLite send made after a withdrawal (a consent breach for the metric to find). 28% reach checkout;
of those most pay, some fail or abandon, a few are refunded (fully) or partly refunded. Deliveries mostly succeed,
some die on a permanent 4xx, some needed a retry, a few are still retrying. Stripe events include ignored types,
duplicates, events that failed once and then succeeded, and a few that failed for good. A few payments are orphans.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from ingest.reconcile.models import METRIC_NAMES, ModelParams
from ingest.store.database import connect, migrate
from sandbox.scenario import UTM_MIX, GroundTruth

US = 1_000_000  # microseconds per second
RETRY_DELAY = 2 * US  # a retried delivery's second attempt, after its first failed
NEVER = np.iinfo(np.int64).max
PRICES_CENTS = np.array([4700, 9700, 14700])
CONSENT_METHODS = np.array(["modal", "checkbox", "implied"])
# Delivery outcomes drawn per delivery that may be sent: one attempt delivered, delivered on a second attempt after
# a 503, dead after a permanent 400, or still retrying after a 503.
DELIVERED, RETRIED, DEAD, RETRYING = 0, 1, 2, 3
LEAD_TABLE, LEDGER_TABLE, DELIVERY_TABLE, ATTEMPT_TABLE = (
    "leads",
    "consent_ledger",
    "deliveries",
    "delivery_attempts",
)
PAYMENT_TABLE, EVENT_TABLE = "payments", "stripe_events"
_TABLES = (LEAD_TABLE, LEDGER_TABLE, DELIVERY_TABLE, ATTEMPT_TABLE, PAYMENT_TABLE, EVENT_TABLE)


@dataclass(frozen=True)
class BulkSpec:
    """How big a database to draw, over how many days, from which seed."""

    leads: int = 1_000_000
    days: int = 90
    seed: int = 0
    chunk_leads: int = 250_000
    start: datetime = datetime(2025, 1, 6)


@dataclass
class _Truth:
    """Numerators and denominators accumulated chunk by chunk."""

    counts: dict[str, list[int]] = field(default_factory=lambda: {name: [0, 0] for name in METRIC_NAMES})
    rows: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_TABLES, 0))

    def add(self, metric: str, numerator: int, denominator: int) -> None:
        self.counts[metric][0] += int(numerator)
        self.counts[metric][1] += int(denominator)


def _uuids(rng: np.random.Generator, n: int) -> np.ndarray:
    """n random version-4 UUIDs as 36-byte strings, without a Python object per value."""
    raw = rng.integers(0, 256, size=(n, 16), dtype=np.uint8)
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80
    hexed = np.frombuffer(raw.tobytes().hex().encode(), dtype="S1").reshape(n, 32)
    dash = np.full((n, 1), b"-", dtype="S1")
    parts = [
        hexed[:, :8],
        dash,
        hexed[:, 8:12],
        dash,
        hexed[:, 12:16],
        dash,
        hexed[:, 16:20],
        dash,
        hexed[:, 20:],
    ]
    return np.ascontiguousarray(np.concatenate(parts, axis=1)).view("S36").ravel()


def _stripe_ids(rng: np.random.Generator, prefix: str, n: int) -> np.ndarray:
    raw = rng.integers(0, 256, size=(n, 12), dtype=np.uint8)
    hexed = np.frombuffer(raw.tobytes().hex().encode(), dtype="S24")
    return np.char.add(prefix.encode() + b"_", hexed)


def _text(values: np.ndarray) -> pa.Array:
    """A byte-string or object numpy array as an Arrow string column (None stays null)."""
    if values.dtype.kind == "S":
        return pa.array(values, type=pa.binary()).cast(pa.string())
    return pa.array(values, type=pa.string())


def _times(micros: np.ndarray) -> pa.Array:
    """Microseconds since the epoch as an Arrow timestamp column; NEVER is null."""
    mask = micros == NEVER
    return pa.array(np.where(mask, 0, micros).astype("datetime64[us]"), mask=mask, type=pa.timestamp("us"))


def _append(conn: duckdb.DuckDBPyConnection, table: str, columns: dict[str, Any], truth: _Truth) -> None:
    """Append one Arrow batch to one of the fixed tables above, columns matched by name."""
    batch = pa.table(columns)
    conn.register("_bulk_batch", batch)
    conn.execute(f"insert into {table} by name select * from _bulk_batch")  # noqa: S608 - a fixed table name
    conn.unregister("_bulk_batch")
    truth.rows[table] += batch.num_rows


@dataclass
class _Consent:
    """Each lead's consent decisions: at capture, an optional withdrawal, and its session partner's capture."""

    captured_at: np.ndarray
    marketing: np.ndarray
    analytics: np.ndarray
    withdrawn_at: np.ndarray  # NEVER when none
    withdrawn_marketing: np.ndarray
    withdrawn_analytics: np.ndarray
    partner: np.ndarray  # index of the other lead of a shared session, or -1

    def at(self, lead: np.ndarray, when: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The consent in force for each lead at each time: the latest decision recorded at or before it."""
        best = self.captured_at[lead]
        marketing, analytics = self.marketing[lead].copy(), self.analytics[lead].copy()
        withdrawn = self.withdrawn_at[lead]
        use = (withdrawn <= when) & (withdrawn >= best)
        marketing = np.where(use, self.withdrawn_marketing[lead], marketing)
        analytics = np.where(use, self.withdrawn_analytics[lead], analytics)
        best = np.where(use, withdrawn, best)
        partner = self.partner[lead]
        has_partner = partner >= 0
        safe = np.where(has_partner, partner, 0)
        partner_at = np.where(has_partner, self.captured_at[safe], NEVER)
        use = has_partner & (partner_at <= when) & (partner_at >= best)
        marketing = np.where(use, self.marketing[safe], marketing)
        analytics = np.where(use, self.analytics[safe], analytics)
        return marketing, analytics


@dataclass
class _Deliveries:
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
            "reason": _only(~allowed, gate_reason),
        }
        self.parts.append(part)
        return part

    def columns(self) -> dict[str, np.ndarray]:
        """All groups as one set of columns."""
        return {key: np.concatenate([part[key] for part in self.parts]) for key in self.parts[0]}


def _shift_away(times: np.ndarray, avoid: np.ndarray, before: int, after: int) -> np.ndarray:
    """Move each time in `times` later until none falls within [avoid - before, avoid + after]."""
    shifted = times.copy()
    for _ in range(8):
        clash = (
            (shifted != NEVER) & (avoid != NEVER) & (shifted >= avoid - before) & (shifted <= avoid + after)
        )
        if not clash.any():
            break
        shifted = np.where(clash, avoid + after + 60 * US, shifted)
    return shifted


def _only(mask: np.ndarray, values: np.ndarray | str) -> np.ndarray:
    """`values` where `mask` holds, None (a null) elsewhere, as an object array."""
    out = np.full(len(mask), None, dtype=object)
    out[mask] = values[mask] if isinstance(values, np.ndarray) else values
    return out


def _latest(*times: np.ndarray) -> np.ndarray:
    """Element-wise latest of several time columns, ignoring NEVER."""
    latest: np.ndarray = np.max(np.stack([np.where(t == NEVER, 0, t) for t in times]), axis=0)
    return latest


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


class _Chunk:
    """One chunk of leads and everything they cause."""

    def __init__(self, spec: BulkSpec, number: int, size: int, params: ModelParams) -> None:
        self.spec = spec
        self.params = params
        self.n = size
        self.rng = np.random.default_rng([spec.seed, number])
        self.offset = number * spec.chunk_leads
        # spec.start is naive UTC, like every *_at column.
        self.start_us = int((spec.start - datetime(1970, 1, 1)).total_seconds()) * US

    def build(self, conn: duckdb.DuckDBPyConnection, truth: _Truth) -> None:
        rng, n = self.rng, self.n
        index = np.arange(n)
        event_ids, sessions = _uuids(rng, n), _uuids(rng, n)
        captured = self.start_us + rng.integers(0, self.spec.days * 86_400 * US, size=n)
        # Every second lead may be the same visitor's second lead, ten minutes after the first, in its session.
        second = (rng.random(n) < 0.08) & (index % 2 == 1)
        first = np.flatnonzero(second) - 1
        sessions[second] = sessions[first]
        captured[second] = captured[first] + 600 * US
        partner = np.full(n, -1)
        partner[second] = first
        partner[first] = np.flatnonzero(second)

        marketing = rng.random(n) < 0.7
        analytics = rng.random(n) < 0.8
        alone = partner < 0
        breach = alone & marketing & (rng.random(n) < 0.001)
        withdraws = alone & ~breach & (rng.random(n) < 0.03)
        withdrawn_at = np.full(n, NEVER)
        withdrawn_at[withdraws] = captured[withdraws] + rng.integers(
            86_400 * US, 20 * 86_400 * US, withdraws.sum()
        )
        withdrawn_at[breach] = captured[breach] + US // 2
        withdrawn_analytics = analytics & ((rng.random(n) < 0.5) | breach)

        # Payments: times first, so consent changes can be kept clear of the moments deliveries are planned and sent.
        checkout = rng.random(n) < 0.28
        pay_draw = rng.random(n)
        succeeded = checkout & (pay_draw < 0.85)
        failed = checkout & (pay_draw >= 0.85) & (pay_draw < 0.90)
        refunded = succeeded & (rng.random(n) < 0.06)
        partly_refunded = succeeded & ~refunded & (rng.random(n) < 0.01)
        checkout_at = np.where(checkout, captured + rng.integers(300 * US, 3 * 86_400 * US, size=n), NEVER)
        # A first lead's payment stays clear of its partner's capture, which changes the consent in force.
        partner_capture = np.where(partner >= 0, captured[np.where(partner >= 0, partner, 0)], NEVER)
        success_at = np.where(succeeded, checkout_at + 40 * US, NEVER)
        clash = succeeded & (np.abs(success_at - partner_capture) <= 15 * US)
        checkout_at = np.where(clash, checkout_at + 120 * US, checkout_at)
        success_at = np.where(succeeded, checkout_at + 40 * US, NEVER)
        refund_at = np.where(
            refunded, success_at + rng.integers(86_400 * US, 20 * 86_400 * US, size=n), NEVER
        )
        withdrawn_at = _shift_away(withdrawn_at, success_at, US, 10 * US)
        withdrawn_at = _shift_away(withdrawn_at, refund_at, US, 10 * US)
        consent = _Consent(
            captured,
            marketing,
            analytics,
            withdrawn_at,
            np.zeros(n, dtype=bool),
            withdrawn_analytics,
            partner,
        )

        require = self.params.require_consent
        deliveries = _Deliveries()
        empty = np.full(n, "{}", dtype=object)
        lead_ml = deliveries.add(
            rng, lead=index, destination="mailerlite", kind="subscriber_upsert", purpose="marketing", suffix=None,
            payload=empty, created_at=captured, allowed=marketing | (not require),
            gate_reason="no marketing consent", probabilities=(0.96, 0.015, 0.02, 0.005),
        )  # fmt: skip
        deliveries.add(
            rng, lead=index, destination="sgtm", kind="generate_lead", purpose="analytics", suffix=None,
            payload=empty, created_at=captured, allowed=analytics | (not require),
            gate_reason="no analytics consent", probabilities=(0.985, 0.0, 0.01, 0.005),
        )  # fmt: skip
        deliveries.add(
            rng, lead=index, destination="crm", kind="contact_upsert", purpose="contact", suffix=None,
            payload=empty, created_at=captured, allowed=np.ones(n, dtype=bool),
            gate_reason="", probabilities=(0.97, 0.01, 0.015, 0.005),
        )  # fmt: skip
        # The breach: the upsert went out after the withdrawal it should have waited for.
        lead_ml["outcome"][breach] = DELIVERED

        pi_ids = _stripe_ids(rng, "pi", n).astype(str)
        amounts = PRICES_CENTS[rng.integers(0, len(PRICES_CENTS), size=n)]
        refunded_cents = np.where(refunded, amounts, np.where(partly_refunded, amounts // 2, 0))
        payers = np.flatnonzero(succeeded)
        refunders = np.flatnonzero(refunded)
        paid_m, paid_a = consent.at(payers, success_at[payers])
        refund_m, refund_a = consent.at(refunders, refund_at[refunders])
        # The CRM and MailerLite get the payment's state; sGTM gets the purchase and refund events below.
        for state, who, at, m_ok in (
            ("paid", payers, success_at[payers], paid_m),
            ("refunded", refunders, refund_at[refunders], refund_m),
        ):
            crm_payloads = np.array(
                [
                    json.dumps({"lead_status": state, "amount_cents": int(amounts[i]), "currency": "EUR",
                                "payment_intent_id": pi_ids[i]})
                    for i in who
                ],
                dtype=object,
            )  # fmt: skip
            deliveries.add(
                rng, lead=who, destination="crm", kind="contact_upsert", purpose="contact",
                suffix=np.full(len(who), state, dtype=object), payload=crm_payloads, created_at=at,
                allowed=np.ones(len(who), dtype=bool), gate_reason="", probabilities=(0.97, 0.01, 0.015, 0.005),
            )  # fmt: skip
            deliveries.add(
                rng, lead=who, destination="mailerlite", kind="subscriber_upsert", purpose="marketing",
                suffix=np.full(len(who), state, dtype=object),
                payload=np.full(len(who), json.dumps({"payment_status": state}), dtype=object), created_at=at,
                allowed=m_ok | (not require), gate_reason="no marketing consent",
                probabilities=(0.96, 0.015, 0.02, 0.005),
            )  # fmt: skip
        purchase_payloads = np.array(
            [
                json.dumps({"transaction_id": pi_ids[i], "value": amounts[i] / 100, "currency": "EUR"})
                for i in payers
            ],
            dtype=object,
        )
        purchase = deliveries.add(
            rng, lead=payers, destination="sgtm", kind="purchase", purpose="analytics",
            suffix=pi_ids[payers].astype(object), payload=purchase_payloads, created_at=success_at[payers],
            allowed=paid_a | (not require), gate_reason="no analytics consent",
            probabilities=(0.985, 0.0, 0.01, 0.005),
        )  # fmt: skip
        refund_payloads = np.array(
            [json.dumps({"transaction_id": pi_ids[i], "value": amounts[i] / 100, "currency": "EUR"})
             for i in refunders],
            dtype=object,
        )  # fmt: skip
        deliveries.add(
            rng, lead=refunders, destination="sgtm", kind="refund", purpose="analytics",
            suffix=pi_ids[refunders].astype(object), payload=refund_payloads, created_at=refund_at[refunders],
            allowed=refund_a | (not require), gate_reason="no analytics consent",
            probabilities=(0.985, 0.0, 0.01, 0.005),
        )  # fmt: skip
        # A withdrawal unsubscribes a lead whose upsert was delivered.
        unsubscribed = np.flatnonzero(withdraws & np.isin(lead_ml["outcome"], (DELIVERED, RETRIED)))
        deliveries.add(
            rng, lead=unsubscribed, destination="mailerlite", kind="unsubscribe", purpose="contact",
            suffix=np.full(len(unsubscribed), "withdrawal", dtype=object), payload=np.full(len(unsubscribed), "{}", dtype=object),
            created_at=withdrawn_at[unsubscribed], allowed=np.ones(len(unsubscribed), dtype=bool), gate_reason="",
            probabilities=(1.0, 0.0, 0.0, 0.0),
        )  # fmt: skip
        rows = deliveries.columns()
        self._write_leads_and_consent(
            conn, truth, event_ids, sessions, captured, consent, withdraws | breach, checkout_at, succeeded,
            refunded, pi_ids, rows,
        )  # fmt: skip
        self._write_deliveries(conn, truth, event_ids, sessions, rows, consent, withdraws)
        self._write_payments(
            conn, truth, event_ids, sessions, pi_ids, amounts, refunded_cents, checkout, succeeded, failed, refunded,
            checkout_at, success_at, refund_at, consent,
        )  # fmt: skip

        # Ground truth, from the arrays drawn above.
        delivered = np.isin(rows["outcome"], (DELIVERED, RETRIED))
        in_crm = np.zeros(n, dtype=bool)
        in_crm[rows["lead"][delivered & (rows["destination"] == "crm")]] = True
        truth.add("crm_coverage", in_crm.sum(), n)
        needs = np.flatnonzero(delivered & (rows["destination"] != "crm") & (rows["kind"] != "unsubscribe"))
        sent = np.where(
            rows["outcome"][needs] == RETRIED, rows["sent_at"][needs] + RETRY_DELAY, rows["sent_at"][needs]
        )
        m_then, a_then = consent.at(rows["lead"][needs], sent)
        with_consent = np.where(rows["destination"][needs] == "mailerlite", m_then, a_then)
        truth.add("consent_compliance", with_consent.sum(), len(needs))
        purchase_sent = np.isin(purchase["outcome"], (DELIVERED, RETRIED))
        in_scope = paid_a | (not require)
        truth.add("attribution_accuracy", (purchase_sent & in_scope).sum(), in_scope.sum())
        now_m, _ = consent.at(index, np.full(n, NEVER - 1))
        in_ml = np.zeros(n, dtype=bool)
        in_ml[
            rows["lead"][
                delivered & (rows["destination"] == "mailerlite") & (rows["kind"] == "subscriber_upsert")
            ]
        ] = True
        in_sgtm = np.zeros(n, dtype=bool)
        in_sgtm[payers[purchase_sent]] = True
        sgtm_due = np.zeros(n, dtype=bool)
        sgtm_due[payers[in_scope]] = True
        consistent = (
            (in_crm | (not (self.params.crm_enabled and self.params.crm_enable_lead_capture)))
            & (in_ml | ~(now_m | (not require)))
            & (in_sgtm | ~sgtm_due)
        )
        truth.add("data_consistency", consistent.sum(), n)

    def _write_leads_and_consent(
        self,
        conn: duckdb.DuckDBPyConnection,
        truth: _Truth,
        event_ids: np.ndarray,
        sessions: np.ndarray,
        captured: np.ndarray,
        consent: _Consent,
        withdrawing: np.ndarray,
        checkout_at: np.ndarray,
        succeeded: np.ndarray,
        refunded: np.ndarray,
        pi_ids: np.ndarray,
        rows: dict[str, np.ndarray],
    ) -> None:
        rng, n = self.rng, self.n
        number = np.char.mod("%07d", np.arange(n) + self.offset)
        utm_p = np.array([item[3] for item in UTM_MIX])
        utm = rng.choice(len(UTM_MIX), size=n, p=utm_p / utm_p.sum())
        utm_columns = {
            name: np.array([UTM_MIX[i][position] for i in range(len(UTM_MIX))], dtype=object)[utm]
            for position, name in enumerate(("utm_source", "utm_medium", "utm_campaign"))
        }
        delivered = np.isin(rows["outcome"], (DELIVERED, RETRIED))
        has_contact = np.zeros(n, dtype=bool)
        has_contact[rows["lead"][delivered & (rows["destination"] == "crm")]] = True
        subscribed = np.zeros(n, dtype=bool)
        subscribed[rows["lead"][delivered & (rows["destination"] == "mailerlite")]] = True
        status = np.where(refunded, "refunded", np.where(succeeded, "paid", "lead")).astype(object)
        method = CONSENT_METHODS[rng.integers(0, 3, size=n)].astype(object)
        _append(conn, LEAD_TABLE, {
            "event_id": _text(event_ids),
            "user_session_id": _text(sessions),
            "full_name": _text(np.char.add("Bulk Lead ", number).astype(object)),
            "email": _text(np.char.add(np.char.add("lead", number), "@example.com").astype(object)),
            "phone": _text(np.char.add("+35191", number).astype(object)),
            **{name: _text(values) for name, values in utm_columns.items()},
            "landing_page": pa.array(np.full(n, "https://cafecomvendas.example/lisbon")),
            "lead_created_at": _times(captured),
            "checkout_started_at": _times(checkout_at),
            "marketing_consent": pa.array(consent.marketing),
            "analytics_consent": pa.array(consent.analytics),
            "consent_method": _text(method),
            "consent_version": pa.array(np.full(n, "1.0")),
            "consent_version_current": pa.array(np.ones(n, dtype=bool)),
            "consent_at": _times(captured),
            "consent_ip": pa.array(np.full(n, "203.0.113.10")),
            "status": _text(status),
            "crm_contact_id": _text(_only(has_contact, np.char.add("crm_", number))),
            "mailerlite_subscriber_id": _text(_only(subscribed, np.char.add("ml_", number))),
            "payment_intent_id": _text(_only(checkout_at != NEVER, pi_ids)),
            "received_at": _times(captured),
            "updated_at": _times(captured),
        }, truth)  # fmt: skip
        withdrawers = np.flatnonzero(withdrawing)
        ledger_lead = np.concatenate([np.arange(n), withdrawers])
        withdrawal = np.arange(len(ledger_lead)) >= n
        _append(conn, LEDGER_TABLE, {
            "consent_id": _text(_uuids(rng, len(ledger_lead))),
            "user_session_id": _text(sessions[ledger_lead]),
            "event_id": _text(event_ids[ledger_lead]),
            "marketing_consent": pa.array(np.where(withdrawal, False, consent.marketing[ledger_lead])),
            "analytics_consent": pa.array(
                np.where(withdrawal, consent.withdrawn_analytics[ledger_lead], consent.analytics[ledger_lead])
            ),
            "consent_method": _text(np.where(withdrawal, "modal", method[ledger_lead]).astype(object)),
            "consent_version": pa.array(np.full(len(ledger_lead), "1.0")),
            "consent_version_current": pa.array(np.ones(len(ledger_lead), dtype=bool)),
            "source": _text(np.where(withdrawal, "consent", "lead").astype(object)),
            "recorded_at": _times(np.where(withdrawal, consent.withdrawn_at[ledger_lead], captured[ledger_lead])),
            "ip": pa.array(np.full(len(ledger_lead), "203.0.113.10")),
        }, truth)  # fmt: skip

    def _write_deliveries(
        self,
        conn: duckdb.DuckDBPyConnection,
        truth: _Truth,
        event_ids: np.ndarray,
        sessions: np.ndarray,
        rows: dict[str, np.ndarray],
        consent: _Consent,
        withdraws: np.ndarray,
    ) -> None:
        rng = self.rng
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
        delivery_ids = _uuids(rng, count)
        _append(conn, DELIVERY_TABLE, {
            "delivery_id": _text(delivery_ids),
            "event_id": _text(event_ids[lead]),
            "user_session_id": _text(sessions[lead]),
            "destination": _text(rows["destination"]),
            "kind": _text(rows["kind"]),
            "purpose": _text(rows["purpose"]),
            "idempotency_key": _text(keys.astype(object)),
            "payload": _text(rows["payload"]),
            "status": _text(status),
            "reason": _text(reason),
            "attempt_count": pa.array(attempts.astype(np.int32)),
            "failure_count": pa.array(failures.astype(np.int32)),
            "next_attempt_at": _times(np.where(status == "retrying", retry_at + 4 * US, NEVER)),
            "last_error": _text(_only(failures > 0, np.where(outcome == DEAD, "HTTP 400: invalid", "HTTP 503: unavailable"))),
            "created_at": _times(rows["created_at"]),
            "updated_at": _times(np.where(delivered_at != NEVER, delivered_at, sent_at)),
            "delivered_at": _times(delivered_at),
        }, truth)  # fmt: skip
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
        _append(conn, ATTEMPT_TABLE, {
            "delivery_id": _text(delivery_ids[which]),
            "attempt_number": pa.array(number),
            "started_at": _times(np.concatenate([sent_at[first], retry_at[second]])),
            "duration_ms": pa.array(rng.uniform(20, 200, size=len(which))),
            "status_code": pa.array(code),
            "response_body": _text(np.where(code == 200, '{"data": {"id": "1"}}', '{"message": "unavailable"}').astype(object)),
            "error": _text(_only(code != 200, np.where(code == 400, "HTTP 400: invalid", "HTTP 503: unavailable"))),
            "outcome": _text(attempt_outcome),
        }, truth)  # fmt: skip

    def _write_payments(
        self,
        conn: duckdb.DuckDBPyConnection,
        truth: _Truth,
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
        consent: _Consent,
    ) -> None:
        rng = self.rng
        payer = np.flatnonzero(checkout)
        orphans = int(rng.binomial(succeeded.sum(), 0.004))
        orphan_ids = _stripe_ids(rng, "pi", orphans).astype(str)
        orphan_events = _only(rng.random(orphans) < 0.5, _uuids(rng, orphans).astype(str))
        orphan_at = self.start_us + rng.integers(0, self.spec.days * 86_400 * US, size=orphans)

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
            ids = _stripe_ids(rng, "evt", count).astype(str)
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
                    "duplicate_of": np.full(count, None, dtype=object)
                    if duplicate_of is None
                    else duplicate_of,
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
        last_event[back] = add_events(_stripe_ids(rng, "ch", len(back)).astype(str), "charge.refunded", "processed",
                                      refund_at[back], meta[back], amounts[back])  # fmt: skip
        orphan_event_ids = add_events(orphan_ids, "payment_intent.succeeded", "processed", orphan_at,
                                      np.where(orphan_events == None, "", orphan_events), np.full(orphans, 4700))  # noqa: E711  # fmt: skip
        # Events whose processing failed for good: poison payloads that never processed.
        broken = int(rng.binomial(len(paid) + orphans, 0.002))
        add_events(_stripe_ids(rng, "pi", broken).astype(str), "payment_intent.succeeded", "failed",
                   self.start_us + rng.integers(0, self.spec.days * 86_400 * US, size=broken), np.full(broken, "", dtype=object),
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
        _append(conn, EVENT_TABLE, {
            "stripe_event_id": _text(columns["id"].astype(object)),
            "event_type": _text(columns["type"].astype(object)),
            "object_id": _text(columns["object"].astype(object)),
            "stripe_created_at": _times(columns["at"]),
            "received_at": _times(columns["at"] + US),
            "source": pa.array(np.full(total, "webhook")),
            "payload": _text(payloads),
            "status": _text(status.astype(object)),
            "error": _text(_only(status == "failed", "OverflowError: int too big to convert")),
            "processing_attempts": pa.array(columns["attempts"].astype(np.int32)),
            "processed_at": _times(np.where(status == "failed", NEVER, columns["at"] + US)),
            "change_key": _text(change.astype(object)),
            "duplicate_of": _text(columns["duplicate_of"]),
        }, truth)  # fmt: skip
        truth.add("system_resilience", (status == "failed").sum(), total)

        status_of = np.where(
            refunded, "refunded", np.where(succeeded, "succeeded", np.where(failed, "failed", "open"))
        )
        count = len(payer) + orphans
        _append(conn, PAYMENT_TABLE, {
            "payment_intent_id": _text(np.concatenate([pi_ids[payer], orphan_ids]).astype(object)),
            "event_id": _text(np.concatenate([event_ids[payer].astype(str).astype(object), orphan_events])),
            "user_session_id": _text(np.concatenate([sessions[payer].astype(str).astype(object), np.full(orphans, None, dtype=object)])),
            "amount_cents": pa.array(np.concatenate([amounts[payer], np.full(orphans, 4700)]).astype(np.int64)),
            "currency": pa.array(np.full(count, "eur")),
            "status": _text(np.concatenate([status_of[payer], np.full(orphans, "succeeded")]).astype(object)),
            "is_orphan": pa.array(np.concatenate([np.zeros(len(payer), dtype=bool), np.ones(orphans, dtype=bool)])),
            "refunded_cents": pa.array(np.concatenate([refunded_cents[payer], np.zeros(orphans, dtype=np.int64)]).astype(np.int64)),
            "source": _text(np.concatenate([np.full(len(payer), "checkout"), np.full(orphans, "webhook")]).astype(object)),
            "created_at": _times(np.concatenate([checkout_at[payer], orphan_at])),
            "updated_at": _times(np.concatenate([_latest(checkout_at[payer], success_at[payer], refund_at[payer]), orphan_at])),
            "succeeded_at": _times(np.concatenate([success_at[payer], orphan_at])),
            "refunded_at": _times(np.concatenate([refund_at[payer], np.full(orphans, NEVER)])),
            "last_stripe_event_id": _text(np.concatenate([last_event[payer], orphan_event_ids.astype(object)])),
        }, truth)  # fmt: skip
        truth.add("data_consistency", 0, orphans)


def _chunks(spec: BulkSpec) -> Iterator[tuple[int, int]]:
    number, left = 0, spec.leads
    while left > 0:
        size = min(spec.chunk_leads, left)
        yield number, size
        number, left = number + 1, left - size


def generate_bulk(path: Path, spec: BulkSpec, *, require_consent: bool = True) -> GroundTruth:
    """Write a new database of `spec.leads` synthetic leads and all they cause; save and return its ground truth.

    Every destination is configured and CRM lead capture is on; `require_consent` is the consent gate it ran under.
    """
    params = ModelParams(
        require_consent=require_consent,
        crm_enable_lead_capture=True,
        mailerlite_enabled=True,
        crm_enabled=True,
        sgtm_enabled=True,
    )
    for stale in (path, path.with_name(path.name + ".wal")):
        stale.unlink(missing_ok=True)
    truth = _Truth()
    conn = connect(path)
    try:
        migrate(conn)
        for number, size in _chunks(spec):
            conn.begin()
            _Chunk(spec, number, size, params).build(conn, truth)
            conn.commit()
        conn.execute("checkpoint")
    finally:
        conn.close()
    ground = GroundTruth(
        kind="bulk",
        seed=spec.seed,
        params=params,
        metrics={name: (counts[0], counts[1]) for name, counts in truth.counts.items()},
        rows=truth.rows,
    )
    ground.save(path)
    return ground
