from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import duckdb
import pytest

from ingest.core.errors import Conflict, DomainError
from ingest.store.database import connect, migrate
from ingest.store.writer import Writer, WriterStopped


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    connection = connect(tmp_path / "w.duckdb")
    connection.execute("create table items (n integer primary key)")
    yield connection
    connection.close()


def insert_items(conn: duckdb.DuckDBPyConnection, items: Sequence[int]) -> list[int | DomainError]:
    results: list[int | DomainError] = []
    for n in items:
        if n < 0:
            results.append(Conflict(f"refused {n}"))
            continue
        conn.execute("insert into items values (?)", [n])
        results.append(n)
    return results


def count(conn: duckdb.DuckDBPyConnection) -> int:
    row = conn.execute("select count(*) from items").fetchone()
    assert row is not None
    return int(row[0])


def test_concurrent_jobs_share_transactions(conn: duckdb.DuckDBPyConnection) -> None:
    writer = Writer(conn)
    gate = threading.Event()

    def slow(connection: duckdb.DuckDBPyConnection, items: Sequence[None]) -> list[None]:
        gate.wait(5)  # hold the first transaction open so the others queue up behind it
        return [None for _ in items]

    writer.start()
    first = writer.submit_nowait(slow, None)
    futures = [writer.submit_nowait(insert_items, n) for n in range(200)]
    gate.set()
    assert first.result(10) is None
    assert [f.result(10) for f in futures] == list(range(200))
    writer.stop()
    assert count(conn) == 200
    assert writer.batches_committed < 20  # grouped, not one commit per job


def _spaced_jobs(writer: Writer, numbers: Sequence[int], gap: float) -> list[int]:
    """Submit one job per number from a thread, `gap` seconds apart (callers coming back one by one)."""
    futures = []

    def submit() -> None:
        for n in numbers:
            futures.append(writer.submit_nowait(insert_items, n))
            time.sleep(gap)

    thread = threading.Thread(target=submit)
    thread.start()
    thread.join(10)
    return [f.result(10) for f in futures]


def _shared_batch(writer: Writer, size: int) -> None:
    """Commit one batch of `size` jobs, so the writer counts as busy with `size` callers."""
    gate = threading.Event()

    def hold(connection: duckdb.DuckDBPyConnection, items: Sequence[None]) -> list[None]:
        gate.wait(5)
        return [None for _ in items]

    first = writer.submit_nowait(hold, None)
    time.sleep(0.1)  # the writer takes the first job alone; the others queue behind it
    rest = [writer.submit_nowait(hold, None) for _ in range(size)]
    gate.set()
    assert [f.result(5) for f in [first, *rest]] == [None] * (size + 1)


def test_busy_writer_lingers_for_callers_coming_back(conn: duckdb.DuckDBPyConnection) -> None:
    writer = Writer(conn, linger_gap=0.5, linger_max=2.0)
    writer.start()
    _shared_batch(writer, 5)
    before = writer.batches_committed
    assert _spaced_jobs(writer, range(5), gap=0.02) == list(range(5))
    writer.stop()
    # Without the linger each job, arriving after the previous one was taken, would commit alone.
    assert writer.batches_committed - before == 1


def test_busy_writer_stops_lingering_once_its_callers_are_back(conn: duckdb.DuckDBPyConnection) -> None:
    writer = Writer(conn, linger_gap=2.0, linger_max=2.0)
    writer.start()
    _shared_batch(writer, 2)
    before = writer.batches_committed
    started = time.monotonic()
    assert _spaced_jobs(writer, range(2), gap=0.02) == [0, 1]
    # Both callers of the last batch are back: the batch commits without waiting out the 2 s gap.
    assert time.monotonic() - started < 1.5
    writer.stop()
    assert writer.batches_committed - before == 1


def test_a_lingering_writer_stops_at_once_and_commits_what_it_took(conn: duckdb.DuckDBPyConnection) -> None:
    writer = Writer(conn, linger_gap=2.0, linger_max=2.0)
    writer.start()
    _shared_batch(writer, 3)
    # One of the three callers is back: the writer lingers for the other two.
    first = writer.submit_nowait(insert_items, 7)
    time.sleep(0.1)
    started = time.monotonic()
    writer.stop()  # rings the bell: no waiting out the 2 s gap
    assert time.monotonic() - started < 1.0
    assert first.result(1) == 7
    assert count(conn) == 1


def test_a_lingering_writer_is_rung_by_the_job_completing_its_batch(conn: duckdb.DuckDBPyConnection) -> None:
    writer = Writer(conn, linger_gap=2.0, linger_max=2.0)
    writer.start()
    _shared_batch(writer, 3)
    before = writer.batches_committed
    started = time.monotonic()
    futures = [writer.submit_nowait(insert_items, n) for n in range(3)]
    assert [f.result(1.5) for f in futures] == [0, 1, 2]
    assert time.monotonic() - started < 1.0
    writer.stop()
    assert writer.batches_committed - before == 1


def test_idle_writer_does_not_linger(conn: duckdb.DuckDBPyConnection) -> None:
    writer = Writer(conn, linger_gap=2.0, linger_max=2.0)
    writer.start()
    started = time.monotonic()
    assert writer.submit_sync(insert_items, 1) == 1
    assert writer.submit_sync(insert_items, 2) == 2  # the batch before was a lone job
    assert time.monotonic() - started < 1.5
    writer.stop()


def test_domain_error_refuses_one_item_only(conn: duckdb.DuckDBPyConnection) -> None:
    writer = Writer(conn)
    writer.start()
    ok = writer.submit_nowait(insert_items, 1)
    refused = writer.submit_nowait(insert_items, -1)
    assert ok.result(5) == 1
    with pytest.raises(Conflict, match="refused -1"):
        refused.result(5)
    writer.stop()
    assert count(conn) == 1


def test_failing_job_does_not_sink_its_batch(conn: duckdb.DuckDBPyConnection) -> None:
    writer = Writer(conn)
    gate = threading.Event()

    def hold(connection: duckdb.DuckDBPyConnection, items: Sequence[None]) -> list[None]:
        gate.wait(5)
        return [None for _ in items]

    writer.start()
    writer.submit_nowait(hold, None)
    good = [writer.submit_nowait(insert_items, n) for n in (10, 11)]
    duplicate = writer.submit_nowait(insert_items, 10)  # primary key violation inside the shared transaction
    later = writer.submit_nowait(insert_items, 12)
    gate.set()
    assert [f.result(5) for f in good] == [10, 11]
    with pytest.raises(duckdb.ConstraintException):
        duplicate.result(5)
    assert later.result(5) == 12
    writer.stop()
    assert sorted(n for (n,) in conn.execute("select n from items").fetchall()) == [10, 11, 12]


def test_cancelled_job_is_not_written(conn: duckdb.DuckDBPyConnection) -> None:
    writer = Writer(conn)
    gate = threading.Event()

    def hold(connection: duckdb.DuckDBPyConnection, items: Sequence[None]) -> list[None]:
        gate.wait(5)
        return [None for _ in items]

    writer.start()
    writer.submit_nowait(hold, None)
    time.sleep(0.1)  # let the writer take the holding job before queueing the one to cancel
    abandoned = writer.submit_nowait(insert_items, 7)
    assert abandoned.cancel()
    kept = writer.submit_nowait(insert_items, 8)
    gate.set()
    assert kept.result(5) == 8
    writer.stop()
    assert [n for (n,) in conn.execute("select n from items").fetchall()] == [8]


def test_submit_after_stop_is_refused(conn: duckdb.DuckDBPyConnection) -> None:
    writer = Writer(conn)
    writer.start()
    writer.stop()
    with pytest.raises(WriterStopped):
        writer.submit_sync(insert_items, 1)


def test_migrations_apply_once(tmp_path: Path) -> None:
    connection = connect(tmp_path / "m.duckdb")
    first = migrate(connection)
    assert first and first[0] == "001_initial.sql"
    assert migrate(connection) == []
    tables = {
        name for (name,) in connection.execute("select table_name from information_schema.tables").fetchall()
    }
    assert {"leads", "consent_ledger", "deliveries", "delivery_attempts", "stripe_events"} <= tables
    connection.close()
