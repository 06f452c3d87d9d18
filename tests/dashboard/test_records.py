"""The "Systems' records" page on a generated database whose MailerLite pull and CRM export miss a few journeys."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from ingest.core.clock import utcnow
from ingest.reconcile.report import percent
from ingest.reconcile.repository import Records, records_table, replace_records
from ingest.reconcile.schemas import RecordSource, System
from ingest.store.database import Database
from sandbox.bulk import BulkSpec, generate_bulk
from tests.conftest import make_settings
from tests.dashboard.conftest import UNREACHABLE_API, Replica, publish, texts
from tests.dashboard.test_pages import metric_values, on_page

Dashboard = Callable[[Replica], AppTest]
PAGE = "pages/records.py"
FOREIGN = "99999999-9999-4999-8999-999999999999"


@pytest.fixture(scope="module")
def records_replica(tmp_path_factory: pytest.TempPathFactory) -> Replica:
    """2,000 generated leads; MailerLite holds every lead's email but five, the CRM export every event_id but
    three and one we never issued."""
    root: Path = tmp_path_factory.mktemp("dashboard-records")
    settings = make_settings(root, attribution_api_url=UNREACHABLE_API)
    truth = generate_bulk(
        settings.attribution_db_path, BulkSpec(leads=2000, days=30, seed=5, chunk_leads=2000)
    )
    database = Database.open(settings.attribution_db_path)
    try:
        leads = database.read(
            lambda c: c.execute(
                "select event_id::varchar, lower(email) from leads order by event_id"
            ).fetchall()
        )
        now = utcnow()
        kept = leads[5:]
        subscribers = records_table(
            System.MAILERLITE,
            {
                "subscriber_id": [str(n) for n in range(len(kept))],
                "email": [email for _, email in kept],
                "status": ["active"] * len(kept),
                "event_id": [event_id for event_id, _ in kept],
                "payment_status": [None] * len(kept),
                "subscriber_updated_at": [now] * len(kept),
            },
        )
        contacts = [*(event_id for event_id, _ in leads[3:]), FOREIGN]
        crm = records_table(
            System.CRM,
            {
                "line": list(range(2, len(contacts) + 2)),
                "contact_id": [None] * len(contacts),
                "email": [None] * len(contacts),
                "event_id": contacts,
            },
        )
        for system, rows, source in (
            (System.MAILERLITE, subscribers, RecordSource.API),
            (System.CRM, crm, RecordSource.IMPORT),
        ):
            database.writer.submit_sync(replace_records, Records(system, source, now, rows))
    finally:
        database.close()
    publish(settings, truth.params)
    return Replica(settings, truth)


def test_records_shows_each_system_against_ours_and_the_verified_metric(
    dashboard: Dashboard, records_replica: Replica
) -> None:
    app = on_page(dashboard(records_replica), PAGE)
    summary = app.dataframe[0].value.set_index("system")
    rows = records_replica.query(
        "select system, expected, held, missing, unexpected, stale from system_records"
    )
    assert sorted(summary.index) == ["crm", "mailerlite"]
    for system, expected, held, missing, unexpected, stale in rows:
        shown = summary.loc[system]
        assert (shown["expected"], shown["held"], shown["missing"], shown["unexpected"], shown["stale"]) == (
            expected, held, missing, unexpected, stale,
        )  # fmt: skip
    assert summary.loc["crm", "missing"] == 3 and summary.loc["crm", "unexpected"] == 1
    ((verified,),) = records_replica.query("select value from verified_data_consistency")
    ((outbox,),) = records_replica.query("select value from data_consistency")
    shown = metric_values(app)
    assert shown["verified_data_consistency"] == percent(verified) != shown["data_consistency (our outbox)"]
    assert shown["data_consistency (our outbox)"] == percent(float(outbox))
    assert "Without records (judged by our outbox): ga4, stripe" in texts(app)

    app.selectbox(key="records-system").select("crm").run()
    missing = app.dataframe[1].value
    assert len(missing) == 3 and missing["reason"].str.len().gt(0).all()
    assert list(app.dataframe[2].value["entry"]) == [FOREIGN]


def test_records_preview_says_the_api_is_down(dashboard: Dashboard, records_replica: Replica) -> None:
    app = on_page(dashboard(records_replica), PAGE)
    app.button(key="repair-preview-button").click().run()
    assert any("does not answer" in str(error.value) for error in app.error)
    assert not [button for button in app.button if button.key == "repair-confirm"], (
        "no repair without a preview"
    )
