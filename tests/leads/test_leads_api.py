from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from ingest.core.settings import Settings
from tests.conftest import lead_body

DESTINATIONS_ON = {
    "mailerlite_api_key": "ml-test-key",
    "mailerlite_base_url": "http://127.0.0.1:9",
    "crm_webhook_url": "http://127.0.0.1:9/crm",
    "sgtm_endpoint": "http://127.0.0.1:9/mp/collect",
    "meta_pixel_id": "100000000000001",
    "meta_access_token": "meta-test-token",
    "meta_base_url": "http://127.0.0.1:9",
    "attribution_inline_delivery_ms": 0,
}


def deliveries(read_store: Callable[..., Any], event_id: str) -> dict[str, tuple[str, str | None]]:
    rows = read_store("select destination, status, reason from deliveries where event_id = ?", [event_id])
    return {destination: (status, reason) for destination, status, reason in rows}


def test_lead_is_stored_with_consent_and_outbox_rows(
    api: httpx.Client, settings: Settings, read_store: Callable[..., Any]
) -> None:
    response = api.post(
        "/v1/leads", json=lead_body(email=" Ana.Teste@Example.COM "), headers={"User-Agent": "pytest-ua"}
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    event_id = answer["event_id"]
    uuid.UUID(event_id)
    assert answer["duplicate"] is False
    assert answer["consent_version_current"] is True
    assert answer["mailerlite"] == {"status": "disabled", "reason": "mailerlite is not configured"}

    [(email, phone, utm_source, status, consent_ip, user_agent)] = read_store(
        "select email, phone, utm_source, status, consent_ip, consent_user_agent from leads"
    )
    assert (email, phone, utm_source, status) == (
        "Ana.Teste@example.com",
        "+351912345678",
        "instagram",
        "lead",
    )
    assert (consent_ip, user_agent) == ("127.0.0.1", "pytest-ua")
    [(marketing, analytics, method, source)] = read_store(
        "select marketing_consent, analytics_consent, consent_method, source from consent_ledger"
    )
    assert (marketing, analytics, method, source) == (True, True, "modal", "lead")
    assert set(deliveries(read_store, event_id)) == {"mailerlite", "crm", "sgtm", "meta"}


def test_configured_destinations_are_queued(
    api_with: Any, tmp_path: Path, read_store: Callable[..., Any]
) -> None:
    client = api_with(**DESTINATIONS_ON)
    answer = client.post("/v1/leads", json=lead_body()).json()
    assert answer["mailerlite"]["status"] == "queued"
    assert answer["crm"]["status"] == "queued"
    rows = deliveries(read_store, answer["event_id"])
    assert {destination: status for destination, (status, _) in rows.items()}.keys() == {
        "mailerlite",
        "crm",
        "sgtm",
        "meta",
    }
    assert all(status in ("pending", "retrying", "delivered") for status, _ in rows.values())


def test_no_marketing_consent_suppresses_mailerlite(
    api_with: Any, tmp_path: Path, read_store: Callable[..., Any]
) -> None:
    client = api_with(**DESTINATIONS_ON)
    answer = client.post("/v1/leads", json=lead_body(marketing_consent=False, analytics_consent=False)).json()
    assert answer["mailerlite"] == {"status": "suppressed", "reason": "no marketing consent"}
    assert answer["crm"]["status"] == "queued"  # the CRM is the shop's own contact record, not marketing
    rows = deliveries(read_store, answer["event_id"])
    assert rows["sgtm"] == ("suppressed", "no analytics consent")
    [(marketing,)] = read_store("select marketing_consent from leads")
    assert marketing is False


def test_consent_gate_off_when_not_required(
    api_with: Any, tmp_path: Path, read_store: Callable[..., Any]
) -> None:
    client = api_with(require_consent=False, **DESTINATIONS_ON)
    answer = client.post("/v1/leads", json=lead_body(marketing_consent=False, analytics_consent=False)).json()
    assert answer["mailerlite"]["status"] == "queued"
    rows = deliveries(read_store, answer["event_id"])
    assert rows["sgtm"][0] != "suppressed"


def test_crm_lead_capture_can_be_turned_off(
    api_with: Any, tmp_path: Path, read_store: Callable[..., Any]
) -> None:
    client = api_with(crm_enable_lead_capture=False, **DESTINATIONS_ON)
    answer = client.post("/v1/leads", json=lead_body()).json()
    assert answer["crm"]["status"] == "disabled"
    assert "crm" not in deliveries(read_store, answer["event_id"])


def test_same_event_and_email_is_a_duplicate(
    api: httpx.Client, settings: Settings, read_store: Callable[..., Any]
) -> None:
    event_id = str(uuid.uuid4())
    first = api.post("/v1/leads", json=lead_body(event_id=event_id))
    again = api.post("/v1/leads", json=lead_body(event_id=event_id, email="ANA.TESTE@example.com"))
    assert first.status_code == again.status_code == 200
    assert again.json()["duplicate"] is True
    assert again.json()["user_session_id"] == first.json()["user_session_id"]
    assert read_store("select count(*) from leads") == [(1,)]
    assert read_store("select count(*) from consent_ledger") == [(1,)]
    assert read_store("select count(*) from deliveries") == [(4,)]


def test_same_event_other_email_is_a_conflict(
    api: httpx.Client, settings: Settings, read_store: Callable[..., Any]
) -> None:
    event_id = str(uuid.uuid4())
    api.post("/v1/leads", json=lead_body(event_id=event_id))
    response = api.post("/v1/leads", json=lead_body(event_id=event_id, email="someone.else@example.com"))
    assert response.status_code == 409
    assert event_id in response.json()["message"]
    assert read_store("select email from leads") == [("ana.teste@example.com",)]
    assert read_store("select count(*) from consent_ledger") == [(1,)]


def test_fifty_concurrent_posts_of_one_event_make_one_lead(
    api: httpx.Client, settings: Settings, read_store: Callable[..., Any]
) -> None:
    event_id = str(uuid.uuid4())

    async def post_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=str(api.base_url), timeout=30) as client:
            return await asyncio.gather(
                *(client.post("/v1/leads", json=lead_body(event_id=event_id)) for _ in range(50))
            )

    responses = asyncio.run(post_all())
    assert [r.status_code for r in responses] == [200] * 50
    assert sorted(r.json()["duplicate"] for r in responses) == [False] + [True] * 49
    assert read_store("select count(*) from leads") == [(1,)]
    assert read_store("select count(*) from consent_ledger") == [(1,)]
    assert read_store("select count(*) from deliveries") == [(4,)]


def test_stale_consent_version_is_recorded_and_flagged(
    api: httpx.Client, settings: Settings, read_store: Callable[..., Any]
) -> None:
    answer = api.post("/v1/leads", json=lead_body(consent_version="0.9")).json()
    assert answer["consent_version_current"] is False
    assert read_store("select consent_version, consent_version_current from consent_ledger") == [
        ("0.9", False)
    ]


def test_timestamps_and_ga_client_id_are_normalised(
    api: httpx.Client, settings: Settings, read_store: Callable[..., Any]
) -> None:
    body = lead_body(lead_created_at="2026-11-20T10:00:00+01:00", ga_client_id="GA1.1.123456789.1700000000")
    answer = api.post("/v1/leads", json=body).json()
    [(created, ga)] = read_store(
        "select lead_created_at, ga_client_id from leads where event_id = ?",
        [answer["event_id"]],
    )
    assert created.isoformat() == "2026-11-20T09:00:00"
    assert ga == "123456789.1700000000"


BAD_INPUTS = [
    pytest.param({"email": "not-an-email"}, "email", id="invalid-email"),
    pytest.param({"phone": "12"}, "phone", id="invalid-phone"),
    pytest.param({"phone": "+351 000"}, "phone", id="impossible-phone"),
    pytest.param({"consent_method": "telepathy"}, "consent_method", id="unknown-consent-method"),
    pytest.param({"marketing_consent": "yes"}, "marketing_consent", id="consent-not-boolean"),
    pytest.param({"event_id": "1234"}, "event_id", id="event-id-not-uuid"),
    pytest.param({"full_name": "x" * 201}, "full_name", id="over-long-name"),
    pytest.param({"utm_campaign": "c" * 201}, "utm_campaign", id="over-long-utm"),
    pytest.param({"full_name": 42}, "full_name", id="wrong-type"),
    pytest.param({"lead_created_at": "yesterday"}, "lead_created_at", id="bad-timestamp"),
    pytest.param({"ga_client_id": "abc"}, "ga_client_id", id="bad-ga-client-id"),
    pytest.param({"consent_version": ""}, "consent_version", id="empty-consent-version"),
    pytest.param({"lead_created_at": "0001-01-01T00:00:00+14:00"}, "lead_created_at", id="year-1-far-offset"),
    pytest.param({"lead_created_at": "9999-12-31T23:59:59-12:00"}, "lead_created_at", id="year-9999"),
    pytest.param({"checkout_started_at": "1999-12-31T23:59:59Z"}, "checkout_started_at", id="before-2000"),
    pytest.param({"full_name": "Ana\u0000Teste"}, "full_name", id="nul-in-name"),
    pytest.param({"full_name": "\u200b\u200b\u200b"}, "full_name", id="zero-width-name"),
    pytest.param({"utm_source": "insta\u0000gram"}, "utm_source", id="nul-in-utm"),
    pytest.param({"utm_campaign": "launch\u001b[31m"}, "utm_campaign", id="escape-in-utm"),
    pytest.param({"consent_version": "1.0\u0000"}, "consent_version", id="nul-in-consent-version"),
    pytest.param({"referrer": "https://a.example/\n"}, "referrer", id="line-break-in-url"),
]


@pytest.mark.parametrize(("change", "field"), BAD_INPUTS)
def test_bad_input_is_a_4xx_naming_the_field(
    api: httpx.Client,
    settings: Settings,
    change: dict[str, Any],
    field: str,
    read_store: Callable[..., Any],
) -> None:
    response = api.post("/v1/leads", json=lead_body(**change))
    assert response.status_code == 422, response.text
    body = response.json()
    assert field in body["message"]
    assert field in [error["field"] for error in body["errors"]]
    assert read_store("select count(*) from leads") == [(0,)]


def test_unknown_fields_are_ignored_and_text_is_trimmed(
    api: httpx.Client, settings: Settings, read_store: Callable[..., Any]
) -> None:
    body = lead_body(full_name="\ufeff  Ana Teste\u200b ", utm_source=" \u200b ", favourite_colour="teal")
    answer = api.post("/v1/leads", json=body)
    assert answer.status_code == 200, answer.text
    rows = read_store("select full_name, utm_source from leads")
    assert rows == [("Ana Teste", None)]


def test_missing_field_is_named(api: httpx.Client) -> None:
    body = lead_body()
    del body["email"]
    response = api.post("/v1/leads", json=body)
    assert response.status_code == 422
    assert response.json()["errors"] == [{"field": "email", "message": "Field required"}]


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2, 3]", b"", b"\xff\xfe"])
def test_malformed_body_is_refused(
    api: httpx.Client, settings: Settings, raw: bytes, read_store: Callable[..., Any]
) -> None:
    response = api.post("/v1/leads", content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code in (400, 422), response.text
    assert response.json()["message"]
    assert read_store("select count(*) from leads") == [(0,)]


def test_oversized_body_is_413(api: httpx.Client, settings: Settings, read_store: Callable[..., Any]) -> None:
    body = lead_body(referrer="https://example.com/" + "r" * 70_000)
    response = api.post("/v1/leads", json=body)
    assert response.status_code == 413
    assert "65536" in response.json()["message"]

    def chunks():  # no Content-Length: the limit must hold on the streamed body too
        for _ in range(20):
            yield b" " * 4096

    streamed = api.post("/v1/leads", content=chunks(), headers={"Content-Type": "application/json"})
    assert streamed.status_code == 413
    assert read_store("select count(*) from leads") == [(0,)]


@hypothesis_settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    email=st.one_of(st.text(max_size=80), st.emails()),
    phone=st.one_of(st.none(), st.text(alphabet="+0123456789 ()-x", max_size=20), st.text(max_size=20)),
    name=st.text(max_size=250),
)
def test_any_input_gets_an_answer_not_a_500(
    api: httpx.Client, email: str, phone: str | None, name: str
) -> None:
    response = api.post("/v1/leads", json=lead_body(email=email, phone=phone, full_name=name))
    assert response.status_code in (200, 422), response.text
    if response.status_code == 422:
        assert response.json()["errors"][0]["field"] in {"email", "phone", "full_name"}


def test_logs_carry_event_id_never_email_or_phone(
    api: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    answer = api.post(
        "/v1/leads", json=lead_body(email="private.person@example.org", phone="+351 911 111 111")
    ).json()
    text = "\n".join(f"{record.getMessage()} {record.__dict__}" for record in caplog.records)
    assert answer["event_id"] in text
    assert "private.person" not in text
    assert "911111111" not in text and "911 111 111" not in text
