"""The leads and consent_ledger rows of a chunk: each lead as captured, its decision and its withdrawal."""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa

from sandbox.bulk.columns import (
    LEAD_TABLE,
    LEDGER_TABLE,
    NEVER,
    Tally,
    append_rows,
    as_text,
    as_times,
    only,
    uuids,
)
from sandbox.bulk.consent import Consent
from sandbox.bulk.deliveries import DELIVERED, RETRIED
from sandbox.scenario import UTM_MIX

CONSENT_METHODS = np.array(["modal", "checkbox", "implied"])


def write_leads_and_consent(
    conn: duckdb.DuckDBPyConnection,
    tally: Tally,
    rng: np.random.Generator,
    offset: int,
    event_ids: np.ndarray,
    sessions: np.ndarray,
    captured: np.ndarray,
    consent: Consent,
    withdrawing: np.ndarray,
    checkout_at: np.ndarray,
    succeeded: np.ndarray,
    refunded: np.ndarray,
    pi_ids: np.ndarray,
    rows: dict[str, np.ndarray],
) -> None:
    """The leads table and the consent ledger: each lead's decision at capture, and its withdrawal if any."""
    n = len(event_ids)
    number = np.char.mod("%07d", np.arange(n) + offset)
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
    append_rows(conn, LEAD_TABLE, {
        "event_id": as_text(event_ids),
        "user_session_id": as_text(sessions),
        "full_name": as_text(np.char.add("Bulk Lead ", number).astype(object)),
        "email": as_text(np.char.add(np.char.add("lead", number), "@example.com").astype(object)),
        "phone": as_text(np.char.add("+35191", number).astype(object)),
        **{name: as_text(values) for name, values in utm_columns.items()},
        "landing_page": pa.array(np.full(n, "https://cafecomvendas.example/lisbon")),
        "lead_created_at": as_times(captured),
        "checkout_started_at": as_times(checkout_at),
        "marketing_consent": pa.array(consent.marketing),
        "analytics_consent": pa.array(consent.analytics),
        "consent_method": as_text(method),
        "consent_version": pa.array(np.full(n, "1.0")),
        "consent_version_current": pa.array(np.ones(n, dtype=bool)),
        "consent_at": as_times(captured),
        "consent_ip": pa.array(np.full(n, "203.0.113.10")),
        "status": as_text(status),
        "crm_contact_id": as_text(only(has_contact, np.char.add("crm_", number))),
        "mailerlite_subscriber_id": as_text(only(subscribed, np.char.add("ml_", number))),
        "payment_intent_id": as_text(only(checkout_at != NEVER, pi_ids)),
        "received_at": as_times(captured),
        "updated_at": as_times(captured),
    }, tally)  # fmt: skip
    withdrawers = np.flatnonzero(withdrawing)
    ledger_lead = np.concatenate([np.arange(n), withdrawers])
    withdrawal = np.arange(len(ledger_lead)) >= n
    append_rows(conn, LEDGER_TABLE, {
        "consent_id": as_text(uuids(rng, len(ledger_lead))),
        "user_session_id": as_text(sessions[ledger_lead]),
        "event_id": as_text(event_ids[ledger_lead]),
        "marketing_consent": pa.array(np.where(withdrawal, False, consent.marketing[ledger_lead])),
        "analytics_consent": pa.array(
            np.where(withdrawal, consent.withdrawn_analytics[ledger_lead], consent.analytics[ledger_lead])
        ),
        "consent_method": as_text(np.where(withdrawal, "modal", method[ledger_lead]).astype(object)),
        "consent_version": pa.array(np.full(len(ledger_lead), "1.0")),
        "consent_version_current": pa.array(np.ones(len(ledger_lead), dtype=bool)),
        "source": as_text(np.where(withdrawal, "consent", "lead").astype(object)),
        "recorded_at": as_times(np.where(withdrawal, consent.withdrawn_at[ledger_lead], captured[ledger_lead])),
        "ip": pa.array(np.full(len(ledger_lead), "203.0.113.10")),
    }, tally)  # fmt: skip
