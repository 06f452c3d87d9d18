"""The Meta Conversions API fake over real loopback HTTP: as strict as Meta about token, path, window, hashes and
required fields, and its Meta-specific faults."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from sandbox import Sandbox
from sandbox.fakes import META_ACCESS_TOKEN, META_API_VERSION, META_PIXEL_ID


@pytest.fixture(scope="module")
def running_sandbox() -> Iterator[Sandbox]:
    with Sandbox() as sandbox:
        yield sandbox


@pytest.fixture
def sandbox(running_sandbox: Sandbox) -> Sandbox:
    running_sandbox.reset()
    return running_sandbox


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def event(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "event_name": "Purchase",
        "event_time": int(time.time()) - 60,
        "event_id": "6f1d8c8e-8a44-4d3a-9a57-2d9b0f1c0001",
        "action_source": "website",
        "event_source_url": "https://cafecomvendas.example/lisbon",
        "user_data": {
            "em": [_sha("ana@example.com")],
            "ph": [_sha("351912345678")],
            "client_ip_address": "203.0.113.7",
            "client_user_agent": "Mozilla/5.0",
        },
        "custom_data": {"currency": "EUR", "value": 47.0},
    }
    body.update(overrides)
    return body


def post(
    sandbox: Sandbox, body: Any, *, token: str = META_ACCESS_TOKEN, pixel: str = META_PIXEL_ID
) -> httpx.Response:
    url = f"{sandbox.meta_url}/{META_API_VERSION}/{pixel}/events"
    return httpx.post(url, params={"access_token": token}, json=body, timeout=5)


def test_a_valid_event_is_received_and_kept(sandbox: Sandbox) -> None:
    answer = post(sandbox, {"data": [event()], "test_event_code": "TEST1"})
    assert answer.status_code == 200
    assert answer.json()["events_received"] == 1 and answer.json()["messages"] == []
    (kept,) = sandbox.state("meta")["events"]
    assert kept["event_id"] == "6f1d8c8e-8a44-4d3a-9a57-2d9b0f1c0001" and kept["test_event_code"] == "TEST1"


def test_the_same_event_name_and_id_twice_counts_as_a_duplicate(sandbox: Sandbox) -> None:
    post(sandbox, {"data": [event()]})
    post(sandbox, {"data": [event()]})
    post(sandbox, {"data": [event(event_name="Lead", custom_data={})]})
    assert sandbox.state("meta")["duplicates"] == 1


def test_a_wrong_token_or_pixel_is_refused_as_graph_does(sandbox: Sandbox) -> None:
    bad_token = post(sandbox, {"data": [event()]}, token="nope")
    assert bad_token.status_code == 400 and bad_token.json()["error"]["code"] == 190
    bad_pixel = post(sandbox, {"data": [event()]}, pixel="999")
    assert bad_pixel.status_code == 400 and bad_pixel.json()["error"]["code"] == 100
    assert sandbox.state("meta")["events"] == []


@pytest.mark.parametrize(
    ("bad", "complaint"),
    [
        (event(event_time=int(time.time()) - 8 * 86400), "more than 7 days in the past"),
        (event(event_time=int(time.time()) + 3600), "in the future"),
        (event(event_source_url=None), "event_source_url is required"),
        (event(user_data={"em": [_sha("a@example.com")]}), "client_user_agent is required"),
        (
            event(user_data={"em": ["ana@example.com"], "client_user_agent": "x"}),
            "user_data.em must be SHA-256",
        ),
        (
            event(user_data={"ph": ["+351912345678"], "client_user_agent": "x"}),
            "user_data.ph must be SHA-256",
        ),
        (event(user_data={"client_user_agent": "x", "fbp": "abc"}), "fbp is not in Meta's"),
        (event(custom_data={"value": 47.0}), "currency is required for Purchase"),
        (event(custom_data={"currency": "EUR"}), "value is required for Purchase"),
        (event(action_source="web"), "action_source is required"),
        (event(event_name=""), "event_name is required"),
        (event(custom_data={"currency": "EUR", "value": 1, "note": "ana@example.com"}), "raw email"),
    ],
)
def test_an_invalid_event_refuses_the_whole_request(
    sandbox: Sandbox, bad: dict[str, Any], complaint: str
) -> None:
    answer = post(sandbox, {"data": [event(event_id="good"), bad]})
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["code"] == 100 and complaint in error["message"] and error["fbtrace_id"]
    assert sandbox.state("meta")["events"] == []


def test_a_body_without_data_or_with_unknown_keys_is_refused(sandbox: Sandbox) -> None:
    assert post(sandbox, {"data": []}).status_code == 400
    assert post(sandbox, {"data": [event()], "access_token": "x"}).status_code == 400


def test_throttle_answers_the_code_for_the_next_requests_then_accepts(sandbox: Sandbox) -> None:
    sandbox.meta.throttle(613, count=2)
    codes = [post(sandbox, {"data": [event()]}).json() for _ in range(3)]
    assert [c.get("error", {}).get("code") for c in codes] == [613, 613, None]
    assert len(sandbox.state("meta")["events"]) == 1


def test_drop_events_answers_200_receiving_nothing(sandbox: Sandbox) -> None:
    sandbox.meta.drop_events(1)
    dropped = post(sandbox, {"data": [event()]})
    assert (
        dropped.status_code == 200 and dropped.json()["events_received"] == 0 and dropped.json()["messages"]
    )
    assert sandbox.state("meta")["events"] == []
    assert post(sandbox, {"data": [event()]}).json()["events_received"] == 1


def test_harness_faults_and_records_apply_to_meta_like_the_others(sandbox: Sandbox) -> None:
    sandbox.set_faults("meta", fail_5xx_until=time.time() + 60)
    assert post(sandbox, {"data": [event()]}).status_code == 503
    sandbox.set_faults("meta", clear=True)
    assert post(sandbox, {"data": [event()]}).status_code == 200
    assert [r.status for r in sandbox.requests("meta")] == [503, 200]
    assert sandbox.env()["META_PIXEL_ID"] == META_PIXEL_ID
    assert sandbox.env()["META_BASE_URL"] == sandbox.meta_url
