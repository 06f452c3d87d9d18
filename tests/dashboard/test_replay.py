"""Replay from the Deliveries page through a real API: selected ids, by filter, nothing left, refused, API gone."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from streamlit.testing.v1 import AppTest

from ingest.core.settings import Settings
from ingest.reconcile.replica import reading
from sandbox import Sandbox
from tests.conftest import ADMIN_TOKEN, lead_body, serve, wait_until
from tests.dashboard.conftest import Replica, texts
from tests.outbox.conftest import sandbox_settings

Dashboard = Callable[[Replica], AppTest]
DEAD_LEADS = 3


@dataclass
class Live:
    """A running API whose CRM refused DEAD_LEADS leads, and the settings the dashboard reads it with."""

    settings: Settings
    sandbox: Sandbox
    client: httpx.Client
    stop_api: Callable[[], None]

    def state(self, delivery_id: str) -> str:
        response = self.client.get(f"/v1/admin/deliveries/{delivery_id}")
        status: str = response.json()["status"]
        return status

    def dead(self) -> list[dict[str, Any]]:
        response = self.client.get("/v1/admin/deliveries", params={"status": "dead", "destination": "crm"})
        deliveries: list[dict[str, Any]] = response.json()["deliveries"]
        return deliveries


def replica_dead_count(settings: Settings) -> int:
    """Dead CRM deliveries in the published replica (0 when none is published yet)."""
    if not settings.attribution_replica_path.exists():
        return 0
    with reading(settings, "replica") as reader:
        row = reader.conn.execute(
            "select count(*) from stg_deliveries where delivery_status = 'dead' and destination = 'crm'"
        ).fetchone()
    return int(row[0]) if row else 0


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Live]:
    """The API over loopback with the fakes; the CRM refuses (400) three leads, which die, then is fixed."""
    with Sandbox() as sandbox, ExitStack() as api:
        settings = sandbox_settings(tmp_path, sandbox, attribution_replica_seconds=0.2)
        base_url = api.enter_context(serve(settings))
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        client = api.enter_context(httpx.Client(base_url=base_url, headers=headers, timeout=30))
        sandbox.set_faults("crm", reject_status=400)
        for number in range(DEAD_LEADS):
            answer = client.post("/v1/leads", json=lead_body(email=f"replay.{number}@example.com"))
            assert answer.status_code == 200, answer.text
        running = Live(
            settings.model_copy(update={"attribution_api_url": base_url}), sandbox, client, api.close
        )
        wait_until(lambda: len(running.dead()) == DEAD_LEADS, timeout=20)
        wait_until(lambda: replica_dead_count(settings) == DEAD_LEADS, timeout=20)
        sandbox.set_faults("crm", clear=True)  # the cause is fixed
        yield running


def test_replay_from_the_deliveries_page_through_the_api(
    dashboard: Dashboard, live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = dashboard(Replica(live.settings, None))
    app.switch_page("pages/deliveries.py").run()
    assert not app.exception
    dead_ids = list(app.dataframe[1].value["delivery_id"].astype(str))
    assert len(dead_ids) == DEAD_LEADS
    crm_requests = len(live.sandbox.requests("crm"))

    # A wrong token: refused, said so, nothing replayed.
    monkeypatch.setenv("ATTRIBUTION_ADMIN_TOKEN", "not-the-token")
    app.radio(key="replay-mode").set_value("every dead delivery matching the filters above").run()
    app.button(key="replay-preview").click().run()
    assert "refused the admin token" in texts(app)
    assert len(live.dead()) == DEAD_LEADS
    monkeypatch.setenv("ATTRIBUTION_ADMIN_TOKEN", ADMIN_TOKEN)

    # Two selected ones: a preview (a dry run, nothing moves), then the confirmed replay.
    chosen = dead_ids[:2]
    app.radio(key="replay-mode").set_value("the deliveries selected below").run()
    app.multiselect(key="replay-ids").set_value(chosen).run()
    app.button(key="replay-preview").click().run()
    assert "Replay **2** dead deliveries" in texts(app)
    assert all(live.state(item) == "dead" for item in dead_ids)
    app.button(key="replay-confirm").click().run()
    assert not app.exception
    assert "Replayed 2 deliveries" in texts(app)
    assert sorted(app.dataframe[-1].value["delivery_id"]) == sorted(chosen)  # their live state
    wait_until(lambda: all(live.state(item) == "delivered" for item in chosen), timeout=20)
    assert live.state(dead_ids[2]) == "dead"
    assert len(live.sandbox.requests("crm")) == crm_requests + 2

    # The rest by filter.
    app.radio(key="replay-mode").set_value("every dead delivery matching the filters above").run()
    app.button(key="replay-preview").click().run()
    assert "Replay **1** dead delivery" in texts(app)
    app.button(key="replay-confirm").click().run()
    assert "Replayed 1 delivery" in texts(app)
    wait_until(lambda: live.state(dead_ids[2]) == "delivered", timeout=20)

    # Everything arrived: replaying again finds nothing, and nothing is sent twice.
    app.button(key="replay-preview").click().run()
    assert "Nothing to replay" in texts(app)
    assert not [button for button in app.button if button.key == "replay-confirm"]
    assert len(live.sandbox.requests("crm")) == crm_requests + 3

    # The API stops after the page was drawn (its status is cached for a few seconds): the replay says so.
    live.stop_api()
    app.button(key="replay-preview").click().run()
    assert not app.exception
    shown = texts(app)
    assert "the API does not answer" in shown and "attribution serve" in shown
