"""The queries of the "Systems' records" page: cached selects from the reconciliation models over the replica."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard.data import CACHE_ENTRIES, CACHE_SECONDS, source
from ingest.reconcile.discrepancies import build_reconcile
from ingest.reconcile.schemas import ReconcileOut

LIST_LIMIT = 1000


@st.cache_data(ttl=CACHE_SECONDS, max_entries=CACHE_ENTRIES, show_spinner=False)
def reconcile(snapshot_key: str) -> ReconcileOut:
    """What `attribution reconcile --json` says of this copy."""
    return source().run(build_reconcile)


@st.cache_data(ttl=CACHE_SECONDS, max_entries=CACHE_ENTRIES, show_spinner=False)
def outbox_consistency(snapshot_key: str) -> pd.DataFrame:
    """data_consistency, the outbox-based metric the verified one stands beside."""
    return source().frame("select value, numerator, denominator, met from data_consistency")


@st.cache_data(ttl=CACHE_SECONDS, max_entries=CACHE_ENTRIES, show_spinner=False)
def missing(snapshot_key: str, system: str) -> pd.DataFrame:
    """The journeys a system should hold and does not, with why (system_missing)."""
    return source().frame(
        "select journey_id, cause, reason from system_missing where system = ? order by journey_id limit ?",
        [system, LIST_LIMIT],
    )


@st.cache_data(ttl=CACHE_SECONDS, max_entries=CACHE_ENTRIES, show_spinner=False)
def unexpected(snapshot_key: str, system: str) -> pd.DataFrame:
    """The records a system holds that we never issued (system_unexpected)."""
    return source().frame(
        "select entry, record_key, reason from system_unexpected where system = ? order by entry limit ?",
        [system, LIST_LIMIT],
    )


@st.cache_data(ttl=CACHE_SECONDS, max_entries=CACHE_ENTRIES, show_spinner=False)
def stale(snapshot_key: str, system: str) -> pd.DataFrame:
    """The fields a system holds differently from us (system_stale)."""
    return source().frame(
        "select journey_id, field, ours, theirs, payment_intent_id from system_stale where system = ? "
        "order by journey_id, field limit ?",
        [system, LIST_LIMIT],
    )
