from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from ingest.core.settings import Settings
from tests.conftest import consent_body, lead_body
from tests.leads.test_leads_api import DESTINATIONS_ON


def test_decision_is_appended_with_server_stamps(
    api: httpx.Client, settings: Settings, read_store: Callable[..., Any]
) -> None:
    body = consent_body(recorded_at="1999-01-01T00:00:00", ip="203.0.113.9")  # client stamps are ignored
    response = api.post("/v1/consent", json=body, headers={"User-Agent": "consent-ua"})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["recorded"] is True
    assert answer["consent"]["user_session_id"] == body["user_session_id"]
    assert answer["consent"]["consent_version_current"] is True
    assert not answer["consent"]["recorded_at"].startswith("1999")
    api.post("/v1/consent", json=body | {"marketing_consent": False}, headers={"User-Agent": "consent-ua"})
    rows = read_store(
        "select marketing_consent, ip, user_agent, source from consent_ledger order by recorded_at",
    )
    assert rows == [
        (True, "127.0.0.1", "consent-ua", "consent"),
        (False, "127.0.0.1", "consent-ua", "consent"),
    ]


def test_withdrawal_suppresses_pending_marketing_deliveries(
    api_with: Any, tmp_path: Path, read_store: Callable[..., Any]
) -> None:
    client = api_with(**DESTINATIONS_ON)
    lead = client.post("/v1/leads", json=lead_body()).json()
    withdrawal = consent_body(
        user_session_id=lead["user_session_id"],
        event_id=lead["event_id"],
        marketing_consent=False,
        analytics_consent=True,
    )
    answer = client.post("/v1/consent", json=withdrawal).json()
    rows = dict(
        read_store(
            "select destination, status from deliveries where event_id = ? and kind <> 'unsubscribe'",
            [lead["event_id"]],
        )
    )
    assert rows["mailerlite"] in ("suppressed", "delivered")
    if rows["mailerlite"] == "suppressed":
        assert answer["consent"]["suppressed_deliveries"] >= 1
        [(reason,)] = read_store(
            "select reason from deliveries where event_id = ? and destination = 'mailerlite' and kind <> 'unsubscribe'",
            [lead["event_id"]],
        )
        assert reason == "consent withdrawn"
    assert rows["crm"] != "suppressed"  # the CRM record is not gated by marketing consent
    assert rows["sgtm"] != "suppressed"  # analytics consent still given


def test_consent_needs_a_session_and_valid_fields(
    api: httpx.Client, settings: Settings, read_store: Callable[..., Any]
) -> None:
    body = consent_body()
    del body["user_session_id"]
    missing = api.post("/v1/consent", json=body)
    assert missing.status_code == 422
    assert missing.json()["errors"][0]["field"] == "user_session_id"
    bad_method = api.post("/v1/consent", json=consent_body(consent_method="shrug"))
    assert bad_method.status_code == 422
    assert "consent_method" in bad_method.json()["message"]
    assert read_store("select count(*) from consent_ledger") == [(0,)]
