"""One chunk of leads and everything they cause: the draws, the rows (through the table writers), the tally."""

from __future__ import annotations

import json
from datetime import datetime

import duckdb
import numpy as np

from ingest.reconcile.models import ModelParams
from sandbox.bulk.columns import NEVER, US, Tally, stripe_ids, uuids
from sandbox.bulk.consent import Consent
from sandbox.bulk.deliveries import DELIVERED, RETRIED, RETRY_DELAY, Deliveries, write_deliveries
from sandbox.bulk.leads import write_leads_and_consent
from sandbox.bulk.payments import write_payments
from sandbox.bulk.spec import BulkSpec

PRICES_CENTS = np.array([4700, 9700, 14700])


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


class Chunk:
    """One chunk of leads and everything they cause."""

    def __init__(self, spec: BulkSpec, number: int, size: int, params: ModelParams) -> None:
        self.spec = spec
        self.params = params
        self.n = size
        self.rng = np.random.default_rng([spec.seed, number])
        self.offset = number * spec.chunk_leads
        # spec.start is naive UTC, like every *_at column.
        self.start_us = int((spec.start - datetime(1970, 1, 1)).total_seconds()) * US

    def build(self, conn: duckdb.DuckDBPyConnection, tally: Tally) -> None:
        """Draw the chunk, append its rows to every table, and count its share of each metric."""
        rng, n = self.rng, self.n
        index = np.arange(n)
        event_ids, sessions = uuids(rng, n), uuids(rng, n)
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
        consent = Consent(
            captured,
            marketing,
            analytics,
            withdrawn_at,
            np.zeros(n, dtype=bool),
            withdrawn_analytics,
            partner,
        )

        require = self.params.require_consent
        deliveries = Deliveries()
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

        pi_ids = stripe_ids(rng, "pi", n).astype(str)
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
        write_leads_and_consent(
            conn, tally, rng, self.offset, event_ids, sessions, captured, consent, withdraws | breach, checkout_at,
            succeeded, refunded, pi_ids, rows,
        )  # fmt: skip
        write_deliveries(conn, tally, rng, event_ids, sessions, rows, consent, withdraws)
        write_payments(
            conn, tally, rng, self.start_us, self.spec.days, event_ids, sessions, pi_ids, amounts, refunded_cents,
            checkout, succeeded, failed, refunded, checkout_at, success_at, refund_at,
        )  # fmt: skip

        # Ground truth, from the arrays drawn above.
        delivered = np.isin(rows["outcome"], (DELIVERED, RETRIED))
        in_crm = np.zeros(n, dtype=bool)
        in_crm[rows["lead"][delivered & (rows["destination"] == "crm")]] = True
        tally.add("crm_coverage", in_crm.sum(), n)
        needs = np.flatnonzero(delivered & (rows["destination"] != "crm") & (rows["kind"] != "unsubscribe"))
        sent = np.where(
            rows["outcome"][needs] == RETRIED, rows["sent_at"][needs] + RETRY_DELAY, rows["sent_at"][needs]
        )
        m_then, a_then = consent.at(rows["lead"][needs], sent)
        with_consent = np.where(rows["destination"][needs] == "mailerlite", m_then, a_then)
        tally.add("consent_compliance", with_consent.sum(), len(needs))
        purchase_sent = np.isin(purchase["outcome"], (DELIVERED, RETRIED))
        in_scope = paid_a | (not require)
        tally.add("attribution_accuracy", (purchase_sent & in_scope).sum(), in_scope.sum())
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
        tally.add("data_consistency", consistent.sum(), n)
