"""A delivery sent while the store cannot write is recorded as soon as it can, not left leased for minutes.

DuckDB only: the fault is the embedded file's own disk filling up (a small tmpfs under the database file)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import duckdb
import pytest

from ingest.core.clock import utcnow
from ingest.core.vocabulary import DeliveryStatus
from ingest.store.database import Database
from ingest.store.status import beat
from ingest.store.writer import StoreUnavailable
from sandbox import Sandbox
from tests.conftest import fill_disk
from tests.outbox.conftest import async_wait_until, capture, delivery_rows, running_worker, sandbox_settings


def _beat(conn: duckdb.DuckDBPyConnection, items: Sequence[None]) -> list[None]:
    beat(conn, utcnow())
    return [None for _ in items]


async def _exhaust(database: Database) -> None:
    """Write heartbeats until the full disk refuses one."""
    for _ in range(200):
        try:
            await database.writer.submit(_beat, None)
        except StoreUnavailable:
            return
    raise AssertionError("the full disk kept taking writes")


async def test_an_outcome_the_store_refused_is_recorded_once_writes_work_again(
    tmp_path: Path, small_disk: Path, sandbox: Sandbox, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    settings = sandbox_settings(tmp_path, sandbox, attribution_db_path=small_disk / "attribution.duckdb")
    sandbox.set_faults("crm", latency_ms=1500)  # the CRM answers while the disk is full
    async with running_worker(settings) as (database, _worker):
        await capture(database, settings)
        await async_wait_until(lambda: sandbox.arrived("crm") == 1)
        filler = fill_disk(small_disk)
        await _exhaust(database)  # the write-ahead log's last page may still take a small write or two
        await async_wait_until(  # the CRM has answered; its outcome could not be committed and waits
            lambda: any("wait for the store to write again" in r.getMessage() for r in caplog.records),
            timeout=15,
        )
        [crm] = delivery_rows(database, "destination = 'crm'")
        assert crm["status"] == DeliveryStatus.PENDING and crm["claimed_until"] is not None
        filler.unlink()
        await async_wait_until(
            lambda: delivery_rows(database, "destination = 'crm'")[0]["status"] == DeliveryStatus.DELIVERED,
            timeout=10,
        )
        [crm] = delivery_rows(database, "destination = 'crm'")
        assert crm["claimed_until"] is None and crm["attempt_count"] == 1
    assert len(sandbox.requests("crm")) == 1  # recorded, not sent again
