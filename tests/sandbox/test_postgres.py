"""The throwaway PostgreSQL cluster: made and run as the postgres user, on loopback only, gone when stopped."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from sandbox.postgres import PostgresCluster, PostgresUnavailable


def test_a_cluster_serves_an_empty_database_on_loopback_and_is_removed_when_stopped() -> None:
    try:
        cluster = PostgresCluster()
        cluster.start()
    except PostgresUnavailable as exc:
        pytest.skip(str(exc))
    try:

        async def probe() -> tuple[str, int, str]:
            conn = await asyncpg.connect(cluster.url)
            try:
                listen = await conn.fetchval("show listen_addresses")
                tables = await conn.fetchval("select count(*) from pg_tables where schemaname = 'public'")
                user = await conn.fetchval("select current_user")
                return listen, tables, user
            finally:
                await conn.close()

        assert asyncio.run(probe()) == ("127.0.0.1", 0, "postgres")
        assert cluster.server_pids()
    finally:
        cluster.stop()
    assert not cluster.root.exists()
