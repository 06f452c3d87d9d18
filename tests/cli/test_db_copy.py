"""`attribution db copy --to postgresql://...`: an embedded deployment's whole history moved into an empty PostgreSQL
database, every count verified, the report the same before and after; refused, whole, when it cannot be done."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pytest
from typer.testing import CliRunner

from cli.main import app
from ingest.store import postgres
from ingest.store.database import available_migrations
from ingest.store.transfer import CopyRefused, copy_to_postgres, source_counts
from sandbox.bulk import BulkSpec, generate_bulk
from sandbox.scenario import GroundTruth
from tests.conftest import BULK_DESTINATIONS_ENV, TRICKY_TEXTS, ApiProcess, copy_bulk_to, free_port

runner = CliRunner()


def _said(output: str) -> str:
    return " ".join(output.split())


def _env(tmp_path: Path, database: Path, url: str | None = None) -> dict[str, str]:
    env = {
        "ATTRIBUTION_DB_PATH": str(database),
        "ATTRIBUTION_REPLICA_PATH": str(tmp_path / "replica.duckdb"),
        "ATTRIBUTION_LOG_LEVEL": "WARNING",
        **BULK_DESTINATIONS_ENV,
    }
    if url is not None:
        env["ATTRIBUTION_DATABASE_URL"] = url
    return env


@pytest.fixture(scope="module")
def bulk(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, GroundTruth]:
    path = tmp_path_factory.mktemp("db-copy") / "bulk.duckdb"
    return path, generate_bulk(path, BulkSpec(leads=3000, chunk_leads=3000, seed=5, days=14))


@pytest.fixture
def embedded(tmp_path: Path, bulk: tuple[Path, GroundTruth]) -> Path:
    """A copy of the bulk file this test may change."""
    path = tmp_path / "attribution.duckdb"
    shutil.copyfile(bulk[0], path)
    return path


def _pg(url: str, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql, params).fetchall()


def _pg_counts(url: str, tables: list[str]) -> dict[str, int]:
    return {table: _pg(url, f"select count(*) from {table}")[0][0] for table in tables}


def _file_counts(path: Path) -> dict[str, int]:
    conn = duckdb.connect(str(path))
    try:
        return source_counts(conn)
    finally:
        conn.close()


def _figures(stdout: str) -> dict[str, tuple[float, int, int, bool]]:
    return {
        m["metric"]: (m["value"], m["numerator"], m["denominator"], m["met"])
        for m in json.loads(stdout)["metrics"]
    }


def test_the_report_is_the_same_after_the_copy_and_a_warehouse_round(
    tmp_path: Path, embedded: Path, bulk: tuple[Path, GroundTruth], postgres_url: str
) -> None:
    before = runner.invoke(app, ["report", "--json", "--source", "database"], env=_env(tmp_path, embedded))
    assert before.exit_code == 0, before.output
    copied = runner.invoke(app, ["db", "copy", "--to", postgres_url], env=_env(tmp_path, embedded))
    assert copied.exit_code == 0, copied.output
    assert "every table's count verified" in _said(copied.stderr)
    counts = _file_counts(embedded)
    assert _pg_counts(postgres_url, list(counts)) == counts
    assert counts["leads"] == 3000 and counts["deliveries"] > 10_000
    shipped = [version for version, _, _ in available_migrations("postgresql")]
    assert [
        row[0] for row in _pg(postgres_url, "select version from schema_migrations order by 1")
    ] == shipped
    on_postgres = _env(tmp_path, embedded, postgres_url)
    assert runner.invoke(app, ["warehouse", "--once"], env=on_postgres).exit_code == 0
    replica = runner.invoke(app, ["report", "--json", "--source", "replica"], env=on_postgres)
    computed = runner.invoke(app, ["report", "--json", "--source", "database"], env=on_postgres)
    assert replica.exit_code == 0 and computed.exit_code == 0, replica.output + computed.output
    assert _figures(replica.stdout) == _figures(before.stdout) == _figures(computed.stdout)
    expected = bulk[1].expected()
    assert {name: (n, d) for name, (_, n, d, _) in _figures(computed.stdout).items()} == expected
    assert json.loads(computed.stdout)["path"].startswith("postgresql://127.0.0.1:")


def test_every_row_copied_in_is_stamped_by_the_copys_transaction(embedded: Path, postgres_url: str) -> None:
    copy_bulk_to(embedded, postgres_url)
    assert _pg(
        postgres_url, "select count(distinct change_xid), count(*) - count(change_xid) from leads"
    ) == [(1, 0)]


def test_the_copy_goes_in_batches_and_says_so(embedded: Path, postgres_url: str) -> None:
    seen: dict[str, list[int]] = {}
    source = duckdb.connect(str(embedded))
    try:
        counts = copy_to_postgres(
            source,
            postgres_url,
            batch_rows=1000,
            progress=lambda table, rows: seen.setdefault(table, []).append(rows),
        )
    finally:
        source.close()
    assert {table: sum(batches) for table, batches in seen.items()} == {t: n for t, n in counts.items() if n}
    assert len(seen["deliveries"]) > 5 and max(seen["deliveries"]) <= 1000


def test_a_database_holding_rows_is_refused_and_left_as_it_was(
    tmp_path: Path, embedded: Path, postgres_url: str
) -> None:
    postgres.migrate(postgres_url)
    with psycopg.connect(postgres_url) as conn:
        conn.execute("insert into alert_states values ('deliveries_dead', 'ok', now())")
    result = runner.invoke(app, ["db", "copy", "--to", postgres_url], env=_env(tmp_path, embedded))
    assert result.exit_code == 1
    assert "is not empty (alert_states hold rows)" in _said(result.stderr)
    assert _pg(postgres_url, "select (select count(*) from leads), (select count(*) from alert_states)") == [
        (0, 1)
    ]


def test_a_database_with_tables_of_its_own_is_refused_before_it_is_migrated(
    tmp_path: Path, embedded: Path, postgres_url: str
) -> None:
    with psycopg.connect(postgres_url) as conn:
        conn.execute("create table orders (id integer)")
        conn.execute("insert into orders values (1)")
    result = runner.invoke(app, ["db", "copy", "--to", postgres_url], env=_env(tmp_path, embedded))
    assert result.exit_code == 1 and "orders hold rows" in _said(result.stderr)
    assert _pg(postgres_url, "select to_regclass('schema_migrations') is null") == [(True,)]


def test_a_second_copy_is_refused_and_nothing_is_copied_twice(
    tmp_path: Path, embedded: Path, postgres_url: str
) -> None:
    env = _env(tmp_path, embedded)
    assert runner.invoke(app, ["db", "copy", "--to", postgres_url], env=env).exit_code == 0
    again = runner.invoke(app, ["db", "copy", "--to", postgres_url], env=env)
    assert again.exit_code == 1 and "is not empty" in _said(again.stderr)
    counts = _file_counts(embedded)
    assert _pg_counts(postgres_url, list(counts)) == counts


def test_two_copies_at_once_copy_once(embedded: Path, postgres_url: str) -> None:
    outcomes: list[object] = []
    barrier = threading.Barrier(2)

    def copy() -> None:
        source = duckdb.connect(str(embedded))
        try:
            barrier.wait()
            outcomes.append(copy_to_postgres(source, postgres_url))
        except CopyRefused as exc:
            outcomes.append(exc)
        finally:
            source.close()

    threads = [threading.Thread(target=copy) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    refused = [outcome for outcome in outcomes if isinstance(outcome, CopyRefused)]
    assert len(outcomes) == 2 and len(refused) == 1 and "is not empty" in str(refused[0])
    counts = _file_counts(embedded)
    assert _pg_counts(postgres_url, list(counts)) == counts


def test_a_copy_that_fails_part_way_leaves_the_target_empty_and_can_run_again(
    tmp_path: Path, embedded: Path, postgres_url: str
) -> None:
    conn = duckdb.connect(str(embedded))
    try:  # PostgreSQL refuses a NUL in text; DuckDB keeps it: the copy fails in the middle of a table
        conn.execute(
            "update leads set full_name = 'Ana' || chr(0) || 'Teste' where event_id = (select max(event_id) from leads)"
        )
    finally:
        conn.close()
    failed = runner.invoke(app, ["db", "copy", "--to", postgres_url], env=_env(tmp_path, embedded))
    assert failed.exit_code == 1 and "copy refused: PostgreSQL at" in _said(failed.stderr)
    assert "Traceback" not in failed.output
    counts = _file_counts(embedded)
    assert set(_pg_counts(postgres_url, list(counts)).values()) == {0}, "nothing of it was committed"
    conn = duckdb.connect(str(embedded))
    try:
        conn.execute("update leads set full_name = replace(full_name, chr(0), ' ')")
    finally:
        conn.close()
    assert (
        runner.invoke(app, ["db", "copy", "--to", postgres_url], env=_env(tmp_path, embedded)).exit_code == 0
    )
    assert _pg_counts(postgres_url, list(counts)) == counts


def test_the_urls_password_is_never_printed(tmp_path: Path, embedded: Path, postgres_url: str) -> None:
    with_password = postgres_url.replace("postgresql://postgres@", "postgresql://postgres:pa55-w0rd@")
    env = _env(tmp_path, embedded)
    done = runner.invoke(app, ["db", "copy", "--to", with_password], env=env)
    refused = runner.invoke(app, ["db", "copy", "--to", with_password], env=env)
    unreachable = runner.invoke(
        app, ["db", "copy", "--to", f"postgresql://postgres:pa55-w0rd@127.0.0.1:{free_port()}/x"], env=env
    )
    assert (done.exit_code, refused.exit_code, unreachable.exit_code) == (0, 1, 1)
    assert "copy refused: PostgreSQL at 127.0.0.1:" in _said(unreachable.stderr)
    assert "Connection refused" in _said(unreachable.stderr)
    for result in (done, refused, unreachable):
        assert "pa55-w0rd" not in result.output and "Traceback" not in result.output


def test_it_refuses_while_the_api_holds_the_file(tmp_path: Path, embedded: Path, postgres_url: str) -> None:
    api = ApiProcess({"ATTRIBUTION_DB_PATH": str(embedded)})
    api.start()
    try:
        result = runner.invoke(app, ["db", "copy", "--to", postgres_url], env=_env(tmp_path, embedded))
    finally:
        api.stop()
    assert result.exit_code == 1
    assert "is open in another process" in _said(result.stderr)
    assert _pg(postgres_url, "select to_regclass('leads') is null") == [(True,)], "the target was not touched"


def test_bad_input_is_refused_in_one_line(tmp_path: Path, embedded: Path) -> None:
    not_postgres = runner.invoke(
        app, ["db", "copy", "--to", "mysql://root@db/x"], env=_env(tmp_path, embedded)
    )
    assert not_postgres.exit_code == 2 and "--to must be a postgresql:// URL" in _said(not_postgres.stderr)
    missing = runner.invoke(
        app,
        ["db", "copy", "--to", "postgresql://u@127.0.0.1/x"],
        env=_env(tmp_path, tmp_path / "none.duckdb"),
    )
    assert missing.exit_code == 1 and "no embedded database at" in _said(missing.stderr)
    assert not (tmp_path / "none.duckdb").exists()


def test_text_arrives_exactly_whatever_it_holds(embedded: Path, postgres_url: str) -> None:
    conn = duckdb.connect(str(embedded))
    try:
        ids = [
            str(row[0])
            for row in conn.execute("select event_id from leads order by event_id limit 40").fetchall()
        ]
        for index, event_id in enumerate(ids):
            text = TRICKY_TEXTS[index % len(TRICKY_TEXTS)]
            conn.execute(
                "update leads set full_name = ?, referrer = ?, utm_term = null where event_id = ?",
                [text, text * 2, event_id],
            )
        copy_to_postgres(conn, postgres_url, batch_rows=7)
        sql = "select event_id::varchar, full_name, referrer, utm_term, consent_at, marketing_consent from leads"
        ours = set(conn.execute(sql).fetchall())
    finally:
        conn.close()
    assert set(_pg(postgres_url, sql)) == ours
