"""The read replica: published atomically while the API writes, readable from other processes, never torn."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import duckdb
import httpx
import pytest

from ingest.core.clock import utcnow
from ingest.core.settings import Settings
from ingest.reconcile.models import MATERIALISED, ModelParams, success_metrics
from ingest.reconcile.replica import (
    ReaderUnavailable,
    ReplicaPublisher,
    open_reader,
    publish_replica,
    reading,
)
from ingest.store.database import Database
from ingest.store.status import beat
from sandbox.bulk import BulkSpec, generate_bulk
from tests.conftest import lead_body, make_settings, serve, wait_until


def _beat(conn: duckdb.DuckDBPyConnection, items: Sequence[None]) -> list[None]:
    beat(conn, utcnow())
    return [None for _ in items]


def _post_leads(base_url: str, prefix: str, count: int, stop: threading.Event) -> None:
    with httpx.Client(base_url=base_url, timeout=30) as client:
        for index in range(count):
            if stop.is_set():
                return
            response = client.post("/v1/leads", json=lead_body(email=f"{prefix}.{index}@example.com"))
            assert response.status_code == 200, response.text


def _writers(base_url: str, count: int, stop: threading.Event) -> list[threading.Thread]:
    threads = [
        threading.Thread(target=_post_leads, args=(base_url, f"load{n}", count, stop), daemon=True)
        for n in range(2)
    ]
    for thread in threads:
        thread.start()
    return threads


def _env(settings: Settings) -> dict[str, str]:
    return {
        **os.environ,
        "ATTRIBUTION_DB_PATH": str(settings.attribution_db_path),
        "ATTRIBUTION_REPLICA_PATH": str(settings.attribution_replica_path),
    }


def _replica_leads(settings: Settings) -> int:
    try:
        with reading(settings, "replica") as reader:
            row = reader.conn.execute("select count(*) from leads").fetchone()
    except ReaderUnavailable:
        return 0
    return int(row[0]) if row else 0


def test_report_reads_the_replica_from_another_process_while_the_api_writes(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, attribution_replica_seconds=0.2)
    stop = threading.Event()
    with serve(settings) as base_url:
        writers = _writers(base_url, 100, stop)
        try:
            wait_until(lambda: _replica_leads(settings) > 0, what="a copy holding leads")
            done = subprocess.run(
                [sys.executable, "-m", "cli", "report", "--json"],
                env=_env(settings),
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
        finally:
            stop.set()
            for thread in writers:
                thread.join(60)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["source"] == "replica", "the API holds the database, so the report reads the replica"
    assert report["taken_at"] is not None
    leads = {m["metric"]: m for m in report["metrics"]}["crm_coverage"]["denominator"]
    assert 0 < leads <= 200


def test_a_reader_never_sees_a_torn_copy(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, attribution_replica_seconds=0.05)
    stop = threading.Event()
    copies: set[object] = set()
    leads_before = 0
    with serve(settings) as base_url:
        writers = _writers(base_url, 400, stop)
        try:
            deadline = time.monotonic() + 20
            while len(copies) < 5 and time.monotonic() < deadline:
                try:
                    reader = open_reader(settings, "replica")
                except ReaderUnavailable:
                    time.sleep(0.02)  # nothing published yet
                    continue
                try:
                    leads, captures, planned = reader.conn.execute(
                        "select (select count(*) from leads), "
                        "(select count(*) from consent_ledger where source = 'lead'), "
                        "(select count(*) from deliveries)"
                    ).fetchone() or (0, 0, 0)
                    taken_at = reader.taken_at
                finally:
                    reader.close()
                # One capture commits a lead, its ledger row and its four deliveries together: a copy mixing
                # moments would break these equalities.
                assert captures == leads and planned == 4 * leads, (leads, captures, planned)
                assert leads >= leads_before, "a later copy never holds less"
                leads_before = leads
                copies.add(taken_at)
        finally:
            stop.set()
            for thread in writers:
                thread.join(60)
    assert len(copies) >= 5, "the replica was republished while the API wrote"


def test_a_copy_records_when_it_was_taken_and_what_the_api_ran_with(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, require_consent=False, crm_enable_lead_capture=False)
    database = Database.open(settings.attribution_db_path)
    try:
        database.writer.submit_sync(_beat, None)
        before = utcnow()
        snapshot = ReplicaPublisher(database, settings).publish_now()
        after = utcnow()
    finally:
        database.close()
    assert before <= snapshot.taken_at <= after
    reader_settings = make_settings(
        tmp_path
    )  # a reader configured differently reads under the API's settings
    with reading(reader_settings, "replica") as reader:
        assert reader.taken_at == snapshot.taken_at
        assert not reader.params.require_consent and not reader.params.crm_enable_lead_capture
        assert 0 <= reader.staleness_seconds() < 60
        assert reader.conn.execute("select count(*) from service_heartbeat").fetchone() == (1,)
    assert list(tmp_path.glob("*.tmp-*")) == []


def test_a_connection_is_untracked_before_it_is_closed(tmp_path: Path) -> None:
    # stop() interrupts the tracked connection from another thread; a closed one raised and failed the API's shutdown.
    settings = make_settings(tmp_path)
    database = Database.open(settings.attribution_db_path)
    tracked: list[duckdb.DuckDBPyConnection | None] = [None]

    def track(conn: duckdb.DuckDBPyConnection | None) -> None:
        if tracked[-1] is not None:
            tracked[-1].interrupt()  # what stop() would do at this moment; raises if the connection is closed
        tracked.append(conn)

    try:
        database.writer.submit_sync(_beat, None)
        publish_replica(
            database, settings.attribution_replica_path, ModelParams.from_settings(settings), track=track
        )
    finally:
        database.close()
    assert len([conn for conn in tracked if conn is not None]) == 2, (
        "from the database's cursor to the copy's own"
    )


def test_publisher_copies_only_when_something_was_committed(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, attribution_replica_seconds=0.05)
    database = Database.open(settings.attribution_db_path)
    publisher = ReplicaPublisher(database, settings)
    try:
        publisher.start()
        wait_until(lambda: publisher.publishes == 1)
        time.sleep(0.4)
        assert publisher.publishes == 1, "nothing committed: nothing to publish"
        database.writer.submit_sync(_beat, None)
        wait_until(lambda: publisher.publishes == 2)
    finally:
        publisher.stop()
        database.close()
    assert publisher.failures == 0


def test_the_publisher_rests_at_least_as_long_as_its_last_copy_took(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, attribution_replica_seconds=0.5)
    database = Database.open(settings.attribution_db_path)
    try:
        publisher = ReplicaPublisher(database, settings)
        assert publisher.pause_seconds() == 0.5
        snapshot = publisher.publish_now()
        assert publisher.pause_seconds() == max(0.5, snapshot.seconds)
        publisher.last = replace(snapshot, seconds=40.0)  # as a copy of a large database takes
        assert publisher.pause_seconds() == 40.0
    finally:
        database.close()


def test_a_reader_refreshes_onto_the_newest_copy(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    database = Database.open(settings.attribution_db_path)
    publisher = ReplicaPublisher(database, settings)
    try:
        publisher.publish_now()
        reader = open_reader(settings, "replica")
        try:
            assert reader.conn.execute("select count(*) from service_heartbeat").fetchone() == (0,)
            assert reader.refresh() is False
            database.writer.submit_sync(_beat, None)
            publisher.publish_now()
            assert reader.refresh() is True
            assert reader.conn.execute("select count(*) from service_heartbeat").fetchone() == (1,)
            settings.attribution_replica_path.unlink()  # deleted by hand: the attached copy stays readable
            assert reader.refresh() is False
            assert reader.conn.execute("select count(*) from service_heartbeat").fetchone() == (1,)
            cursor = reader.cursor()  # another thread's cursor sees the same views
            assert len(cursor.execute("select * from success_metrics").fetchall()) == 5
        finally:
            reader.close()
    finally:
        database.close()


def _rows(conn: duckdb.DuckDBPyConnection, model: str) -> list[tuple[object, ...]]:
    return conn.execute(f"select * from {model} order by all").fetchall()


def test_a_copy_holds_the_heavy_models_computed_as_the_database_computes_them(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    generate_bulk(settings.attribution_db_path, BulkSpec(leads=3000, chunk_leads=3000, seed=5))
    database = Database.open(settings.attribution_db_path)
    try:
        ReplicaPublisher(database, settings).publish_now()
    finally:
        database.close()
    with reading(settings, "replica") as replica, reading(settings, "database") as live:
        assert replica.materialised == MATERIALISED and live.materialised == frozenset()
        tables = replica.conn.execute(
            "select table_name from duckdb_tables() where database_name = 'src'"
        ).fetchall()
        assert {name for (name,) in tables} >= MATERIALISED
        for model in sorted(MATERIALISED | {"attribution_by_utm", "presence_by_system"}):
            assert _rows(replica.conn, model) == _rows(live.conn, model), model
        metrics = success_metrics(replica.conn)
        assert metrics == success_metrics(live.conn)
        assert any(metric.denominator > 0 for metric in metrics)


def test_a_reader_moves_between_copies_with_and_without_materialised_models(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    generate_bulk(settings.attribution_db_path, BulkSpec(leads=2000, chunk_leads=2000, seed=6))
    database = Database.open(settings.attribution_db_path)
    try:
        publisher = ReplicaPublisher(database, settings)
        publisher.publish_now()
        with duckdb.connect(
            str(settings.attribution_replica_path)
        ) as older:  # as an earlier version published
            for model in MATERIALISED:
                older.execute(f"drop table {model}")
        reader = open_reader(settings, "replica")
        try:
            assert reader.materialised == frozenset()
            computed = success_metrics(reader.conn)
            publisher.publish_now()
            assert reader.refresh() is True
            assert reader.materialised == MATERIALISED
            assert success_metrics(reader.conn) == computed
            assert _rows(reader.conn, "funnel_daily") != []
        finally:
            reader.close()
    finally:
        database.close()


def test_stopping_mid_copy_keeps_the_previous_replica_whole(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, attribution_replica_seconds=60)
    generate_bulk(settings.attribution_db_path, BulkSpec(leads=4000, chunk_leads=4000, seed=3))
    database = Database.open(settings.attribution_db_path)
    try:
        first = ReplicaPublisher(database, settings).publish_now()
        interrupted = 0
        for delay in (0.0, 0.01, 0.03, 0.05, 0.1):
            publisher = ReplicaPublisher(database, settings)
            publisher.start()
            time.sleep(delay)
            publisher.stop()
            interrupted += publisher.publishes == 0
            assert publisher.failures == 0, "an interruption asked for is not a failure"
            assert list(tmp_path.glob("*.tmp-*")) == [], "no half-written copy is left behind"
            with reading(settings, "replica") as reader:
                assert reader.taken_at is not None and reader.taken_at >= first.taken_at
                assert reader.conn.execute("select count(*) from leads").fetchone() == (4000,)
    finally:
        database.close()
    assert interrupted > 0, "at least one copy was stopped part-way"


def test_leftovers_of_a_crashed_copy_are_removed_at_start_but_not_a_live_processs(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    name = settings.attribution_replica_path.name
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    leftover = settings.attribution_replica_path.with_name(f"{name}.tmp-{dead.pid}-1")
    leftover.write_bytes(b"half a copy")
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    in_progress = settings.attribution_replica_path.with_name(f"{name}.tmp-{alive.pid}-1")
    in_progress.write_bytes(b"another API's copy in progress")
    database = Database.open(settings.attribution_db_path)
    publisher = ReplicaPublisher(database, settings)
    try:
        publisher.start()
        assert not leftover.exists()
        assert in_progress.exists()
        wait_until(lambda: publisher.publishes == 1)
    finally:
        publisher.stop()
        database.close()
        alive.kill()
        alive.wait()


def test_auto_reads_the_idle_database_else_the_replica_else_says_why(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    with pytest.raises(ReaderUnavailable, match="no database"):
        open_reader(settings)
    database = Database.open(settings.attribution_db_path)
    try:
        with pytest.raises(ReaderUnavailable, match="no replica"):
            open_reader(
                settings
            )  # the database is held (here, by this very process) and nothing is published
        ReplicaPublisher(database, settings).publish_now()
        with reading(settings) as reader:
            assert reader.source == "replica"
    finally:
        database.close()
    with reading(settings) as reader:
        assert reader.source == "database" and reader.taken_at is None
