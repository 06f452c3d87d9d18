from __future__ import annotations

import httpx


def test_probes(api: httpx.Client) -> None:
    assert api.get("/healthz").json() == {"status": "ok"}
    ready = api.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"


def test_openapi_documents_every_endpoint(api: httpx.Client) -> None:
    assert api.get("/docs").status_code == 200
    spec = api.get("/openapi.json").json()
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            assert operation.get("description") or operation.get("summary"), (
                f"{method} {path} has no docstring"
            )
    assert {"/v1/leads", "/v1/consent", "/healthz", "/readyz"} <= set(spec["paths"])
