"""The throwaway PostgreSQL cluster: made and run as the postgres user, on loopback only, gone when stopped."""

from __future__ import annotations

import psycopg

from sandbox.postgres import PostgresCluster


def test_a_cluster_serves_an_empty_database_on_loopback_and_is_removed_when_stopped(
    own_postgres_cluster: PostgresCluster,
) -> None:
    cluster = own_postgres_cluster
    with psycopg.connect(cluster.url) as conn:
        listen = conn.execute("show listen_addresses").fetchone()
        tables = conn.execute("select count(*) from pg_tables where schemaname = 'public'").fetchone()
        user = conn.execute("select current_user").fetchone()
    assert (listen, tables, user) == (("127.0.0.1",), (0,), ("postgres",))
    assert cluster.server_pids()
    cluster.stop()
    assert not cluster.root.exists()
