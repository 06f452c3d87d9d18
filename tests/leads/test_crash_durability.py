"""A 2xx means committed: kill -9 the API mid-load, restart, and every acknowledged lead is there."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import duckdb
import httpx

from tests.conftest import ADMIN_TOKEN, ApiProcess, lead_body

TOTAL = 500


async def post_until_killed(api: ApiProcess) -> tuple[set[str], int]:
    acknowledged: set[str] = set()
    failed = 0
    limits = httpx.Limits(max_connections=50)
    async with httpx.AsyncClient(base_url=api.base_url, timeout=10, limits=limits) as client:

        async def one(n: int) -> None:
            nonlocal failed
            event_id = str(uuid.uuid4())
            try:
                response = await client.post(
                    "/v1/leads", json=lead_body(event_id=event_id, email=f"buyer{n}@example.com")
                )
            except httpx.TransportError:
                failed += 1
                return
            if response.status_code == 200:
                acknowledged.add(event_id)
            if len(acknowledged) == TOTAL // 2:
                api.kill()  # in the middle of the load, with requests still in flight

        await asyncio.gather(*(one(n) for n in range(TOTAL)))
    return acknowledged, failed


# The embedded file only: what this proves is DuckDB's write-ahead log replaying every acknowledged commit of a
# killed process (on PostgreSQL a commit's durability is the server's, and killing an instance loses nothing it
# holds); it reads the file back itself.
def test_acknowledged_leads_survive_kill_9(tmp_path: Path) -> None:
    db_path = tmp_path / "crash.duckdb"
    api = ApiProcess({"ATTRIBUTION_DB_PATH": str(db_path), "ATTRIBUTION_ADMIN_TOKEN": ADMIN_TOKEN})
    api.start()
    try:
        acknowledged, failed = asyncio.run(post_until_killed(api))
        assert len(acknowledged) >= TOTAL // 2
        assert failed > 0, "the kill should have cut some requests off"

        api.start()  # restart on the same file: the WAL is replayed
        status = httpx.get(
            f"{api.base_url}/v1/admin/status", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        assert status.json()["tables"]["leads"] >= len(acknowledged)
    finally:
        api.stop()

    conn = duckdb.connect(str(db_path), read_only=True)
    stored = {str(event_id) for (event_id,) in conn.execute("select event_id from leads").fetchall()}
    orphans = conn.execute(
        "select count(*) from deliveries d left join leads l using (event_id) where l.event_id is null"
    ).fetchone()
    ledger = conn.execute("select count(*) from consent_ledger").fetchone()
    conn.close()
    assert acknowledged <= stored
    assert orphans == (0,)  # nothing half-written: no outbox row without its lead
    assert ledger == (len(stored),)
