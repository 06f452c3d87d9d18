"""What no route accepts is refused before any route runs, with the JSON error shape and CORS headers."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from api.security import MAX_HEADER_BYTES, MAX_HEADER_COUNT
from tests.conftest import lead_body

SHOP = "https://shop.example"


@pytest.fixture
def shop(api_with: Any) -> httpx.Client:
    return api_with(attribution_allowed_origins=(SHOP,), attribution_max_body_bytes=4096)


def _stored_leads(read_store: Callable[..., Any]) -> int:
    return read_store("select count(*) from leads")[0][0]


def test_headers_over_the_size_cap_are_431(shop: httpx.Client, read_store: Callable[..., Any]) -> None:
    big = shop.post("/v1/leads", json=lead_body(), headers={"X-Padding": "a" * (MAX_HEADER_BYTES + 1)})
    assert big.status_code == 431 and big.json()["error"] == "headers_too_large"
    signature = ",".join(f"v1={'0' * 64}" for _ in range(300))  # a forged Stripe-Signature of 300 entries
    forged = shop.post("/v1/webhooks/stripe", content=b"{}", headers={"Stripe-Signature": signature})
    assert forged.status_code == 431
    assert _stored_leads(read_store) == 0


def test_too_many_headers_are_431(shop: httpx.Client) -> None:
    headers = {f"X-Extra-{n}": "1" for n in range(MAX_HEADER_COUNT + 1)}
    response = shop.post("/v1/leads", json=lead_body(), headers=headers)
    assert response.status_code == 431
    assert (
        shop.post("/v1/leads", json=lead_body(), headers=dict(list(headers.items())[:50])).status_code == 200
    )


def test_a_body_that_is_not_json_is_415(shop: httpx.Client, read_store: Callable[..., Any]) -> None:
    text = shop.post("/v1/leads", content=json.dumps(lead_body()), headers={"Content-Type": "text/plain"})
    assert text.status_code == 415 and text.json()["error"] == "unsupported_media_type"
    assert "text/plain" in text.json()["message"]
    form = shop.post("/v1/leads", data={"email": "ana@example.com"})
    assert form.status_code == 415
    charset = {"Content-Type": "application/json; charset=utf-8"}
    assert shop.post("/v1/leads", content=json.dumps(lead_body()), headers=charset).status_code == 200
    assert _stored_leads(read_store) == 1


@pytest.mark.parametrize(
    "body",
    [b'{"full_name": "\xff\xfe"}', b"[" * 100_000 + b"]" * 100_000, b'{"full_name": '],
    ids=["invalid-utf8", "deep-nesting", "truncated"],
)
def test_undecodable_bodies_are_malformed_json(shop: httpx.Client, body: bytes) -> None:
    response = shop.post("/v1/leads", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code in (400, 413)
    if len(body) <= 4096:
        assert response.status_code == 400 and response.json()["error"] == "malformed_json"


def test_deep_nesting_within_the_body_limit_is_malformed_json(api: httpx.Client) -> None:
    body = b"[" * 30_000 + b"]" * 30_000  # 60 kB: under the default 64 KiB limit, deeper than json recurses
    response = api.post("/v1/leads", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and response.json()["error"] == "malformed_json"


def test_refusals_carry_cors_headers_so_the_browser_can_read_them(shop: httpx.Client) -> None:
    origin = {"Origin": SHOP}
    too_large = shop.post("/v1/leads", json=lead_body(full_name="A" * 5000), headers=origin)
    assert too_large.status_code == 413 and too_large.headers["access-control-allow-origin"] == SHOP
    wrong_type = shop.post("/v1/leads", content=b"x", headers={**origin, "Content-Type": "text/plain"})
    assert wrong_type.status_code == 415 and wrong_type.headers["access-control-allow-origin"] == SHOP


def _chunks(total: int) -> Iterator[bytes]:
    for _ in range(total // 1024):
        yield b" " * 1024


def test_an_oversized_streamed_webhook_is_413_without_an_error_traceback(
    shop: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    response = shop.post(
        "/v1/webhooks/stripe", content=_chunks(64 * 1024), headers={"Stripe-Signature": "t=1,v1=0"}
    )
    assert response.status_code == 413
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert errors == [], [record.getMessage() for record in errors]
