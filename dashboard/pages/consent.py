"""Consent: decisions by method and notice version, withdrawals over time, deliveries made without consent."""

from __future__ import annotations

import streamlit as st

from dashboard import charts, data, ui

st.title("Consent")
snapshot = ui.require_snapshot()
ui.freshness(snapshot)
if not snapshot.params.require_consent:
    st.warning(
        "REQUIRE_CONSENT=false: the consent gate is off, so deliveries go out whatever the visitor chose. "
        "Decisions are still recorded.",
        icon=":material/gpp_maybe:",
    )
ui.stop_if_empty(snapshot, "consent decision")

decisions = data.consent_decisions(snapshot.key)
st.subheader("Decisions by method and notice version")
if decisions.empty:
    st.caption("No consent decision recorded yet.")
else:
    chart_column, table_column = st.columns(2)
    with chart_column:
        st.plotly_chart(charts.consent_by_method(decisions), key="consent-by-method")
    with table_column:
        st.dataframe(decisions, hide_index=True, key="consent-decisions")
        ui.csv_download(decisions, "consent_decisions")
    outdated = int(decisions.loc[~decisions["is_consent_version_current"], "decisions"].sum())
    if outdated:
        st.caption(f"{outdated:,} decisions were given under a notice version that is no longer current.")

st.subheader("Withdrawals over time")
withdrawn = data.withdrawals(snapshot.key)
if withdrawn.empty:
    st.caption("Nobody has taken back a consent they gave.")
else:
    st.plotly_chart(charts.withdrawals_over_time(withdrawn), key="withdrawals")
    st.caption(
        f"{int(withdrawn['marketing_withdrawn'].sum()):,} marketing and "
        f"{int(withdrawn['analytics_withdrawn'].sum()):,} analytics withdrawals; pending deliveries of that "
        "purpose are suppressed when they arrive, and MailerLite gets an unsubscribe."
    )

st.subheader("Deliveries made without consent")
without = data.deliveries_without_consent(snapshot.key)
if without.empty:
    st.success(
        "None: every delivered MailerLite, sGTM and Meta delivery was made while its consent was in force.",
        icon=":material/check_circle:",
    )
else:
    st.error(
        f"{len(without):,} delivered MailerLite / sGTM / Meta deliveries were made while the consent they need was not "
        "in force. They are the gap in consent_compliance.",
        icon=":material/gpp_bad:",
    )
    st.dataframe(without, hide_index=True, key="without-consent")
    ui.csv_download(without, "deliveries_without_consent")

st.subheader("Held back by the consent gate")
suppressed = data.suppressed_deliveries(snapshot.key)
if suppressed.empty:
    st.caption("No delivery was suppressed.")
else:
    st.dataframe(suppressed, hide_index=True, key="suppressed")
