"""The warehouse on PostgreSQL: the replica kept current round by round from what changed, never torn, never missing
a row that commits late, whatever its stamps say."""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import httpx
import psycopg
import pytest

from ingest.core.clock import utcnow
from ingest.core.settings import Settings
from ingest.reconcile.models import MATERIALISED, ModelParams, success_metrics
from ingest.reconcile.postgres_tables import STATE_TABLE
from ingest.reconcile.replica import file_identity, reading
from ingest.reconcile.warehouse import Warehouse, WarehouseError, WarehouseStopped, base_path_for
from sandbox.bulk import BulkSpec, generate_bulk
from sandbox.scenario import GroundTruth
from tests.conftest import TRICKY_TEXTS, copy_bulk_to, lead_body, make_settings, serve, wait_until

LONG_AGO = datetime(2000, 1, 1)  # an app stamp older than anything a round has read


@pytest.fixture(scope="module")
def bulk(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, GroundTruth]:
    path = tmp_path_factory.mktemp("warehouse") / "bulk.duckdb"
    return path, generate_bulk(path, BulkSpec(leads=2000, chunk_leads=2000, seed=11, days=14))


@pytest.fixture
def seeded(postgres_url: str, bulk: tuple[Path, GroundTruth]) -> str:
    """A PostgreSQL database holding the bulk history, as `db copy` leaves it."""
    return copy_bulk_to(bulk[0], postgres_url)


@pytest.fixture
def settings(tmp_path: Path, seeded: str) -> Settings:
    return make_settings(tmp_path, attribution_database_url=seeded)


@pytest.fixture
def keeper(settings: Settings, bulk: tuple[Path, GroundTruth]) -> Iterator[Warehouse]:
    assert settings.attribution_database_url is not None
    keeper = Warehouse(
        settings.attribution_database_url.get_secret_value(),
        settings.attribution_replica_path,
        bulk[1].params,
    )
    try:
        yield keeper
    finally:
        keeper.close()


def _pg(url: str, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql, params).fetchall()


def _replica(settings: Settings, sql: str) -> list[tuple[Any, ...]]:
    with reading(settings, "replica") as reader:
        return reader.conn.execute(sql).fetchall()


def _insert_lead(conn: psycopg.Connection[Any], updated_at: datetime) -> uuid.UUID:
    """A lead written straight into PostgreSQL, stamped `updated_at` by its (app's) clock."""
    event_id = uuid.uuid4()
    conn.execute(
        "insert into leads (event_id, user_session_id, full_name, email, marketing_consent, analytics_consent, "
        "consent_method, consent_version, consent_version_current, consent_at, received_at, updated_at) "
        "values (%s, %s, 'Ana Teste', %s, true, true, 'modal', '1.0', true, %s, %s, %s)",
        [event_id, uuid.uuid4(), f"{event_id}@example.com", updated_at, updated_at, updated_at],
    )
    return event_id


def _leads(rows: list[tuple[Any, ...]]) -> set[tuple[str, str, datetime]]:
    return {(str(event_id), status, updated_at) for event_id, status, updated_at in rows}


LEADS_SQL = "select event_id, status, updated_at from leads"
TABLES = ("leads", "consent_ledger", "deliveries", "delivery_attempts", "payments", "stripe_events")


def _counts_match(settings: Settings, url: str) -> None:
    for table in TABLES:
        assert _replica(settings, f"select count(*) from {table}") == _pg(
            url, f"select count(*) from {table}"
        ), table


def test_the_first_round_copies_everything_and_readers_read_it_as_the_embedded_replica(
    keeper: Warehouse, settings: Settings, seeded: str, bulk: tuple[Path, GroundTruth]
) -> None:
    result = keeper.run_round()
    assert result.full and result.published is not None
    assert (
        result.rows["leads"] == 2000
        and result.rows["deliveries"] == _pg(seeded, "select count(*) from deliveries")[0][0]
    )
    _counts_match(settings, seeded)
    with reading(settings, "replica") as reader:
        assert reader.taken_at == result.taken_at and reader.params == bulk[1].params
        metrics = {m.metric: (m.numerator, m.denominator) for m in success_metrics(reader.conn)}
        assert metrics == bulk[1].expected()
        assert reader.materialised == MATERIALISED, "the heavy models are tables of the copy, as on DuckDB"
        tables = {row[0] for row in reader.conn.execute("select table_name from duckdb_tables()").fetchall()}
    assert STATE_TABLE not in tables, "the warehouse's own bookkeeping stays in its base"
    assert list(settings.attribution_replica_path.parent.glob("*.tmp-*")) == []


def test_a_round_reads_only_the_rows_inserted_and_updated_since_the_last(
    keeper: Warehouse, settings: Settings, seeded: str
) -> None:
    keeper.run_round()
    with psycopg.connect(seeded) as conn:
        added = _insert_lead(conn, utcnow())
        conn.execute(
            "insert into consent_ledger (consent_id, user_session_id, event_id, marketing_consent, "
            "analytics_consent, consent_method, consent_version, consent_version_current, source, recorded_at) "
            "select gen_random_uuid(), user_session_id, event_id, false, false, 'modal', '1.0', true, 'withdrawal', "
            "%s from leads where event_id = %s",
            [utcnow(), added],
        )
        paid = conn.execute("select event_id from leads where status = 'lead' limit 1").fetchone()
        assert paid is not None
        conn.execute(
            "update leads set status = 'paid', updated_at = %s where event_id = %s", [utcnow(), paid[0]]
        )
        conn.execute(
            "update deliveries set status = 'dead', reason = 'test' where delivery_id in "
            "(select delivery_id from deliveries order by delivery_id limit 3)"
        )
    result = keeper.run_round()
    assert not result.full and result.published is not None
    assert {table: rows for table, rows in result.rows.items() if rows} == {
        "leads": 2,
        "consent_ledger": 1,
        "deliveries": 3,
    }, "only what changed is read, each row once"
    assert _leads(_replica(settings, LEADS_SQL)) == _leads(_pg(seeded, LEADS_SQL))
    assert _replica(settings, "select count(*) from deliveries where reason = 'test'") == [(3,)]
    _counts_match(settings, seeded)


def test_a_row_committed_late_with_an_older_stamp_is_read_when_it_commits(
    keeper: Warehouse, settings: Settings, seeded: str
) -> None:
    keeper.run_round()
    late = psycopg.connect(seeded)  # one instance: its transaction starts first and commits last
    try:
        slow_lead = _insert_lead(late, LONG_AGO)
        late.execute(
            "update leads set status = 'refunded', updated_at = %s where event_id = "
            "(select event_id from leads where status = 'paid' order by event_id limit 1)",
            [LONG_AGO],
        )
        with psycopg.connect(seeded) as other:  # another instance commits meanwhile, with a later stamp
            quick_lead = _insert_lead(other, utcnow())
        before = keeper.run_round()
        assert before.rows["leads"] == 1
        in_replica = {row[0] for row in _replica(settings, "select event_id::varchar from leads")}
        assert str(quick_lead) in in_replica and str(slow_lead) not in in_replica
        late.commit()
    finally:
        late.close()
    after = keeper.run_round()
    assert after.rows["leads"] == 2, "the late transaction's insert and update, stamped before the last round"
    assert _leads(_replica(settings, LEADS_SQL)) == _leads(_pg(seeded, LEADS_SQL))
    assert keeper.run_round().rows_read == 0, "and never read again"


def test_a_round_with_nothing_new_publishes_nothing(
    keeper: Warehouse, settings: Settings, seeded: str
) -> None:
    keeper.run_round()
    published = file_identity(settings.attribution_replica_path)
    with psycopg.connect(seeded) as conn:  # what /readyz writes: copied, but no reason to publish
        conn.execute(
            "insert into service_heartbeat values (1, %s) on conflict (id) do update set beat_at = %s",
            [utcnow(), utcnow()],
        )
    quiet = keeper.run_round()
    assert quiet.published is None and "nothing changed" in quiet.summary()
    assert file_identity(settings.attribution_replica_path) == published
    with psycopg.connect(seeded) as conn:
        _insert_lead(conn, utcnow())
    assert keeper.run_round().published is not None
    assert _replica(settings, "select count(*) from service_heartbeat") == [(1,)]


def _replace_crm_records(url: str, lines: int, tag: str) -> None:
    """As `reconcile import crm` does: the previous records deleted and the new ones written with the pull stamp."""
    with psycopg.connect(url) as conn:
        conn.execute("delete from ext_crm_contacts")
        conn.execute(
            "insert into ext_crm_contacts (line, contact_id, email, event_id, pulled_at) "
            "select n, %s || n, null, null, %s from generate_series(1, %s) as n",
            [tag, utcnow(), lines],
        )
        conn.execute(
            "insert into ext_pulls (system, source, pulled_at, since, records, detail) "
            "values ('crm', 'import', %s, null, %s, 'crm.csv') on conflict (system) do update set "
            "pulled_at = excluded.pulled_at, records = excluded.records",
            [utcnow(), lines],
        )


def test_a_systems_records_are_copied_whole_when_they_were_replaced_and_only_then(
    keeper: Warehouse, settings: Settings, seeded: str
) -> None:
    keeper.run_round()
    _replace_crm_records(seeded, 30, "first-")
    assert keeper.run_round().rows["ext_crm_contacts"] == 30
    with psycopg.connect(seeded) as conn:
        _insert_lead(conn, utcnow())
    assert keeper.run_round().rows["ext_crm_contacts"] == 0, "unchanged records are not read again"
    _replace_crm_records(seeded, 12, "second-")
    assert keeper.run_round().rows["ext_crm_contacts"] == 12
    assert _replica(settings, "select count(*), min(contact_id) from ext_crm_contacts") == [(12, "second-1")]


def test_stopping_mid_round_keeps_the_previous_replica_whole(
    keeper: Warehouse, settings: Settings, seeded: str, bulk: tuple[Path, GroundTruth]
) -> None:
    keeper.run_round()
    keeper.close()
    old = (2000, _pg(seeded, "select count(*) from deliveries")[0][0])
    with psycopg.connect(seeded) as conn:
        for _ in range(300):
            _insert_lead(conn, utcnow())
    new = (2300, old[1])
    url = seeded
    interrupted = 0
    for delay in (0.0, 0.02, 0.05, 0.1, 0.2, 0.4, 0.7):
        attempt = Warehouse(url, settings.attribution_replica_path, bulk[1].params)
        outcome: list[object] = []

        def run(attempt: Warehouse = attempt, outcome: list[object] = outcome) -> None:
            try:
                outcome.append(attempt.run_round(full=True))
            except WarehouseStopped as exc:
                outcome.append(exc)

        thread = threading.Thread(target=run)
        thread.start()
        time.sleep(delay)
        attempt.stop()
        thread.join(60)
        attempt.close()
        interrupted += isinstance(outcome[0], WarehouseStopped)
        assert list(settings.attribution_replica_path.parent.glob("*.tmp-*")) == [], (
            "no half-written copy left"
        )
        shape = _replica(settings, "select (select count(*) from leads), (select count(*) from deliveries)")[
            0
        ]
        assert shape in (old, new), "the replica is the previous copy or the next, whole"
    assert interrupted > 0, "at least one round was stopped part-way"
    again = Warehouse(url, settings.attribution_replica_path, bulk[1].params)
    try:
        again.run_round()
    finally:
        again.close()
    _counts_match(settings, url)
    assert _leads(_replica(settings, LEADS_SQL)) == _leads(_pg(url, LEADS_SQL))


def test_a_lost_connection_fails_one_round_and_the_next_reconnects(
    keeper: Warehouse, settings: Settings, seeded: str
) -> None:
    keeper.run_round()
    published = file_identity(settings.attribution_replica_path)
    with psycopg.connect(seeded, autocommit=True) as admin:
        admin.execute(
            "select pg_terminate_backend(pid) from pg_stat_activity "
            "where application_name = 'attribution-warehouse' and datname = current_database()"
        )
        _insert_lead(admin, utcnow())
    with pytest.raises(WarehouseError, match="cannot answer now") as failed:
        keeper.run_round()
    assert "\n" not in str(failed.value)
    assert file_identity(settings.attribution_replica_path) == published, "a failed round publishes nothing"
    assert keeper.run_round().rows["leads"] == 1
    _counts_match(settings, seeded)


def test_a_second_warehouse_on_the_same_replica_is_refused(
    keeper: Warehouse, settings: Settings, seeded: str
) -> None:
    with pytest.raises(WarehouseError, match="another `attribution warehouse`"):
        Warehouse(seeded, settings.attribution_replica_path, keeper.params)


def test_another_database_at_the_same_place_is_copied_afresh(
    keeper: Warehouse, settings: Settings, postgres_url: str, bulk: tuple[Path, GroundTruth], tmp_path: Path
) -> None:
    keeper.run_round()
    keeper.close()
    other = postgres_url.rsplit("/", 1)[0] + f"/other_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f"create database {other.rsplit('/', 1)[1]} template {postgres_url.rsplit('/', 1)[1]}")
    moved = Warehouse(other, settings.attribution_replica_path, bulk[1].params)
    try:
        assert moved.run_round().full, "a round never applies one database's changes onto another's copy"
    finally:
        moved.close()
    assert base_path_for(settings.attribution_replica_path).exists()


def _post_leads(base_url: str, prefix: str, count: int) -> None:
    with httpx.Client(base_url=base_url, timeout=30) as client:
        for index in range(count):
            response = client.post("/v1/leads", json=lead_body(email=f"{prefix}.{index}@example.com"))
            assert response.status_code == 200, response.text


def _late_updates(url: str, stop: threading.Event) -> None:
    """Transactions that stamp deliveries with an old time and commit after others have: out of order on purpose."""
    rng = random.Random(7)
    with psycopg.connect(url) as conn:
        while not stop.is_set():
            conn.execute(
                "update deliveries set reason = %s, updated_at = %s where delivery_id in "
                "(select delivery_id from deliveries order by random() limit 3)",
                [f"late-{rng.random():.6f}", LONG_AGO],
            )
            time.sleep(rng.uniform(0.02, 0.2))
            conn.commit()


def test_rounds_while_two_instances_write_miss_nothing_and_duplicate_nothing(
    tmp_path: Path, postgres_url: str
) -> None:
    from ingest.store import postgres

    postgres.migrate(postgres_url)
    settings = make_settings(tmp_path, attribution_database_url=postgres_url)
    params = ModelParams.from_settings(settings)
    keeper = Warehouse(postgres_url, settings.attribution_replica_path, params)
    stop = threading.Event()
    rounds: list[int] = []

    def keep() -> None:
        while not stop.is_set():
            rounds.append(keeper.run_round().rows_read)

    try:
        with serve(settings) as first, serve(settings) as second:
            _post_leads(first, "seed", 3)
            workers = [
                threading.Thread(target=_post_leads, args=(first, "one", 40)),
                threading.Thread(target=_post_leads, args=(second, "two", 40)),
                threading.Thread(target=_late_updates, args=(postgres_url, stop)),
                threading.Thread(target=keep),
            ]
            for worker in workers:
                worker.start()
            for worker in workers[:2]:
                worker.join(120)
            wait_until(lambda: sum(1 for rows in rounds if rows) >= 3, what="rounds that read changes")
            stop.set()
            for worker in workers[2:]:
                worker.join(60)
        keeper.run_round()
    finally:
        keeper.close()
    assert _pg(postgres_url, "select count(*) from leads") == [(83,)]
    for sql in (
        "select event_id, status, updated_at from leads",
        "select delivery_id, status, reason, updated_at from deliveries",
        "select consent_id, event_id, source from consent_ledger",
    ):
        replica = {tuple(map(str, row)) for row in _replica(settings, sql)}
        assert replica == {tuple(map(str, row)) for row in _pg(postgres_url, sql)}, sql
    (counted,) = _replica(settings, "select count(*) = count(distinct delivery_id) from deliveries")
    assert counted == (True,), "no delivery twice"


def test_the_base_keeps_the_snapshot_and_pulls_it_read(keeper: Warehouse, settings: Settings) -> None:
    keeper.run_round()
    base = duckdb.connect(str(base_path_for(settings.attribution_replica_path)), read_only=True)
    try:
        row = base.execute(f"select source, snapshot, published from {STATE_TABLE}").fetchone()
    finally:
        base.close()
    assert row is not None and row[2] is True
    assert row[0].startswith("127.0.0.1:") and ":" in row[1]
    assert keeper.last is not None and keeper.last.taken_at <= utcnow() + timedelta(seconds=1)


def test_text_survives_the_trip_exactly_whatever_it_holds_and_wherever_a_chunk_is_cut(
    settings: Settings, seeded: str, bulk: tuple[Path, GroundTruth]
) -> None:
    with psycopg.connect(seeded) as conn:
        for index in range(400):
            event_id = _insert_lead(conn, utcnow())
            text = TRICKY_TEXTS[index % len(TRICKY_TEXTS)] * (1 + index % 3)
            conn.execute(
                "update leads set full_name = %s, referrer = %s, utm_term = null where event_id = %s",
                [text, text + "\n" + str(index), event_id],
            )
    keeper = Warehouse(seeded, settings.attribution_replica_path, bulk[1].params, chunk_bytes=4096)
    try:
        keeper.run_round()
    finally:
        keeper.close()
    sql = "select event_id, full_name, referrer, utm_term, consent_at, marketing_consent from leads"
    assert {tuple(map(repr, row)) for row in _replica(settings, sql)} == {
        tuple(map(repr, row)) for row in _pg(seeded, sql)
    }
