"""Every dashboard page (Streamlit AppTest) on generated data, on an empty replica and with no replica at all."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import date
from typing import Any

import numpy as np
from streamlit.testing.v1 import AppTest

from dashboard.ui import METRIC_LABELS
from ingest.reconcile.report import percent
from tests.dashboard.conftest import PAGES, Replica, texts

Dashboard = Callable[[Replica], AppTest]


def on_page(app: AppTest, page: str) -> AppTest:
    """Switch to a page and run it; fail on any exception it raised."""
    app.switch_page(page).run()
    assert not app.exception, [item.value for item in app.exception]
    return app


def metric_values(app: AppTest) -> dict[str, str]:
    """st.metric label -> value shown."""
    return {str(item.label): str(item.value) for item in app.metric}


def test_overview_shows_the_five_metrics_as_attribution_report_computes_them(
    dashboard: Dashboard, demo_replica: Replica
) -> None:
    app = on_page(dashboard(demo_replica), "pages/overview.py")
    expected = demo_replica.metrics()
    shown = metric_values(app)
    assert [metric.metric for metric in expected] == list(METRIC_LABELS)
    for metric in expected:
        assert shown[METRIC_LABELS[metric.metric]] == percent(metric.value)
    table = app.dataframe[0].value.set_index("metric")
    assert demo_replica.truth is not None
    for name, (numerator, denominator) in demo_replica.truth.expected().items():
        assert (table.loc[name, "numerator"], table.loc[name, "denominator"]) == (numerator, denominator)
        assert bool(table.loc[name, "met"]) == next(m.met for m in expected if m.metric == name)
    page = texts(app)
    missed = [metric.metric for metric in expected if not metric.met]
    assert missed and f"Target missed: {', '.join(missed)}" in page
    assert "REQUIRE_CONSENT" in page and "CRM_ENABLE_LEAD_CAPTURE" in page
    # The bulk data ran with every destination configured but Meta, which it does not generate.
    assert "Disabled (not configured): **meta**" in page
    assert len(app.get("plotly_chart")) == 1  # the daily trend


def test_funnel_totals_and_the_campaign_filter_match_the_models(
    dashboard: Dashboard, demo_replica: Replica
) -> None:
    app = on_page(dashboard(demo_replica), "pages/funnel.py")
    leads, paid = demo_replica.query("select count(*), count(*) filter (where is_paid) from lead_journeys")[0]
    shown = metric_values(app)
    assert (shown["Leads"], shown["Paid"]) == (f"{leads:,}", f"{paid:,}")
    assert len(app.get("download_button")) >= 4  # a CSV of each UTM table

    app.multiselect(key="funnel-campaigns").set_value(["early-bird"]).run()
    assert not app.exception
    (campaign_leads,) = demo_replica.query(
        "select count(*) from lead_journeys where utm_campaign = 'early-bird'"
    )[0]
    assert metric_values(app)["Leads"] == f"{campaign_leads:,}"
    assert set(app.dataframe[2].value["utm_campaign"]) == {"early-bird"}

    first, last = demo_replica.query("select min(lead_day), max(lead_day) from lead_journeys")[0]
    assert isinstance(first, date) and isinstance(last, date)
    app.multiselect(key="funnel-campaigns").set_value([]).run()
    app.date_input(key="funnel-days").set_value((last, last)).run()
    (last_day_leads,) = demo_replica.query(f"select count(*) from lead_journeys where lead_day = '{last}'")[0]
    assert metric_values(app)["Leads"] == f"{last_day_leads:,}"


def test_coverage_shows_each_system_and_every_missing_journey_with_why(
    dashboard: Dashboard, demo_replica: Replica
) -> None:
    app = on_page(dashboard(demo_replica), "pages/coverage.py")
    presence = app.dataframe[0].value.set_index("system")
    for system, expected, present in demo_replica.query(
        "select system, expected, present from presence_by_system"
    ):
        assert (presence.loc[system, "expected"], presence.loc[system, "present"]) == (expected, present)
    consistency = next(m for m in demo_replica.metrics() if m.metric == "data_consistency")
    missing_total = consistency.denominator - consistency.numerator
    assert f"{missing_total:,} journeys are missing somewhere" in texts(app)
    missing = app.dataframe[2].value
    assert len(missing) == missing_total  # fewer than the 500 listed
    assert missing["why"].str.len().gt(0).all()
    orphans = missing[missing["journey_id"].str.startswith("orphan:")]
    assert len(orphans) and orphans["why"].str.contains("names no stored lead").all()
    crm_gaps = missing[missing["missing_in"].str.contains("crm")]
    assert len(crm_gaps) and crm_gaps["why"].str.contains("crm: ").all()

    app.selectbox(key="coverage-system").select("crm").run()
    assert len(app.dataframe[2].value) == len(crm_gaps)


def test_consent_lists_the_deliveries_made_without_consent(
    dashboard: Dashboard, demo_replica: Replica
) -> None:
    app = on_page(dashboard(demo_replica), "pages/consent.py")
    compliance = next(m for m in demo_replica.metrics() if m.metric == "consent_compliance")
    breaches = compliance.denominator - compliance.numerator
    assert breaches > 0  # the bulk generator injects a few sends after a withdrawal
    assert f"{breaches:,} delivered MailerLite / sGTM / Meta deliveries were made while" in texts(app)
    without = next(frame.value for frame in app.dataframe if "consent_decision_at" in frame.value.columns)
    assert len(without) == breaches
    decisions = next(frame.value for frame in app.dataframe if "consent_method" in frame.value.columns)
    (ledger,) = demo_replica.query("select count(*) from stg_consent_ledger")[0]
    assert decisions["decisions"].sum() == ledger


def test_deliveries_show_status_dead_letters_and_attempts_and_say_the_api_is_down(
    dashboard: Dashboard, demo_replica: Replica
) -> None:
    app = on_page(dashboard(demo_replica), "pages/deliveries.py")
    status = app.dataframe[0].value.set_index("destination")
    for destination, state, count in demo_replica.query(
        "select destination, delivery_status, count(*) from stg_deliveries group by all"
    ):
        assert status.loc[destination, state] == count
    dead = app.dataframe[1].value
    (dead_total,) = demo_replica.query("select count(*) from stg_deliveries where delivery_status = 'dead'")[
        0
    ]
    assert len(dead) == min(dead_total, 200)
    assert dead["last_error"].notna().all()
    attempts = app.dataframe[2].value  # the first dead letter's attempt history
    assert list(attempts["attempt_number"]) == list(range(1, len(attempts) + 1))
    assert attempts["outcome"].iloc[-1] == "dead"
    page = texts(app)
    (failed_events,) = demo_replica.query("select count(*) from stg_stripe_events where is_failed")[0]
    if failed_events:  # Stripe events whose processing failed for good, after the attempt history
        unprocessed = app.dataframe[3].value
        assert len(unprocessed) == min(failed_events, 200)
        assert set(unprocessed["processing_status"]) <= {"failed", "rejected"}
    else:
        assert "Every Stripe event stored was processed." in page
    assert "attribution serve" in page  # what to start for replay
    assert app.button(key="replay-preview").disabled

    app.selectbox(key="dead-destination").select("crm").run()
    assert set(app.dataframe[1].value["destination"]) == {"crm"}
    app.date_input(key="dead-since").set_value(date(2030, 1, 2))
    app.date_input(key="dead-until").set_value(date(2030, 1, 1)).run()
    assert "'Created from' must be on or before 'Created until'." in texts(app)


def test_every_page_says_what_to_start_when_nothing_was_published(
    dashboard: Dashboard, no_replica: Replica
) -> None:
    app = dashboard(no_replica)
    for page in PAGES:
        on_page(app, page)
        shown = texts(app)
        assert "No data yet" in shown and "attribution serve" in shown, page
        assert not app.metric and not app.dataframe, page


def test_every_page_says_no_data_yet_on_an_empty_replica(
    dashboard: Dashboard, empty_replica: Replica
) -> None:
    app = dashboard(empty_replica)
    for page in PAGES:
        on_page(app, page)
        assert "No data yet" in texts(app), page
        assert not app.metric and not app.dataframe, page
    assert "REQUIRE_CONSENT" in texts(on_page(app, PAGES[0]))  # the flags in force show before any data


def plotly_array(value: Any) -> np.ndarray:
    """An array of a figure's JSON: plotly sends numeric arrays base64-encoded ({dtype, bdata, shape})."""
    if isinstance(value, dict):
        flat = np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"])
        shape = [int(size) for size in str(value.get("shape", len(flat))).split(",")]
        return flat.reshape(shape)
    return np.asarray(value)


def test_the_daily_trend_adds_up_to_the_headline_metrics(dashboard: Dashboard, demo_replica: Replica) -> None:
    app = on_page(dashboard(demo_replica), "pages/overview.py")
    figure = json.loads(app.get("plotly_chart")[0].proto.spec)
    summed = {}
    for trace in figure["data"]:
        days = plotly_array(trace["customdata"])  # (numerator, denominator) of each day shown
        assert len(days) > 1, trace["name"]
        summed[trace["name"]] = (int(days[:, 0].sum()), int(days[:, 1].sum()))
    assert demo_replica.truth is not None
    assert summed == demo_replica.truth.expected(), "the numerators and denominators of the days, added up"
