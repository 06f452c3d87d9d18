from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from tests.conftest import ADMIN_TOKEN, consent_body, lead_body

SHOP = "https://shop.example"


def test_cors_allows_only_configured_origins(api_with: Any) -> None:
    client = api_with(attribution_allowed_origins=(SHOP,))
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
    allowed = client.options("/v1/leads", headers={"Origin": SHOP, **preflight})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == SHOP
    refused = client.options("/v1/leads", headers={"Origin": "https://evil.example", **preflight})
    assert "access-control-allow-origin" not in refused.headers
    simple = client.post("/v1/leads", json=lead_body(), headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in simple.headers


def test_rate_limit_answers_429_with_retry_after(api_with: Any) -> None:
    client = api_with(attribution_rate_limit_per_minute=3)
    codes = [client.post("/v1/consent", json=consent_body()).status_code for _ in range(3)]
    assert codes == [200, 200, 200]
    limited = client.post("/v1/leads", json=lead_body())
    assert limited.status_code == 429
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    assert limited.json()["error"] == "rate_limited"
    assert client.get("/healthz").status_code == 200  # probes are not limited


def test_forwarded_for_believed_only_from_trusted_proxies(
    api_with: Any, read_store: Callable[..., Any]
) -> None:
    untrusted = api_with()
    untrusted.post("/v1/consent", json=consent_body(), headers={"X-Forwarded-For": "198.51.100.7"})
    assert read_store("select ip from consent_ledger") == [("127.0.0.1",)]


def test_forwarded_for_from_trusted_proxy(api_with: Any, read_store: Callable[..., Any]) -> None:
    client = api_with(attribution_trusted_proxies=("127.0.0.0/8", "10.0.0.0/8"))
    client.post("/v1/consent", json=consent_body(), headers={"X-Forwarded-For": "198.51.100.7, 10.1.2.3"})
    client.post("/v1/consent", json=consent_body(), headers={"X-Forwarded-For": "garbage, 10.1.2.3"})
    ips = sorted(ip for (ip,) in read_store("select ip from consent_ledger"))
    assert ips == ["10.1.2.3", "198.51.100.7"]


def test_admin_needs_the_bearer_token(api: httpx.Client) -> None:
    assert api.get("/v1/admin/status").status_code == 401
    assert api.get("/v1/admin/status", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert api.get("/v1/admin/status", headers={"Authorization": f"Basic {ADMIN_TOKEN}"}).status_code == 401
    ok = api.get("/v1/admin/status", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert ok.status_code == 200
    assert ok.json()["tables"]["leads"] == 0


def test_admin_is_off_without_a_token(api_with: Any) -> None:
    client = api_with(attribution_admin_token=None)
    response = client.get("/v1/admin/status", headers={"Authorization": "Bearer anything"})
    assert response.status_code == 403
    assert "ATTRIBUTION_ADMIN_TOKEN" in response.json()["message"]
