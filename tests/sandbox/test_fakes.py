"""The MailerLite / CRM / sGTM fakes over real loopback HTTP: validation, upserts, idempotency, faults, records."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from sandbox import Sandbox
from sandbox.crm import sign_crm_body
from sandbox.fakes import CRM_API_TOKEN, CRM_SIGNING_SECRET, MAILERLITE_API_KEY, MAILERLITE_GROUP_ID

ML_AUTH = {"Authorization": f"Bearer {MAILERLITE_API_KEY}"}


@pytest.fixture(scope="module")
def running_sandbox() -> Iterator[Sandbox]:
    with Sandbox() as sandbox:
        yield sandbox


@pytest.fixture
def sandbox(running_sandbox: Sandbox) -> Sandbox:
    """The module's sandbox with requests, faults and stored data cleared."""
    running_sandbox.reset()
    return running_sandbox


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as c:
        yield c


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def subscriber_body(**overrides: Any) -> dict[str, Any]:
    """A MailerLite upsert shaped like CONTRACT.md (field values as strings, as MailerLite wants)."""
    body: dict[str, Any] = {
        "email": "ana.teste@example.com",
        "fields": {
            "name": "Ana Teste",
            "phone": "+351912345678",
            "event_id": "0b7c2f1e-4f7e-4c1a-9d59-1f0f3e1c2a11",
            "user_session_id": "4c1f2e0b-7c2f-4f7e-9d59-2a111f0f3e1c",
            "lead_created_at": "2025-01-10 09:30:00",
            "checkout_started_at": None,
            "payment_status": "lead",
            "marketing_consent": "true",
            "consent_method": "modal",
            "consent_timestamp": "2025-01-10 09:30:00",
            "consent_ip": "203.0.113.7",
            "crm_contact_id": None,
            "utm_source": "instagram",
            "utm_medium": "social",
            "utm_campaign": "lisbon-launch",
            "utm_content": None,
            "utm_term": None,
        },
        "groups": [MAILERLITE_GROUP_ID],
        "status": "active",
        "opted_in_at": "2025-01-10 09:30:00",
        "optin_ip": "203.0.113.7",
    }
    body.update(overrides)
    return body


def lead_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "event_id": "0b7c2f1e-4f7e-4c1a-9d59-1f0f3e1c2a11",
        "name": "Ana Teste",
        "email": "ana.teste@example.com",
        "phone": "+351912345678",
        "amount": None,
        "lead_status": "lead",
        "lead_created_at": "2025-01-10T09:30:00+00:00",
        "utm_source": "instagram",
        "utm_medium": "social",
        "utm_campaign": "lisbon-launch",
        "utm_content": None,
        "utm_term": None,
    }
    body.update(overrides)
    return body


def post_crm(
    client: httpx.Client,
    sandbox: Sandbox,
    body: dict[str, Any],
    *,
    key: str | None = "key-1",
    token: str | None = CRM_API_TOKEN,
    secret: str | None = CRM_SIGNING_SECRET,
    timestamp: int | None = None,
    raw: bytes | None = None,
) -> httpx.Response:
    content = raw if raw is not None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Idempotency-Key"] = key
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if secret is not None:
        signed = json.dumps(body).encode()
        headers["X-Attribution-Signature"] = sign_crm_body(secret, signed, timestamp or int(time.time()))
    return client.post(sandbox.crm_url, content=content, headers=headers)


def mp_body(**overrides: Any) -> dict[str, Any]:
    """A GA4 Measurement Protocol purchase shaped like CONTRACT.md."""
    body: dict[str, Any] = {
        "client_id": "1234567890.1700000000",
        "timestamp_micros": int(time.time() * 1_000_000) - 60_000_000,
        "events": [
            {
                "name": "purchase",
                "params": {
                    "transaction_id": "pi_123",
                    "value": 47.0,
                    "currency": "EUR",
                    "items": [
                        {"item_id": "ticket", "item_name": "Lisbon 2025", "price": 47.0, "quantity": 1}
                    ],
                    "event_id": "0b7c2f1e-4f7e-4c1a-9d59-1f0f3e1c2a11",
                },
            }
        ],
        "user_data": {
            "sha256_email_address": [sha("ana.teste@example.com")],
            "sha256_phone_number": [sha("+351912345678")],
        },
        "consent": {"ad_user_data": "GRANTED", "ad_personalization": "DENIED"},
    }
    body.update(overrides)
    return body


def post_mp(client: httpx.Client, sandbox: Sandbox, body: Any, **query: str) -> httpx.Response:
    env = sandbox.env()
    params = {"measurement_id": env["SGTM_MEASUREMENT_ID"], "api_secret": env["SGTM_API_SECRET"], **query}
    return client.post(sandbox.sgtm_url, params=params, json=body)


# MailerLite


def _create_fields(sandbox: Sandbox, client: httpx.Client, *keys: str) -> None:
    for key in keys:
        created = client.post(
            sandbox.mailerlite_url + "/api/fields", json={"name": key, "type": "text"}, headers=ML_AUTH
        )
        assert created.status_code == 201, created.text


def test_mailerlite_upsert_creates_then_updates_the_same_subscriber(
    sandbox: Sandbox, client: httpx.Client
) -> None:
    _create_fields(sandbox, client, "payment_status", "utm_source", "utm_content")
    url = sandbox.mailerlite_url + "/api/subscribers"
    first = client.post(url, json=subscriber_body(), headers=ML_AUTH)
    second = client.post(
        url,
        json={"email": "Ana.Teste@Example.com", "fields": {"payment_status": "paid", "utm_content": "reel"}},
        headers=ML_AUTH,
    )

    assert first.status_code == 201
    assert second.status_code == 200
    created, updated = first.json()["data"], second.json()["data"]
    assert created["id"] == updated["id"] and created["id"].isdigit()
    assert updated["email"] == "ana.teste@example.com"
    assert updated["fields"]["payment_status"] == "paid"
    assert updated["fields"]["utm_source"] == "instagram"  # merged, not replaced
    assert updated["status"] == "active"
    assert updated["groups"] == [{"id": MAILERLITE_GROUP_ID}]


def test_mailerlite_drops_fields_that_were_never_created_as_the_real_api_does(
    sandbox: Sandbox, client: httpx.Client
) -> None:
    url = sandbox.mailerlite_url + "/api/subscribers"
    before = client.post(url, json=subscriber_body(), headers=ML_AUTH)
    _create_fields(sandbox, client, "event_id")
    after = client.post(url, json=subscriber_body(), headers=ML_AUTH)

    assert before.status_code == 201  # accepted, yet the unknown keys are gone
    fields = before.json()["data"]["fields"]
    assert fields["name"] == "Ana Teste" and fields["phone"] == "+351912345678"  # MailerLite's own fields
    assert "event_id" not in fields and "utm_source" not in fields
    assert after.status_code == 200
    assert after.json()["data"]["fields"]["event_id"] == subscriber_body()["fields"]["event_id"]
    assert "utm_source" not in after.json()["data"]["fields"]
    assert sandbox.requests("mailerlite")[0].body["fields"]["utm_source"] == "instagram"  # what was sent


def test_mailerlite_ids_are_stable_across_sandboxes(sandbox: Sandbox, client: httpx.Client) -> None:
    first = client.post(sandbox.mailerlite_url + "/api/subscribers", json=subscriber_body(), headers=ML_AUTH)
    with Sandbox() as other:
        again = client.post(
            other.mailerlite_url + "/api/subscribers", json=subscriber_body(), headers=ML_AUTH
        )

    assert first.json()["data"]["id"] == again.json()["data"]["id"]


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong-key"}, {"Authorization": f"Basic {MAILERLITE_API_KEY}"}],
    ids=["missing", "wrong-key", "not-bearer"],
)
def test_mailerlite_refuses_requests_without_the_api_key(
    sandbox: Sandbox, client: httpx.Client, headers: dict[str, str]
) -> None:
    response = client.post(
        sandbox.mailerlite_url + "/api/subscribers", json=subscriber_body(), headers=headers
    )

    assert response.status_code == 401
    assert response.json() == {"message": "Unauthenticated."}
    assert sandbox.state("mailerlite")["subscribers"] == {}


@pytest.mark.parametrize(
    ("overrides", "error_key"),
    [
        ({"email": "not-an-email"}, "email"),
        ({"email": None}, "email"),
        ({"email": "ana@example.test"}, "email"),
        ({"fields": {"marketing_consent": True}}, "fields.marketing_consent"),
        ({"fields": {"name": {"first": "Ana"}}}, "fields.name"),
        ({"fields": ["Ana"]}, "fields"),
        ({"groups": ["999"]}, "groups.0"),
        ({"groups": MAILERLITE_GROUP_ID}, "groups"),
        ({"status": "subscribed"}, "status"),
        ({"opted_in_at": "2025-01-10T09:30:00Z"}, "opted_in_at"),
        ({"optin_ip": "not-an-ip"}, "optin_ip"),
    ],
)
def test_mailerlite_rejects_invalid_subscribers_with_422(
    sandbox: Sandbox, client: httpx.Client, overrides: dict[str, Any], error_key: str
) -> None:
    response = client.post(
        sandbox.mailerlite_url + "/api/subscribers", json=subscriber_body(**overrides), headers=ML_AUTH
    )

    assert response.status_code == 422
    body = response.json()
    assert error_key in body["errors"]
    assert body["message"].startswith(body["errors"][error_key][0])
    assert sandbox.state("mailerlite")["subscribers"] == {}


def test_mailerlite_unsubscribe_is_an_upsert_that_is_recorded(sandbox: Sandbox, client: httpx.Client) -> None:
    url = sandbox.mailerlite_url + "/api/subscribers"
    client.post(url, json=subscriber_body(), headers=ML_AUTH)
    response = client.post(
        url, json={"email": "ana.teste@example.com", "status": "unsubscribed"}, headers=ML_AUTH
    )

    assert response.status_code == 200
    stored = sandbox.mailerlite.subscriber("ana.teste@example.com")
    assert stored is not None
    assert stored["status"] == "unsubscribed"
    assert stored["unsubscribed_at"] is not None
    assert [r.body.get("status") for r in sandbox.requests("mailerlite")] == ["active", "unsubscribed"]


def test_mailerlite_fields_are_created_once_and_listed(sandbox: Sandbox, client: httpx.Client) -> None:
    url = sandbox.mailerlite_url + "/api/fields"
    created = client.post(url, json={"name": "event_id", "type": "text"}, headers=ML_AUTH)
    duplicate = client.post(url, json={"name": "Event_ID", "type": "text"}, headers=ML_AUTH)
    default_duplicate = client.post(url, json={"name": "phone", "type": "text"}, headers=ML_AUTH)
    bad_type = client.post(url, json={"name": "amount", "type": "boolean"}, headers=ML_AUTH)
    listed = client.get(url, headers=ML_AUTH)

    assert created.status_code == 201
    assert created.json()["data"]["key"] == "event_id"
    assert duplicate.status_code == 422
    assert duplicate.json()["errors"]["name"] == ["The name has already been taken."]
    assert default_duplicate.status_code == 422
    assert bad_type.status_code == 422 and "type" in bad_type.json()["errors"]
    keys = [f["key"] for f in listed.json()["data"]]
    assert "event_id" in keys and "phone" in keys and "amount" not in keys
    assert client.get(url).status_code == 401


# CRM


def test_crm_creates_then_updates_the_contact_for_an_email(sandbox: Sandbox, client: httpx.Client) -> None:
    first = post_crm(client, sandbox, lead_body(), key="lead-1")
    paid = post_crm(client, sandbox, lead_body(lead_status="paid", amount=4700), key="paid-1")

    assert first.status_code == 200 and paid.status_code == 200
    assert first.json()["status"] == "created"
    assert paid.json() == {"contact_id": first.json()["contact_id"], "status": "updated"}
    contact = sandbox.state("crm")["contacts"]["ana.teste@example.com"]
    assert contact["lead_status"] == "paid"


def test_crm_repeated_idempotency_key_replays_the_answer_without_a_new_write(
    sandbox: Sandbox, client: httpx.Client
) -> None:
    first = post_crm(client, sandbox, lead_body(), key="same-key")
    again = post_crm(client, sandbox, lead_body(), key="same-key")

    assert again.status_code == 200
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    state = sandbox.state("crm")
    assert (state["received"], state["unique"], state["duplicates"]) == (2, 1, 1)
    assert state["contacts"]["ana.teste@example.com"]["event_ids"] == [lead_body()["event_id"]]


def test_crm_requires_an_idempotency_key(sandbox: Sandbox, client: httpx.Client) -> None:
    response = post_crm(client, sandbox, lead_body(), key=None)

    assert response.status_code == 400
    assert sandbox.state("crm")["unique"] == 0


@pytest.mark.parametrize("token", [None, "wrong-token"], ids=["missing", "wrong"])
def test_crm_refuses_a_missing_or_wrong_bearer_token(
    sandbox: Sandbox, client: httpx.Client, token: str | None
) -> None:
    assert post_crm(client, sandbox, lead_body(), token=token).status_code == 401


def test_crm_refuses_bad_signatures(sandbox: Sandbox, client: httpx.Client) -> None:
    body = lead_body()
    tampered = json.dumps(lead_body(lead_status="paid")).encode()

    assert post_crm(client, sandbox, body, secret=None).status_code == 401
    assert post_crm(client, sandbox, body, secret="another-secret").status_code == 401
    assert post_crm(client, sandbox, body, timestamp=int(time.time()) - 3600).status_code == 401
    assert post_crm(client, sandbox, body, raw=tampered).status_code == 401
    assert post_crm(client, sandbox, body).status_code == 200


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"event_id": None}, "event_id"),
        ({"email": "ana@"}, "email"),
        ({"lead_status": "won"}, "lead_status"),
        ({"amount": "47.00"}, "amount"),
        ({"lead_created_at": "yesterday"}, "lead_created_at"),
    ],
)
def test_crm_rejects_invalid_leads_with_422(
    sandbox: Sandbox, client: httpx.Client, overrides: dict[str, Any], field: str
) -> None:
    response = post_crm(client, sandbox, lead_body(**overrides))

    assert response.status_code == 422
    assert field in response.json()["fields"]


def test_crm_retry_after_a_rejection_with_the_same_key_is_a_first_write(
    sandbox: Sandbox, client: httpx.Client
) -> None:
    rejected = post_crm(client, sandbox, lead_body(lead_status="won"), key="k")
    accepted = post_crm(client, sandbox, lead_body(), key="k")

    assert (rejected.status_code, accepted.status_code) == (422, 200)
    assert accepted.json()["status"] == "created"
    assert "idempotent-replayed" not in accepted.headers


def test_crm_without_token_or_secret_accepts_plain_requests(client: httpx.Client) -> None:
    with Sandbox(crm_api_token=None, crm_signing_secret=None) as open_sandbox:
        response = post_crm(client, open_sandbox, lead_body(), token=None, secret=None)
        env = open_sandbox.env()

    assert response.status_code == 200
    assert "CRM_API_TOKEN" not in env and "CRM_SIGNING_SECRET" not in env


# sGTM


def test_sgtm_accepts_a_valid_purchase_with_204(sandbox: Sandbox, client: httpx.Client) -> None:
    response = post_mp(client, sandbox, mp_body())

    assert response.status_code == 204
    events = sandbox.state("sgtm")["events"]
    assert [(e["client_id"], e["name"]) for e in events] == [("1234567890.1700000000", "purchase")]


def test_sgtm_accepts_g_collect_paths_and_refuses_others(sandbox: Sandbox, client: httpx.Client) -> None:
    base = sandbox.sgtm_url.removesuffix("/mp/collect")
    query = {
        "measurement_id": sandbox.env()["SGTM_MEASUREMENT_ID"],
        "api_secret": sandbox.env()["SGTM_API_SECRET"],
    }

    assert client.post(base + "/g/collect", params=query, json=mp_body()).status_code == 204
    assert client.post(base + "/mp/other", params=query, json=mp_body()).status_code == 404


@pytest.mark.parametrize(
    "query",
    [{"api_secret": "wrong"}, {"measurement_id": "G-OTHER"}],
    ids=["api_secret", "measurement_id"],
)
def test_sgtm_refuses_wrong_credentials(
    sandbox: Sandbox, client: httpx.Client, query: dict[str, str]
) -> None:
    response = post_mp(client, sandbox, mp_body(), **query)

    assert response.status_code == 403
    assert response.json()["validationMessages"][0]["fieldPath"] in query


def _event(name: str = "purchase", **params: Any) -> dict[str, Any]:
    return {"name": name, "params": params}


NOW_MICROS = int(time.time() * 1_000_000)


@pytest.mark.parametrize(
    ("overrides", "field_path"),
    [
        ({"client_id": None}, "client_id"),
        ({"client_id": 12345}, "client_id"),
        ({"events": []}, "events"),
        ({"events": [_event()] * 26}, "events"),
        ({"events": [_event("a" * 41)]}, "events[0].name"),
        ({"events": [_event("bad-name")]}, "events[0].name"),
        ({"events": [_event("1purchase")]}, "events[0].name"),
        ({"events": [_event("session_start")]}, "events[0].name"),
        ({"events": [_event(transaction_id="x" * 101)]}, "events[0].params.transaction_id"),
        ({"events": [_event(is_test=True)]}, "events[0].params.is_test"),
        ({"events": [_event(items=[{"price": 1}])]}, "events[0].params.items[0]"),
        ({"timestamp_micros": NOW_MICROS - 73 * 3600 * 1_000_000}, "timestamp_micros"),
        ({"timestamp_micros": NOW_MICROS + 3600 * 1_000_000}, "timestamp_micros"),
        (
            {"user_data": {"sha256_email_address": [sha("a@b.com").upper()]}},
            "user_data.sha256_email_address[0]",
        ),
        ({"user_data": {"sha256_email_address": ["abc123"]}}, "user_data.sha256_email_address[0]"),
        ({"user_data": {"sha256_email_address": sha("a@b.com")}}, "user_data.sha256_email_address"),
        ({"user_data": {"sha256_email_address": ["ana@example.com"]}}, "user_data.sha256_email_address[0]"),
        ({"user_data": {"sha256_phone_number": ["+351912345678"]}}, "user_data.sha256_phone_number[0]"),
        ({"user_data": {"address": [{"city": "x@y"}]}}, "user_data.address[0].city"),
        ({"consent": {"ad_user_data": "YES"}}, "consent.ad_user_data"),
        ({"consent": {"analytics_storage": "GRANTED"}}, "consent.analytics_storage"),
        ({"events": [_event(email="ana@example.com")]}, "events[0].params.email"),
        ({"unexpected": 1}, "unexpected"),
    ],
)
def test_sgtm_rejects_invalid_payloads_with_validation_messages(
    sandbox: Sandbox, client: httpx.Client, overrides: dict[str, Any], field_path: str
) -> None:
    response = post_mp(client, sandbox, mp_body(**overrides))

    assert response.status_code == 400
    assert field_path in [m["fieldPath"] for m in response.json()["validationMessages"]]
    assert sandbox.state("sgtm")["accepted"] == []


def test_sgtm_rejects_a_body_that_is_not_a_json_object(sandbox: Sandbox, client: httpx.Client) -> None:
    assert post_mp(client, sandbox, ["not", "an", "object"]).status_code == 400


# Recording


def test_requests_are_recorded_and_served_over_http(sandbox: Sandbox, client: httpx.Client) -> None:
    client.post(
        sandbox.mailerlite_url + "/api/subscribers",
        json=subscriber_body(),
        headers={**ML_AUTH, "X-Trace": "t1"},
    )
    control = sandbox.mailerlite_url + "/_sandbox/requests"

    [record] = sandbox.requests("mailerlite")
    assert (record.method, record.path, record.status) == ("POST", "/api/subscribers", 201)
    assert record.headers["x-trace"] == "t1"
    assert record.headers["authorization"] == f"Bearer {MAILERLITE_API_KEY}"
    assert record.body == subscriber_body()
    assert record.response["data"]["email"] == "ana.teste@example.com"
    assert record.fault is None
    assert abs(record.received_at - time.time()) < 5
    over_http = client.get(control).json()
    assert over_http == [json.loads(json.dumps(record.to_json()))]
    assert sandbox.requests("crm") == []

    assert client.delete(control).status_code == 204
    assert client.get(control).json() == []
    assert sandbox.requests("mailerlite") == []


def test_reset_over_http_forgets_stored_data(sandbox: Sandbox, client: httpx.Client) -> None:
    post_crm(client, sandbox, lead_body())
    base = sandbox.crm_url.removesuffix("/webhooks/attribution")

    assert client.get(base + "/_sandbox/state").json()["unique"] == 1
    assert client.post(base + "/_sandbox/reset").status_code == 204
    assert client.get(base + "/_sandbox/state").json()["unique"] == 0
    assert sandbox.requests("crm") == []


# Faults


def test_error_rate_answers_500_and_is_reproducible_with_a_seed(
    sandbox: Sandbox, client: httpx.Client
) -> None:
    def statuses() -> list[int]:
        return [post_mp(client, sandbox, mp_body()).status_code for _ in range(20)]

    sandbox.set_faults("sgtm", error_rate=0.5, seed=7)
    first = statuses()
    sandbox.set_faults("sgtm", seed=7)
    second = statuses()

    assert first == second
    assert set(first) == {204, 500}
    sandbox.set_faults("sgtm", error_rate=1.0)
    assert post_mp(client, sandbox, mp_body()).status_code == 500
    assert sandbox.requests("sgtm")[-1].fault == "error_rate"


def test_outage_window_answers_503_until_it_ends(sandbox: Sandbox, client: httpx.Client) -> None:
    sandbox.set_faults("crm", fail_5xx_until=time.time() + 60)
    during = post_crm(client, sandbox, lead_body())
    sandbox.set_faults("crm", fail_5xx_until=time.time() - 1)
    after = post_crm(client, sandbox, lead_body())

    assert during.status_code == 503
    assert after.status_code == 200
    assert after.json()["status"] == "created"  # the outage answer was never a write
    assert [r.status for r in sandbox.requests("crm")] == [503, 200]


def test_429_carries_retry_after_for_the_next_count_requests(sandbox: Sandbox, client: httpx.Client) -> None:
    sandbox.set_faults("mailerlite", status_429_retry_after=7, count_429=2)
    url = sandbox.mailerlite_url + "/api/subscribers"
    responses = [client.post(url, json=subscriber_body(), headers=ML_AUTH) for _ in range(3)]

    assert [r.status_code for r in responses] == [429, 429, 201]
    assert responses[0].headers["retry-after"] == "7"
    assert sandbox.faults("mailerlite").count_429 == 0


def test_latency_delays_the_answer(sandbox: Sandbox, client: httpx.Client) -> None:
    sandbox.set_faults("sgtm", latency_ms=300)
    started = time.monotonic()
    response = post_mp(client, sandbox, mp_body())

    assert response.status_code == 204
    assert time.monotonic() - started >= 0.3


def test_a_request_held_by_latency_counts_as_arrived_before_it_is_recorded(
    sandbox: Sandbox, client: httpx.Client
) -> None:
    sandbox.set_faults("sgtm", latency_ms=800)
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(post_mp, client, sandbox, mp_body())
        deadline = time.monotonic() + 5
        while sandbox.arrived("sgtm") == 0:
            assert time.monotonic() < deadline, "the request never arrived"
            time.sleep(0.01)
        assert sandbox.requests("sgtm") == []  # on the wire, held, not answered
        assert answer.result(timeout=10).status_code == 204
    assert sandbox.arrived("sgtm") == 1 and len(sandbox.requests("sgtm")) == 1
    sandbox.clear("sgtm")
    assert sandbox.arrived("sgtm") == 0


def test_reset_connection_drops_the_request_without_an_answer(sandbox: Sandbox, client: httpx.Client) -> None:
    sandbox.set_faults("crm", reset_connection=True)

    with pytest.raises(httpx.TransportError):
        post_crm(client, sandbox, lead_body())
    [record] = sandbox.requests("crm")
    assert (record.status, record.fault) == (None, "reset_connection")
    assert sandbox.state("crm")["received"] == 0


def test_reject_status_answers_the_4xx_every_time(sandbox: Sandbox, client: httpx.Client) -> None:
    sandbox.set_faults("crm", reject_status=422)

    assert [post_crm(client, sandbox, lead_body()).status_code for _ in range(3)] == [422, 422, 422]
    assert sandbox.state("crm")["unique"] == 0


def test_clear_removes_every_fault(sandbox: Sandbox, client: httpx.Client) -> None:
    sandbox.set_faults(
        "crm", error_rate=1.0, fail_5xx_until=time.time() + 60, status_429_retry_after=1, reject_status=400
    )
    sandbox.set_faults("crm", reset_connection=True)
    faults = sandbox.set_faults("crm", clear=True)

    assert faults == type(faults)()
    assert post_crm(client, sandbox, lead_body()).status_code == 200


def test_faults_are_per_destination_and_settable_over_http(sandbox: Sandbox, client: httpx.Client) -> None:
    control = sandbox.mailerlite_url + "/_sandbox/faults"
    set_response = client.post(control, json={"reject_status": 400, "latency_ms": 0})
    invalid = client.post(control, json={"error_rate": 2})
    unknown = client.post(control, json={"explode": True})

    assert set_response.status_code == 200 and set_response.json()["reject_status"] == 400
    assert client.get(control).json()["reject_status"] == 400
    assert (invalid.status_code, unknown.status_code) == (422, 422)
    assert (
        client.post(
            sandbox.mailerlite_url + "/api/subscribers", json=subscriber_body(), headers=ML_AUTH
        ).status_code
        == 400
    )
    assert post_mp(client, sandbox, mp_body()).status_code == 204
    assert client.post(control, json={"clear": True}).json()["reject_status"] is None
    assert (
        client.post(
            sandbox.mailerlite_url + "/api/subscribers", json=subscriber_body(), headers=ML_AUTH
        ).status_code
        == 201
    )


# Lifecycle


def test_env_points_at_the_running_fakes(sandbox: Sandbox) -> None:
    env = sandbox.env()

    assert set(env) == {
        "MAILERLITE_BASE_URL", "MAILERLITE_API_KEY", "MAILERLITE_GROUP_ID", "CRM_WEBHOOK_URL", "CRM_API_TOKEN",
        "CRM_SIGNING_SECRET", "SGTM_ENDPOINT", "SGTM_MEASUREMENT_ID", "SGTM_API_SECRET",
        "META_BASE_URL", "META_PIXEL_ID", "META_ACCESS_TOKEN", "META_API_VERSION",
    }  # fmt: skip
    assert env["MAILERLITE_BASE_URL"] == sandbox.mailerlite_url
    assert env["CRM_WEBHOOK_URL"] == sandbox.crm_url
    assert env["SGTM_ENDPOINT"] == sandbox.sgtm_url
    assert all(url.startswith("http://127.0.0.1:") for url in (sandbox.mailerlite_url, sandbox.crm_url))


def test_stopped_sandbox_no_longer_answers(client: httpx.Client) -> None:
    with Sandbox() as sandbox:
        url = sandbox.mailerlite_url + "/api/fields"
        assert client.get(url, headers=ML_AUTH).status_code == 200

    with pytest.raises(httpx.ConnectError):
        client.get(url, headers=ML_AUTH)


def test_run_sandbox_forever_serves_until_interrupted() -> None:
    code = "from sandbox import run_sandbox_forever; run_sandbox_forever(with_stripe=False)"
    process = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        lines: list[str] = []
        for line in process.stdout:
            lines.append(line)
            if line.startswith("Ctrl-C"):
                break
        env = dict(line.strip().split("=", 1) for line in lines if line.startswith(("MAILERLITE_", "CRM_")))
        answer = httpx.get(
            env["MAILERLITE_BASE_URL"] + "/api/fields",
            headers={"Authorization": f"Bearer {env['MAILERLITE_API_KEY']}"},
        )
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert answer.status_code == 200
    assert env["CRM_WEBHOOK_URL"].startswith("http://127.0.0.1:")
    assert process.returncode == 0
    assert "sandbox stopped" in rest
