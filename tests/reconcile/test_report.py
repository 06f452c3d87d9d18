"""`attribution report` and GET /v1/metrics/success: the metrics against their targets, for people and machines."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import duckdb
import httpx
import pytest
from typer.testing import CliRunner

from cli.main import app
from ingest.reconcile.models import METRIC_NAMES
from ingest.reconcile.replica import publish_replica
from ingest.reconcile.report import percent
from ingest.store.database import Database, connect, migrate
from ingest.store.transfer import copy_to_postgres
from sandbox.bulk import BulkSpec, generate_bulk
from sandbox.scenario import GroundTruth
from tests.conftest import ADMIN_TOKEN, free_port, make_settings, serve

runner = CliRunner()


def _said(output: str) -> str:
    return " ".join(output.split())


def _env(tmp_path: Path, database: Path) -> dict[str, str]:
    # Reading an idle database, the report runs under its own configuration: the bulk database was generated
    # with every destination configured, so this one is too.
    return {
        "ATTRIBUTION_DB_PATH": str(database),
        "ATTRIBUTION_REPLICA_PATH": str(tmp_path / "replica.duckdb"),
        "ATTRIBUTION_LOG_LEVEL": "WARNING",
        "MAILERLITE_API_KEY": "configured",
        "CRM_WEBHOOK_URL": "http://127.0.0.1:9/crm",
        "SGTM_ENDPOINT": "http://127.0.0.1:9/mp/collect",
    }


@pytest.fixture(scope="module")
def bulk(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, GroundTruth]:
    path = tmp_path_factory.mktemp("report") / "bulk.duckdb"
    return path, generate_bulk(path, BulkSpec(leads=3000, chunk_leads=3000, seed=5, days=14))


def _empty_database(tmp_path: Path) -> Path:
    path = tmp_path / "empty.duckdb"
    conn = connect(path)
    migrate(conn)
    conn.close()
    return path


def test_report_json_gives_the_metrics_of_the_idle_database(
    tmp_path: Path, bulk: tuple[Path, GroundTruth]
) -> None:
    path, truth = bulk
    result = runner.invoke(app, ["report", "--json"], env=_env(tmp_path, path))
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["source"] == "database" and report["taken_at"] is None
    assert [m["metric"] for m in report["metrics"]] == list(METRIC_NAMES)
    assert {m["metric"]: (m["numerator"], m["denominator"]) for m in report["metrics"]} == truth.expected()
    assert report["all_met"] is False


def test_source_replica_reads_the_published_copy_with_the_same_numbers(
    tmp_path: Path, bulk: tuple[Path, GroundTruth]
) -> None:
    path, truth = bulk
    env = _env(tmp_path, path)
    missing = runner.invoke(app, ["report", "--source", "replica"], env=env)
    assert missing.exit_code == 2 and "replica.duckdb" in missing.stderr
    database = Database.open(path)
    try:
        publish_replica(database, Path(env["ATTRIBUTION_REPLICA_PATH"]), truth.params)
    finally:
        database.close()
    result = runner.invoke(app, ["report", "--json", "--source", "replica"], env=env)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["source"] == "replica" and report["taken_at"] is not None
    assert {m["metric"]: (m["numerator"], m["denominator"]) for m in report["metrics"]} == truth.expected()
    idle = runner.invoke(app, ["report", "--json", "--source", "database"], env=env)
    assert json.loads(idle.stdout)["source"] == "database"
    wrong = runner.invoke(app, ["report", "--source", "elsewhere"], env=env)
    assert wrong.exit_code == 2 and "elsewhere" in wrong.output


def test_check_exits_1_and_names_what_missed(tmp_path: Path, bulk: tuple[Path, GroundTruth]) -> None:
    path, _ = bulk
    result = runner.invoke(app, ["report", "--check"], env=_env(tmp_path, path))
    assert result.exit_code == 1
    assert "target missed:" in result.stderr and "data_consistency" in result.stderr
    assert "crm_coverage" in result.stdout  # the table is still printed


def test_check_passes_on_a_database_with_nothing_to_miss(tmp_path: Path) -> None:
    result = runner.invoke(app, ["report", "--check"], env=_env(tmp_path, _empty_database(tmp_path)))
    assert result.exit_code == 0, result.output
    for name in METRIC_NAMES:
        assert name in result.stdout
    assert "0 / 0" in result.stdout and "no API running" in result.stdout


def test_report_without_anything_to_read_says_so_and_exits_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["report", "--check"], env=_env(tmp_path, tmp_path / "missing.duckdb"))
    assert result.exit_code == 2
    assert "cannot read the metrics" in result.stderr and "missing.duckdb" in result.stderr
    assert not (tmp_path / "missing.duckdb").exists(), "reading never creates a database"


def test_report_with_a_bad_setting_exits_2(tmp_path: Path) -> None:
    env = _env(tmp_path, _empty_database(tmp_path)) | {"ATTRIBUTION_REPLICA_SECONDS": "-1"}
    result = runner.invoke(app, ["report"], env=env)
    assert result.exit_code == 2 and "ATTRIBUTION_REPLICA_SECONDS" in result.stderr


@pytest.mark.parametrize(
    ("fraction", "shown"),
    [(1.0, "100%"), (0.99996, "99.99%"), (0.95, "95%"), (0.0, "0%"), (0.00001, "0.01%"), (0.98542, "98.54%")],
)
def test_percentages_never_round_to_a_target_they_miss(fraction: float, shown: str) -> None:
    assert percent(fraction) == shown


def test_metrics_endpoint_needs_the_admin_token(tmp_path: Path) -> None:
    with serve(make_settings(tmp_path)) as base_url:
        assert httpx.get(f"{base_url}/v1/metrics/success").status_code == 401
        wrong = httpx.get(f"{base_url}/v1/metrics/success", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        answer = httpx.get(
            f"{base_url}/v1/metrics/success", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30
        )
    assert answer.status_code == 200
    rows = answer.json()
    assert [row["metric"] for row in rows] == list(METRIC_NAMES)
    assert all(row["denominator"] == 0 and row["met"] is True for row in rows)
    assert set(rows[0]) == {"metric", "value", "target", "comparator", "met", "numerator", "denominator"}


def test_metrics_endpoint_is_off_without_an_admin_token(tmp_path: Path) -> None:
    with serve(make_settings(tmp_path, attribution_admin_token=None)) as base_url:
        response = httpx.get(f"{base_url}/v1/metrics/success", headers={"Authorization": "Bearer x"})
    assert response.status_code == 403


# --- on PostgreSQL --------------------------------------------------------------------------------------------------


@pytest.fixture
def on_postgres(tmp_path: Path, bulk: tuple[Path, GroundTruth], postgres_url: str) -> dict[str, str]:
    """The bulk history copied into PostgreSQL (as `db copy` moves it), and the settings that name it."""
    source = duckdb.connect(str(bulk[0]))
    try:
        copy_to_postgres(source, postgres_url)
    finally:
        source.close()
    return _env(tmp_path, tmp_path / "no-embedded-file.duckdb") | {
        "ATTRIBUTION_DATABASE_URL": postgres_url,
        "COLUMNS": "300",
    }


def test_source_database_on_postgresql_computes_from_postgresql_itself(
    on_postgres: dict[str, str], bulk: tuple[Path, GroundTruth]
) -> None:
    result = runner.invoke(app, ["report", "--json", "--source", "database"], env=on_postgres)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["source"] == "database" and report["taken_at"] is None
    assert report["path"].startswith("postgresql://127.0.0.1:") and "@" not in report["path"]
    assert {m["metric"]: (m["numerator"], m["denominator"]) for m in report["metrics"]} == bulk[1].expected()
    table = runner.invoke(app, ["report", "--source", "database"], env=on_postgres)
    assert "computed from postgresql://127.0.0.1:" in _said(table.stdout)
    assert list(Path(tempfile.gettempdir()).glob("attribution-database-*")) == [], (
        "its temporary copy is gone"
    )


def test_auto_on_postgresql_reads_the_warehouses_replica_else_computes(
    tmp_path: Path, on_postgres: dict[str, str], bulk: tuple[Path, GroundTruth]
) -> None:
    without = runner.invoke(app, ["report", "--json"], env=on_postgres)
    assert without.exit_code == 0 and json.loads(without.stdout)["source"] == "database"
    assert runner.invoke(app, ["warehouse", "--once"], env=on_postgres).exit_code == 0
    kept = runner.invoke(app, ["report", "--json"], env=on_postgres)
    assert kept.exit_code == 0, kept.output
    report = json.loads(kept.stdout)
    assert report["source"] == "replica" and report["taken_at"] is not None
    assert {m["metric"]: (m["numerator"], m["denominator"]) for m in report["metrics"]} == bulk[1].expected()


def test_source_database_on_an_unreachable_postgresql_says_so_in_one_line(tmp_path: Path) -> None:
    url = f"postgresql://postgres:s3cret@127.0.0.1:{free_port()}/attribution"
    env = _env(tmp_path, tmp_path / "none.duckdb") | {"ATTRIBUTION_DATABASE_URL": url, "COLUMNS": "300"}
    result = runner.invoke(app, ["report", "--source", "database"], env=env)
    assert result.exit_code == 2
    assert [line for line in result.stderr.splitlines() if line.strip()] == [
        line
        for line in result.stderr.splitlines()
        if "cannot read the metrics: cannot connect to PostgreSQL" in line
    ]
    assert "s3cret" not in result.output
