"""event_id coverage: which systems hold each journey they should, and why the missing ones are missing."""

from __future__ import annotations

import streamlit as st

from dashboard import charts, data, ui

st.title("event_id coverage")
snapshot = ui.require_snapshot()
ui.freshness(snapshot)
ui.stop_if_empty(snapshot, "coverage")

st.caption(
    "A journey is one lead's event_id (plus one per succeeded payment naming no stored lead). It should reach: "
    "ingest always; the CRM when CRM_ENABLE_LEAD_CAPTURE; MailerLite with marketing consent; Stripe when it paid; "
    "sGTM when it paid with analytics consent; Meta (its Purchase) when it paid with marketing consent. A disabled "
    "destination should hold nothing."
)
presence = data.presence(snapshot.key)
st.subheader("Systems")
st.plotly_chart(charts.presence_matrix(presence), key="presence-matrix")
shown = presence.assign(
    held_pct=(presence["present"] / presence["expected"].where(presence["expected"] > 0) * 100).round(2)
)
st.dataframe(shown, hide_index=True, key="presence-table")
disabled = presence.loc[~presence["is_enabled"], "system"].tolist()
if disabled:
    st.caption(f"Disabled (not configured): {', '.join(disabled)}.")

everything = data.missing_journeys(snapshot.key)
st.subheader("Journeys missing somewhere")
if everything.total == 0:
    st.success("Every journey is present in every system it should reach.", icon=":material/check_circle:")
    st.stop()

causes = data.missing_by_cause(snapshot.key)
st.plotly_chart(charts.missing_causes(causes), key="missing-causes")
st.dataframe(causes, hide_index=True, key="missing-causes-table")

systems = ["any", *presence.loc[presence["missing"] > 0, "system"]]
chosen = st.selectbox("Missing in", systems, key="coverage-system")
missing = everything if chosen == "any" else data.missing_journeys(snapshot.key, str(chosen))
listed = f"the first {len(missing.rows):,}" if missing.total > len(missing.rows) else "all"
where = "somewhere" if chosen == "any" else f"in {chosen}"
st.caption(f"{missing.total:,} journeys are missing {where}; {listed} are listed, orphans first.")
st.dataframe(missing.rows, hide_index=True, key="missing-table")
ui.csv_download(missing.rows, f"missing_event_ids_{chosen}")
