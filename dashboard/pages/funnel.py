"""Funnel & attribution: leads -> payment intents -> paid -> refunded, and revenue and conversion by UTM."""

from __future__ import annotations

from datetime import date

import pandas as pd
import streamlit as st

from dashboard import charts, data, ui

st.title("Funnel & attribution")
snapshot = ui.require_snapshot()
ui.freshness(snapshot)
ui.stop_if_empty(snapshot, "funnel")

bounds = data.funnel_bounds(snapshot.key)
if bounds.first_day is None or bounds.last_day is None:
    st.info("No leads yet: the funnel starts with the first lead.", icon=":material/hourglass_empty:")
    st.stop()

range_column, campaign_column = st.columns([1, 2])
with range_column:
    chosen = st.date_input(
        "Lead capture days",
        value=(bounds.first_day, bounds.last_day),
        min_value=bounds.first_day,
        max_value=bounds.last_day,
        key="funnel-days",
    )
with campaign_column:
    campaigns = st.multiselect(
        "Campaigns (none chosen: all)", bounds.campaigns, key="funnel-campaigns", placeholder="All campaigns"
    )
days = [day for day in (chosen if isinstance(chosen, tuple) else (chosen,)) if isinstance(day, date)]
first_day = days[0] if days else bounds.first_day
last_day = days[-1] if len(days) > 1 else first_day if days else bounds.last_day

rows = data.funnel_rows(snapshot.key, first_day, last_day, tuple(campaigns))
if rows.empty:
    st.info("No leads match these filters.", icon=":material/filter_alt_off:")
    st.stop()

totals = rows[["leads", "checkouts", "paid_leads", "refunded_leads", "net_revenue_cents"]].sum()
leads = int(totals["leads"])
stages = pd.DataFrame(
    {
        "stage": ["leads", "payment intents (checkout)", "paid", "refunded"],
        "count": [leads, int(totals["checkouts"]), int(totals["paid_leads"]), int(totals["refunded_leads"])],
    }
)
first_row, second_row = st.columns(3), st.columns(3)
first_row[0].metric("Leads", f"{leads:,}")
first_row[1].metric("Payment intents", f"{int(totals['checkouts']):,}")
first_row[2].metric("Paid", f"{int(totals['paid_leads']):,}")
second_row[0].metric("Refunded", f"{int(totals['refunded_leads']):,}")
second_row[1].metric("Conversion", f"{(totals['paid_leads'] / leads * 100) if leads else 0:.2f}%")
second_row[2].metric("Net revenue", ui.money(float(totals["net_revenue_cents"])))

funnel_column, trend_column = st.columns(2)
with funnel_column:
    st.plotly_chart(charts.funnel_stages(stages), key="funnel-stages")
with trend_column:
    st.plotly_chart(charts.leads_per_day(rows), key="funnel-per-day")


def by_dimension(frame: pd.DataFrame, dimensions: list[str]) -> pd.DataFrame:
    """Leads, payments, revenue and conversion grouped by the given UTM columns, best revenue first."""
    grouped = frame.groupby(dimensions, as_index=False)[
        [
            "leads",
            "checkouts",
            "paid_leads",
            "refunded_leads",
            "revenue_cents",
            "refunded_cents",
            "net_revenue_cents",
        ]
    ].sum()
    grouped["conversion_pct"] = (grouped["paid_leads"] / grouped["leads"] * 100).round(2)
    grouped["revenue"] = grouped["revenue_cents"] / 100
    grouped["refunded"] = grouped["refunded_cents"] / 100
    grouped["net_revenue"] = grouped["net_revenue_cents"] / 100
    grouped = grouped.drop(columns=["revenue_cents", "refunded_cents", "net_revenue_cents"])
    return grouped.sort_values("net_revenue", ascending=False, ignore_index=True)


st.subheader("Revenue and conversion by UTM")
st.caption(
    f"Leads captured {first_day} to {last_day}; revenue is what their succeeded payments brought (refunds "
    f"subtracted in net revenue), in {data.settings().product_currency.upper()}. "
    "Conversion = paid leads / leads."
)
for tab, dimension in zip(
    st.tabs(["utm_source", "utm_medium", "utm_campaign", "source × medium × campaign"]),
    ["utm_source", "utm_medium", "utm_campaign", None],
    strict=True,
):
    with tab:
        dimensions = [dimension] if dimension else ["utm_source", "utm_medium", "utm_campaign"]
        table = by_dimension(rows, dimensions)
        if dimension:
            st.plotly_chart(charts.revenue_by(table, dimension), key=f"revenue-{dimension}")
        st.dataframe(table, hide_index=True, key=f"table-{dimension or 'all'}")
        ui.csv_download(table, f"attribution_by_{dimension or 'utm'}_{first_day}_{last_day}")

orphans = data.orphan_payments(snapshot.key, first_day, last_day)
st.subheader("Payments with no lead")
if orphans.empty:
    st.caption("Every succeeded payment in these days names a stored lead.")
else:
    st.warning(
        f"{len(orphans):,} succeeded payment(s) name no stored lead ({ui.money(float(orphans['amount_cents'].sum()))}"
        "): their revenue cannot be attributed to a campaign, and each counts as missing in data_consistency.",
        icon=":material/link_off:",
    )
    st.dataframe(orphans, hide_index=True, key="orphans")
    ui.csv_download(orphans, f"orphan_payments_{first_day}_{last_day}")

mismatches = data.price_mismatches(snapshot.key, first_day, last_day)
st.subheader("Payments off the product price")
if mismatches.empty:
    st.caption("Every succeeded payment in these days charged the product's price and currency.")
else:
    st.warning(
        f"{len(mismatches):,} succeeded payment(s) charged another amount or currency than the product's: they are "
        "kept, marked paid and forwarded with what was really charged, and flagged here so they are not taken "
        "for ordinary sales.",
        icon=":material/price_change:",
    )
    st.dataframe(mismatches, hide_index=True, key="price-mismatches")
    ui.csv_download(mismatches, f"price_mismatches_{first_day}_{last_day}")
