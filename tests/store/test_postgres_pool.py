"""Reads on PostgreSQL share a bounded pool: when every connection is busy a read waits, bounded, then is refused
as unavailable (a 503), and the pool serves again once connections come back."""

from __future__ import annotations

import threading
import time

import pytest

from ingest.store import postgres
from ingest.store.postgres import PostgresDatabase
from ingest.store.writer import StoreUnavailable


def test_an_exhausted_pool_queues_a_read_then_refuses_it_and_recovers(postgres_url: str) -> None:
    postgres.migrate(postgres_url)
    database = PostgresDatabase.connect(postgres_url, pool_size=1, pool_wait=0.5)
    holding, release = threading.Event(), threading.Event()

    def hold(conn: postgres.PgConnection) -> None:
        holding.set()
        release.wait(10)

    holder = threading.Thread(target=database.read, args=(hold,))
    try:
        holder.start()
        assert holding.wait(10)
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="every PostgreSQL connection is busy"):
            database.read(lambda conn: conn.execute("select 1").fetchone())
        assert 0.4 < time.monotonic() - started < 5, "it waited for a connection, bounded"
        release.set()
        holder.join(10)
        assert database.read(lambda conn: conn.execute("select 1").fetchone()) == (1,)
    finally:
        release.set()
        database.close()
