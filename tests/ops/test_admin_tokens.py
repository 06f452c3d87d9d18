"""ATTRIBUTION_ADMIN_TOKEN as a comma list while a token is rolled."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from ingest.admin_client import AdminApi
from tests.conftest import make_settings, serve

NEW, OLD, OTHER = "new-admin-token-2", "old-admin-token-1", "never-issued-token"


def test_either_token_of_a_roll_is_accepted_and_a_third_refused(
    tmp_path: Path, store: dict[str, Any]
) -> None:
    settings = make_settings(tmp_path, attribution_admin_token=f" {NEW} , {OLD} ", **store)
    with serve(settings) as base_url, httpx.Client(base_url=base_url, timeout=30) as client:
        for token in (NEW, OLD):
            for path in ("/v1/admin/status", "/metrics"):
                answer = client.get(path, headers={"Authorization": f"Bearer {token}"})
                assert answer.status_code == 200, (path, token)
        for header in (f"Bearer {OTHER}", f"Bearer {NEW},{OLD}", "Bearer", f"Basic {NEW}"):
            for path in ("/v1/admin/status", "/metrics"):
                assert client.get(path, headers={"Authorization": header}).status_code == 401, (path, header)


def test_our_clients_send_the_first_token_of_the_list(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, attribution_admin_token=f"{NEW},{OLD}")
    assert AdminApi.from_settings(settings).token == NEW


def test_metrics_are_open_without_an_admin_token(tmp_path: Path, store: dict[str, Any]) -> None:
    with serve(make_settings(tmp_path, attribution_admin_token=None, **store)) as base_url:
        answer = httpx.get(f"{base_url}/metrics", timeout=30)
    assert answer.status_code == 200
    assert "attribution_deliveries" in answer.text
