"""Overview: the five success metrics against their targets, their daily trend, freshness, flags in force."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import charts, data, ui
from ingest.reconcile.report import percent

st.title("Overview")
snapshot = ui.require_snapshot()
ui.freshness(snapshot)

params = snapshot.params
flags, destinations = st.columns(2)
with flags:
    st.subheader("Feature flags in force")
    gate = "on" if params.require_consent else "OFF"
    st.markdown(
        f"- **REQUIRE_CONSENT** = `{str(params.require_consent).lower()}` (consent gate {gate})\n"
        f"- **CRM_ENABLE_LEAD_CAPTURE** = `{str(params.crm_enable_lead_capture).lower()}`"
    )
    if not params.require_consent:
        st.warning(
            "The consent gate is off: MailerLite, sGTM and Meta deliveries are sent whatever the visitor chose.",
            icon=":material/gpp_maybe:",
        )
with destinations:
    st.subheader("Destinations")
    disabled = snapshot.disabled_destinations
    if disabled:
        st.warning(
            f"Disabled (not configured): **{', '.join(disabled)}**. Deliveries to them are recorded as "
            '`disabled` and they count as "should reach" for nobody.',
            icon=":material/block:",
        )
    else:
        st.success("MailerLite, CRM, sGTM and Meta are all configured.", icon=":material/check_circle:")

ui.stop_if_empty(snapshot, "metric")

st.subheader("Success metrics")
metrics = data.metrics(snapshot.key)
columns = st.columns(len(metrics))
for column, metric in zip(columns, metrics, strict=True):
    with column:
        st.metric(
            ui.METRIC_LABELS.get(metric.metric, metric.metric),
            ui.metric_value(metric.value, metric.denominator),
            help=ui.METRIC_HELP.get(metric.metric),
            border=True,
        )
        target = f"target {metric.comparator} {percent(metric.target)}"
        if metric.denominator == 0:
            st.badge(f"nothing to measure · {target}", color="gray")
        elif metric.met:
            st.badge(f"pass · {target}", color="green", icon=":material/check:")
        else:
            st.badge(f"FAIL · {target}", color="red", icon=":material/close:")
        st.caption(f"{metric.numerator:,} / {metric.denominator:,}")

table = pd.DataFrame(
    [
        {
            "metric": metric.metric,
            "value": ui.metric_value(metric.value, metric.denominator),
            "target": f"{metric.comparator} {percent(metric.target)}",
            "met": metric.met,
            "numerator": metric.numerator,
            "denominator": metric.denominator,
        }
        for metric in metrics
    ]
)
st.dataframe(table, hide_index=True, key="metrics-table")
missed = [metric.metric for metric in metrics if not metric.met]
if missed:
    st.error(
        f"Target missed: {', '.join(missed)}. The event_id coverage, Consent and Deliveries pages show which "
        "journeys and deliveries are behind it.",
        icon=":material/error:",
    )

st.subheader("Daily trend")
st.caption(
    "Each metric per day: leads by capture day, payments by the day they succeeded, deliveries by the day they "
    "were delivered, Stripe events by the day they were received. The dotted line is the target."
)
daily = data.daily_metrics(snapshot.key)
st.plotly_chart(charts.metric_trend(daily, metrics), key="metric-trend")
