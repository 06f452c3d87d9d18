"""Plotly figures of the dashboard, built from the DataFrames of dashboard.data (no queries here)."""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ingest.core.vocabulary import DeliveryStatus
from ingest.reconcile.models import METRIC_NAMES, Metric

GOOD_COLOUR = "#2e7d32"
BAD_COLOUR = "#c62828"
STATUS_COLOURS = {
    DeliveryStatus.DELIVERED: "#2e7d32",
    DeliveryStatus.PENDING: "#90a4ae",
    DeliveryStatus.RETRYING: "#f9a825",
    DeliveryStatus.DEAD: "#c62828",
    DeliveryStatus.SUPPRESSED: "#6a1b9a",
    DeliveryStatus.DISABLED: "#bdbdbd",
}
HEIGHT = 360


def metric_trend(daily: pd.DataFrame, metrics: list[Metric]) -> go.Figure:
    """One small chart per metric: its daily value against its target line."""
    targets = {metric.metric: metric for metric in metrics}
    figure = make_subplots(
        rows=len(METRIC_NAMES), cols=1, shared_xaxes=True, vertical_spacing=0.04, subplot_titles=METRIC_NAMES
    )
    for row, name in enumerate(METRIC_NAMES, start=1):
        days = daily[daily["metric"] == name]
        figure.add_trace(
            go.Scatter(
                x=days["day"],
                y=days["value"] * 100,
                mode="lines+markers",
                name=name,
                customdata=days[["numerator", "denominator"]],
                hovertemplate="%{x|%Y-%m-%d}: %{y:.2f}% (%{customdata[0]:,} / %{customdata[1]:,})<extra></extra>",
                showlegend=False,
            ),
            row=row,
            col=1,
        )
        if name in targets:
            figure.add_hline(
                y=targets[name].target * 100,
                line_dash="dot",
                line_color=BAD_COLOUR,
                row=row,
                col=1,
            )
        figure.update_yaxes(ticksuffix="%", row=row, col=1)
    figure.update_layout(height=170 * len(METRIC_NAMES), margin={"t": 30, "b": 20, "l": 10, "r": 10})
    return figure


def leads_per_day(funnel: pd.DataFrame) -> go.Figure:
    """Leads and paid leads per capture day."""
    per_day = funnel.groupby("lead_day", as_index=False)[["leads", "paid_leads"]].sum()
    long = per_day.melt(id_vars="lead_day", var_name="stage", value_name="count")
    figure = px.bar(long, x="lead_day", y="count", color="stage", barmode="overlay", height=HEIGHT)
    figure.update_layout(margin={"t": 20, "b": 20}, xaxis_title=None, yaxis_title=None)
    return figure


def funnel_stages(stages: pd.DataFrame) -> go.Figure:
    """leads -> payment intents -> paid -> refunded as a funnel."""
    figure = go.Figure(go.Funnel(y=stages["stage"], x=stages["count"], textinfo="value+percent initial"))
    figure.update_layout(height=HEIGHT, margin={"t": 20, "b": 20})
    return figure


def revenue_by(table: pd.DataFrame, dimension: str) -> go.Figure:
    """Net revenue (bars) and conversion (hover) by one UTM dimension."""
    figure = px.bar(
        table,
        x=dimension,
        y="net_revenue",
        hover_data={"leads": True, "paid_leads": True, "conversion_pct": ":.2f"},
        height=HEIGHT,
    )
    figure.update_layout(margin={"t": 20, "b": 20}, yaxis_title="net revenue", xaxis_title=None)
    return figure


def presence_matrix(presence: pd.DataFrame) -> go.Figure:
    """Systems x (present, missing, share present) as a heatmap of where journeys are held."""
    share = [
        (row.present / row.expected * 100) if row.expected else 100.0
        for row in presence.itertuples(index=False)
    ]
    labels = [
        f"{row.present:,} / {row.expected:,}" + ("" if row.is_enabled else " (disabled)")
        for row in presence.itertuples(index=False)
    ]
    figure = go.Figure(
        go.Heatmap(
            z=[share],
            x=list(presence["system"]),
            y=["held / should reach"],
            text=[labels],
            texttemplate="%{text}",
            colorscale=[[0, BAD_COLOUR], [0.95, "#fff59d"], [1, GOOD_COLOUR]],
            zmin=0,
            zmax=100,
            colorbar={"ticksuffix": "%"},
        )
    )
    figure.update_layout(height=200, margin={"t": 20, "b": 20})
    return figure


def missing_causes(causes: pd.DataFrame) -> go.Figure:
    """Journeys missing per system, coloured by the cause."""
    figure = px.bar(causes, x="system", y="journeys", color="cause", height=HEIGHT)
    figure.update_layout(margin={"t": 20, "b": 20}, xaxis_title=None)
    return figure


def consent_by_method(decisions: pd.DataFrame) -> go.Figure:
    """Consent decisions by method, split by notice version."""
    grouped = decisions.groupby(["consent_method", "consent_version"], as_index=False)["decisions"].sum()
    figure = px.bar(grouped, x="consent_method", y="decisions", color="consent_version", height=HEIGHT)
    figure.update_layout(margin={"t": 20, "b": 20}, xaxis_title=None)
    return figure


def withdrawals_over_time(withdrawn: pd.DataFrame) -> go.Figure:
    """Marketing and analytics withdrawals per day."""
    long = withdrawn.melt(id_vars="day", var_name="consent", value_name="withdrawals")
    figure = px.bar(long, x="day", y="withdrawals", color="consent", height=HEIGHT)
    figure.update_layout(margin={"t": 20, "b": 20}, xaxis_title=None)
    return figure


def status_by_destination(status: pd.DataFrame) -> go.Figure:
    """Deliveries per destination, stacked by status."""
    figure = px.bar(
        status,
        x="destination",
        y="deliveries",
        color="status",
        color_discrete_map=STATUS_COLOURS,
        height=HEIGHT,
    )
    figure.update_layout(margin={"t": 20, "b": 20}, xaxis_title=None)
    return figure
