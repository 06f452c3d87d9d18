"""Systems' records: what Stripe, MailerLite, the CRM and GA4 hold against our records, and repair with a preview."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from dashboard import records, ui
from ingest.admin_client import ApiError
from ingest.reconcile.report import percent
from ingest.reconcile.schemas import RepairIn, RepairOut, System

PREVIEW_KEY = "repair-preview"
RESULT_KEY = "repair-result"

st.title("Systems' records")
snapshot = ui.require_snapshot()
ui.freshness(snapshot)
ui.stop_if_empty(snapshot, "records")

st.caption(
    "A 2xx from a destination says it accepted a request, not that it still holds the record. Here each system's "
    "own records (Stripe and MailerLite pulled over their APIs, CRM and GA4 exports imported) are compared with "
    "ours: missing (it should hold the journey and does not), unexpected (it holds what we never issued) and stale "
    "(it holds the journey with a field that disagrees)."
)
result = records.reconcile(snapshot.key)
metric = result.verified_data_consistency
outbox = records.outbox_consistency(snapshot.key).iloc[0]
left, right = st.columns(2)
left.metric(
    "verified_data_consistency",
    percent(metric.value),
    help=f"{metric.numerator:,} / {metric.denominator:,} journeys, presence by the systems' own records",
)
right.metric(
    "data_consistency (our outbox)",
    percent(float(outbox["value"])),
    help=f"{int(outbox['numerator']):,} / {int(outbox['denominator']):,} journeys, presence by delivered deliveries",
)
verified = ", ".join(metric.verified_systems) or "none"
unverified = ", ".join(metric.unverified_systems) or "none"
st.caption(
    f"Verified by their own records: {verified}. Without records (judged by our outbox): {unverified}."
)

if not result.systems:
    st.info(
        "**No system's records yet.** Run `attribution reconcile pull` (Stripe, MailerLite) and "
        "`attribution reconcile import crm|ga4 FILE` (exports); they show here after the next replica.",
        icon=":material/cloud_download:",
    )
    st.stop()

summary = pd.DataFrame(
    [
        {
            "system": item.system.value,
            "source": item.source.value,
            "as of (UTC)": item.as_of,
            "expected": item.expected,
            "held": item.held,
            "held %": round(item.held / item.expected * 100, 2) if item.expected else 100.0,
            "missing": len(item.missing),
            "unexpected": len(item.unexpected),
            "stale": len(item.stale),
        }
        for item in result.systems
    ]
)
st.subheader("Per system")
st.dataframe(summary, hide_index=True, key="records-summary")

chosen = st.selectbox("System", [item.system.value for item in result.systems], key="records-system")
missing_tab, unexpected_tab, stale_tab = st.tabs(["Missing", "Unexpected", "Stale"])
with missing_tab:
    rows = records.missing(snapshot.key, chosen)
    if rows.empty:
        st.success(f"{chosen} holds every journey it should.", icon=":material/check_circle:")
    else:
        st.dataframe(rows, hide_index=True, key="records-missing")
        ui.csv_download(rows, f"missing_in_{chosen}")
with unexpected_tab:
    rows = records.unexpected(snapshot.key, chosen)
    if rows.empty:
        st.success(f"{chosen} holds nothing we never issued.", icon=":material/check_circle:")
    else:
        st.dataframe(rows, hide_index=True, key="records-unexpected")
with stale_tab:
    rows = records.stale(snapshot.key, chosen)
    if rows.empty:
        st.success(f"Nothing {chosen} holds disagrees with us.", icon=":material/check_circle:")
    else:
        st.dataframe(rows, hide_index=True, key="records-stale")

st.subheader("Repair")
st.caption(
    "Re-sends through the outbox what a system misses or holds stale: fresh deliveries (the earlier ones stay as "
    "history), each only with the consent in force now. Stripe is never written; a journey without consent is "
    "listed, never sent. Pull or import again afterwards to see the systems hold them."
)
targets = [
    "every system",
    *(item.system.value for item in result.systems if item.system is not System.STRIPE),
]
target = st.selectbox("Repair", targets, key="repair-system")
request = RepairIn(system=None if target == "every system" else System(target))
api = ui.admin_api()


def _show(outcome: dict[str, Any]) -> None:
    queued = pd.DataFrame(
        outcome["queued"], columns=["system", "event_id", "why", "delivery_id", "transaction_id"]
    )
    left_alone = pd.DataFrame(outcome["not_repaired"], columns=["system", "event_id", "reason"])
    if not queued.empty:
        st.dataframe(queued, hide_index=True, key=f"repair-queued-{outcome['dry_run']}")
    if not left_alone.empty:
        st.caption("Not repaired:")
        st.dataframe(left_alone, hide_index=True, key=f"repair-left-{outcome['dry_run']}")


if st.button("Preview repair", key="repair-preview-button", icon=":material/preview:"):
    try:
        preview: RepairOut = api.repair(request.model_copy(update={"dry_run": True}))
    except ApiError as exc:
        st.error(str(exc), icon=":material/error:")
    else:
        st.session_state[PREVIEW_KEY] = {
            "request": request.model_dump(mode="json"),
            **preview.model_dump(mode="json"),
        }
        st.session_state.pop(RESULT_KEY, None)

pending: dict[str, Any] | None = st.session_state.get(PREVIEW_KEY)
if pending is not None and pending["request"] == request.model_dump(mode="json"):
    st.info(
        f"Would re-send {len(pending['queued'])}; {len(pending['not_repaired'])} would not be repaired.",
        icon=":material/preview:",
    )
    _show(pending)
    if pending["queued"] and st.button("Repair now", key="repair-confirm", type="primary"):
        try:
            done = api.repair(request)
        except ApiError as exc:
            st.error(str(exc), icon=":material/error:")
        else:
            st.session_state[RESULT_KEY] = done.model_dump(mode="json")
            st.session_state.pop(PREVIEW_KEY)
            st.rerun()

outcome: dict[str, Any] | None = st.session_state.get(RESULT_KEY)
if outcome is not None:
    st.success(f"Queued {len(outcome['queued'])} fresh deliveries.", icon=":material/send:")
    _show(outcome)
