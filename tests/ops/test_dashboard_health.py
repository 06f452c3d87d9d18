"""The dashboard's health strip on every page: replica age, outbox lag per destination, open circuits."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from ingest.core.clock import utcnow
from ingest.ops.repository import Observation, Observed, record_observations
from ingest.reconcile.models import ModelParams
from ingest.reconcile.replica import publish_replica
from ingest.store.database import Database
from tests.conftest import make_settings
from tests.dashboard.conftest import APP, PAGES, RUN_TIMEOUT_SECONDS, UNREACHABLE_API, dashboard_env, texts
from tests.outbox.conftest import capture

LAG = timedelta(minutes=3)


def test_every_page_shows_replica_age_outbox_lag_and_open_circuits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(
        tmp_path,
        attribution_api_url=UNREACHABLE_API,
        crm_webhook_url="http://127.0.0.1:9/crm",
        sgtm_endpoint="http://127.0.0.1:9/mp/collect",
    )
    database = Database.open(settings.attribution_db_path)
    try:
        for _ in range(2):
            asyncio.run(capture(database, settings))
        now = utcnow()
        # The CRM's deliveries have been due for LAG; sGTM's are due in the future (backing off): no lag.
        database.conn.execute(
            "update deliveries set next_attempt_at = ? where destination = 'crm'", [now - LAG]
        )
        database.conn.execute(
            "update deliveries set next_attempt_at = ? where destination = 'sgtm'", [now + LAG]
        )
        opened = Observation("circuit:crm", "open", "closed", "circuit_open", {})
        database.writer.submit_sync(record_observations, Observed((opened,), now, False))
        publish_replica(database, settings.attribution_replica_path, ModelParams.from_settings(settings))
    finally:
        database.close()

    for name, value in dashboard_env(settings).items():
        monkeypatch.setenv(name, value)
    app = AppTest.from_file(str(APP), default_timeout=RUN_TIMEOUT_SECONDS)
    app.run()
    for page in PAGES:
        app.switch_page(page).run()
        assert not app.exception, [item.value for item in app.exception]
        strip = [str(item.value) for item in app.warning if "Outbox lag" in str(item.value)]
        assert strip, (page, texts(app))
        assert "Open circuits: **crm**" in strip[0]
        assert "crm 3 min" in strip[0] and "sgtm 0 s" in strip[0]
        assert "Replica " in strip[0]
