"""The PostgreSQL store's migrations: the same schema as DuckDB's, safe when several instances migrate at once."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import duckdb
import psycopg
from typer.testing import CliRunner

from cli.main import app
from ingest.store import postgres
from ingest.store.database import connect, migrate
from tests.conftest import free_port

runner = CliRunner()


def _said(output: str) -> str:
    """What the CLI printed, with rich's line wrapping undone."""
    return " ".join(output.split())


def _postgres_columns(url: str) -> dict[str, list[str]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "select table_name, column_name from information_schema.columns where table_schema = 'public' "
            "order by table_name, ordinal_position"
        ).fetchall()
    columns: dict[str, list[str]] = {}
    for table, column in rows:
        columns.setdefault(table, []).append(column)
    return columns


def _duckdb_columns(path: Path) -> dict[str, list[str]]:
    conn = connect(path)
    try:
        migrate(conn)
        rows = conn.execute(
            "select table_name, column_name from information_schema.columns where table_schema = 'main' "
            "order by table_name, ordinal_position"
        ).fetchall()
    finally:
        conn.close()
    columns: dict[str, list[str]] = {}
    for table, column in rows:
        columns.setdefault(table, []).append(column)
    return columns


def test_postgresql_gets_the_same_tables_and_columns_as_the_duckdb_file(
    postgres_url: str, tmp_path: Path
) -> None:
    applied = postgres.migrate(postgres_url)
    assert applied == [name for _, name, _ in postgres.available_migrations("postgresql")]
    assert len(applied) >= 3
    assert _postgres_columns(postgres_url) == _duckdb_columns(tmp_path / "attribution.duckdb")
    assert postgres.migrate(postgres_url) == []  # a second run applies nothing


def test_instances_migrating_at_the_same_moment_apply_each_migration_once(postgres_url: str) -> None:
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda _: postgres.migrate(postgres_url), range(6)))
    applied = [name for result in results for name in result]
    assert sorted(applied) == sorted(name for _, name, _ in postgres.available_migrations("postgresql"))
    with psycopg.connect(postgres_url) as conn:
        versions = [row[0] for row in conn.execute("select version from schema_migrations").fetchall()]
    assert sorted(versions) == [v for v, _, _ in postgres.available_migrations("postgresql")]


def test_db_migrate_command_on_postgresql(postgres_url: str) -> None:
    result = runner.invoke(app, ["db", "migrate"], env={"ATTRIBUTION_DATABASE_URL": postgres_url})
    assert result.exit_code == 0, result.output
    assert "migration(s) to PostgreSQL at 127.0.0.1:" in _said(result.stderr)
    again = runner.invoke(app, ["db", "migrate"], env={"ATTRIBUTION_DATABASE_URL": postgres_url})
    assert again.exit_code == 0 and "is up to date" in _said(again.stderr)


def test_an_unreachable_server_is_one_line_without_the_password() -> None:
    url = f"postgresql://shop:s3cret-pw@127.0.0.1:{free_port()}/attribution"
    result = runner.invoke(app, ["db", "migrate"], env={"ATTRIBUTION_DATABASE_URL": url})
    assert result.exit_code == 1
    assert "cannot connect to PostgreSQL at 127.0.0.1:" in _said(result.stderr)
    assert "s3cret-pw" not in result.output and "Traceback" not in result.output


def test_a_url_that_is_not_postgresql_is_refused_naming_the_variable(tmp_path: Path) -> None:
    result = runner.invoke(app, ["db", "migrate"], env={"ATTRIBUTION_DATABASE_URL": "mysql://x@y/z"})
    assert result.exit_code == 2 and "ATTRIBUTION_DATABASE_URL" in _said(result.stderr)


def test_duckdb_schema_is_untouched_by_the_postgresql_folder(tmp_path: Path) -> None:
    conn = duckdb.connect(str(tmp_path / "only.duckdb"))
    try:
        assert [name for name in migrate(conn)] == [name for _, name, _ in postgres.available_migrations()]
    finally:
        conn.close()
