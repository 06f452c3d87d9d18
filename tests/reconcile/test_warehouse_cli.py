"""`attribution warehouse` as an operator runs it: one line per round, one line per failure naming what to fix, a
clean stop on Ctrl-C, and a crash mid-round that leaves the previous replica whole."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from typer.testing import CliRunner

from cli.main import app
from ingest.core.clock import utcnow
from ingest.reconcile.models import success_metrics
from ingest.reconcile.replica import reading
from sandbox.bulk import BulkSpec, generate_bulk
from tests.conftest import BULK_DESTINATIONS_ENV, copy_bulk_to, free_port, make_settings, wait_until

runner = CliRunner()


def _said(output: str) -> str:
    return " ".join(output.split())


def _env(tmp_path: Path, url: str | None) -> dict[str, str]:
    env = {
        "ATTRIBUTION_DB_PATH": str(tmp_path / "embedded.duckdb"),
        "ATTRIBUTION_REPLICA_PATH": str(tmp_path / "replica.duckdb"),
        "ATTRIBUTION_LOG_LEVEL": "WARNING",
        "ATTRIBUTION_REPLICA_SECONDS": "0.2",
        "COLUMNS": "300",  # a round's line unwrapped
        **BULK_DESTINATIONS_ENV,
    }
    if url is not None:
        env["ATTRIBUTION_DATABASE_URL"] = url
    return env


@pytest.fixture(scope="module")
def bulk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("warehouse-cli") / "bulk.duckdb"
    generate_bulk(path, BulkSpec(leads=3000, chunk_leads=3000, seed=13, days=14))
    return path


@pytest.fixture
def seeded(postgres_url: str, bulk: Path) -> str:
    return copy_bulk_to(bulk, postgres_url)


def _replica_leads(tmp_path: Path) -> int:
    with reading(
        make_settings(tmp_path, attribution_replica_path=tmp_path / "replica.duckdb"), "replica"
    ) as reader:
        row = reader.conn.execute("select count(*) from leads").fetchone()
    return int(row[0]) if row else 0


def test_without_a_database_url_it_names_the_variable(tmp_path: Path) -> None:
    result = runner.invoke(app, ["warehouse", "--once"], env=_env(tmp_path, None))
    assert result.exit_code == 2
    assert "ATTRIBUTION_DATABASE_URL is not set" in _said(result.stderr)


def test_a_url_that_is_not_postgresql_is_refused_naming_the_variable(tmp_path: Path) -> None:
    result = runner.invoke(app, ["warehouse", "--once"], env=_env(tmp_path, "mysql://root:hunter2@db/x"))
    assert result.exit_code == 2 and "ATTRIBUTION_DATABASE_URL" in result.stderr
    assert "hunter2" not in result.output


def test_an_unreachable_server_is_one_line_without_the_password(tmp_path: Path) -> None:
    url = f"postgresql://attribution:s3cret-pw@127.0.0.1:{free_port()}/attribution"
    done = subprocess.run(
        [sys.executable, "-m", "cli", "warehouse", "--once"],
        env={**os.environ, **_env(tmp_path, url)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert "cannot connect to PostgreSQL at 127.0.0.1:" in lines[0] and "ATTRIBUTION_DATABASE_URL" in lines[0]
    assert "Traceback" not in done.stderr and "s3cret-pw" not in done.stderr + done.stdout
    assert not (tmp_path / "replica.duckdb").exists()


def test_an_unmigrated_database_says_to_migrate(tmp_path: Path, postgres_url: str) -> None:
    result = runner.invoke(app, ["warehouse", "--once"], env=_env(tmp_path, postgres_url))
    assert result.exit_code == 1
    assert "is not migrated" in _said(result.stderr) and "attribution db migrate" in _said(result.stderr)


def test_once_runs_one_round_and_prints_one_line_for_it(tmp_path: Path, seeded: str) -> None:
    first = runner.invoke(app, ["warehouse", "--once"], env=_env(tmp_path, seeded))
    assert first.exit_code == 0, first.output
    rounds = [line for line in first.stderr.splitlines() if line.startswith("round ")]
    assert len(rounds) == 1 and "full copy of 29," in rounds[0] and "published in" in rounds[0]
    assert _replica_leads(tmp_path) == 3000
    again = runner.invoke(app, ["warehouse", "--once"], env=_env(tmp_path, seeded))
    assert again.exit_code == 0 and "nothing changed" in _said(again.stderr), "a new process carries on"


def test_the_loop_survives_a_lost_connection_and_stops_cleanly_on_ctrl_c(tmp_path: Path, seeded: str) -> None:
    log = tmp_path / "warehouse.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "cli", "warehouse"],
            env={**os.environ, **_env(tmp_path, seeded)},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: "round 2:" in log.read_text(), timeout=60, what="two rounds")
        with psycopg.connect(seeded, autocommit=True) as admin:
            admin.execute(
                "insert into leads (event_id, user_session_id, full_name, email, marketing_consent, "
                "analytics_consent, consent_method, consent_version, consent_version_current, consent_at, "
                "received_at, updated_at) values (gen_random_uuid(), gen_random_uuid(), 'Ana Teste', "
                "'late@example.com', true, true, 'modal', '1.0', true, %s, %s, %s)",
                [utcnow(), utcnow(), utcnow()],
            )
            admin.execute(
                "select pg_terminate_backend(pid) from pg_stat_activity "
                "where application_name = 'attribution-warehouse' and datname = current_database()"
            )
        wait_until(lambda: _replica_leads(tmp_path) == 3001, timeout=60, what="the lead after the outage")
        process.send_signal(signal.SIGINT)
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    text = log.read_text()
    assert "Traceback" not in text
    failed = [line for line in text.splitlines() if "cannot answer now" in line]
    assert len(failed) == 1, (
        "the round that met the lost connection said so in one line, and the next reconnected"
    )
    assert text.strip().splitlines()[-1].startswith("stopped;"), text
    assert list(tmp_path.glob("*.tmp-*")) == []


def test_a_warehouse_killed_mid_round_leaves_the_replica_whole_and_the_next_catches_up(
    tmp_path: Path, seeded: str
) -> None:
    env = _env(tmp_path, seeded)
    assert runner.invoke(app, ["warehouse", "--once"], env=env).exit_code == 0
    replica = tmp_path / "replica.duckdb"
    with psycopg.connect(seeded) as conn:
        conn.execute(
            "insert into leads (event_id, user_session_id, full_name, email, marketing_consent, analytics_consent, "
            "consent_method, consent_version, consent_version_current, consent_at, received_at, updated_at) "
            "select gen_random_uuid(), gen_random_uuid(), 'Ana Teste', 'n' || n || '@example.com', true, true, "
            "'modal', '1.0', true, now(), now(), now() from generate_series(1, 500) as n"
        )
    process = subprocess.Popen(
        [sys.executable, "-m", "cli", "warehouse", "--once", "--full"],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(
            lambda: any(tmp_path.glob("replica.duckdb.tmp-*")), timeout=60, interval=0.005, what="a copy"
        )
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    finally:
        if process.poll() is None:
            process.kill()
    assert _replica_leads(tmp_path) == 3000, "the previous copy, whole"
    assert replica.exists()
    after = runner.invoke(app, ["warehouse", "--once"], env=env)
    assert after.exit_code == 0, after.output
    assert _replica_leads(tmp_path) == 3500
    assert list(tmp_path.glob("*.tmp-*")) == [], "the dead process's half copy is removed"


def test_a_second_warehouse_on_the_same_replica_is_refused_in_one_line(tmp_path: Path, seeded: str) -> None:
    env = {**os.environ, **_env(tmp_path, seeded), "ATTRIBUTION_REPLICA_SECONDS": "30"}
    first = subprocess.Popen(
        [sys.executable, "-m", "cli", "warehouse"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: (tmp_path / "replica.duckdb").exists(), timeout=60, what="the first round")
        second = runner.invoke(app, ["warehouse", "--once"], env=_env(tmp_path, seeded))
        assert second.exit_code == 1
        assert "another `attribution warehouse`" in _said(second.stderr)
    finally:
        first.send_signal(signal.SIGINT)
        first.wait(30)
    assert runner.invoke(app, ["warehouse", "--once"], env=_env(tmp_path, seeded)).exit_code == 0


def test_each_round_evaluates_the_success_targets_on_the_copy_it_published(
    seeded: str, tmp_path: Path
) -> None:
    # On PostgreSQL no API publishes the replica: the warehouse evaluates the targets as it publishes, and queues
    # one alert per target first missed (the API instances' senders POST them).
    env = _env(tmp_path, seeded) | {"ATTRIBUTION_ALERT_WEBHOOK_URL": "http://127.0.0.1:9/alerts"}
    result = runner.invoke(app, ["warehouse", "--once"], env=env)
    assert result.exit_code == 0, result.output
    with reading(
        make_settings(tmp_path, attribution_replica_path=tmp_path / "replica.duckdb"), "replica"
    ) as reader:
        missed = {
            f"target:{metric.metric}"
            for metric in success_metrics(reader.conn)
            if metric.denominator and not metric.met
        }
    with psycopg.connect(seeded) as conn:
        states = {row[0] for row in conn.execute("select subject from alert_states where state = 'missed'")}
        queued = conn.execute("select count(*) from alerts where alert = 'target_missed'").fetchone()
    assert missed, "the bulk history misses a target"
    assert states == missed and queued == (len(missed),)
    again = runner.invoke(app, ["warehouse", "--once", "--full"], env=env)
    assert again.exit_code == 0, again.output
    with psycopg.connect(seeded) as conn:
        assert conn.execute("select count(*) from alerts").fetchone() == (len(missed),), (
            "once per change of state"
        )
