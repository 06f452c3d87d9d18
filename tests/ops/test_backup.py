"""`attribution db backup / restore`: a consistent copy taken under load, and a restore that equals it. Backups are
the embedded file's (these tests do not take `store`); on PostgreSQL the endpoint refuses, naming pg_dump."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from itertools import count
from pathlib import Path

import duckdb
import httpx

from ingest.core.settings import Settings
from ingest.store.backup import MANIFEST_FILE
from sandbox import Sandbox
from tests.conftest import ADMIN_TOKEN, make_settings, serve, wait_until
from tests.ops.conftest import ADMIN, ops_settings, pii_lead

LOAD_SECONDS_CAP = 20  # the load stops after this long at the latest, or after MAX_LEADS
MAX_LEADS = 400


def attribution(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _env(
    settings: Settings, sandbox: Sandbox, database: Path, api_url: str = "http://127.0.0.1:9"
) -> dict[str, str]:
    # The same destinations as the API's, so the report is read under the same configuration.
    return {
        **sandbox.env(),
        "ATTRIBUTION_DB_PATH": str(database),
        "ATTRIBUTION_REPLICA_PATH": str(database.with_suffix(".replica.duckdb")),
        "ATTRIBUTION_ADMIN_TOKEN": ADMIN_TOKEN,
        "ATTRIBUTION_API_URL": api_url,
    }


def _report(env: dict[str, str]) -> list[dict[str, object]]:
    result = attribution("report", "--json", "--source", "database", env=env)
    assert result.returncode in (0, 1), result.stderr
    metrics: list[dict[str, object]] = json.loads(result.stdout)["metrics"]
    return metrics


def _lead_count(database: Path) -> int:
    conn = duckdb.connect(str(database), read_only=True)
    try:
        row = conn.execute("select count(*) from leads").fetchone()
        return int(row[0]) if row else 0
    finally:
        conn.close()


def test_a_backup_taken_under_load_restores_to_the_report_of_its_moment(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    settings = ops_settings(tmp_path, sandbox, None)
    backup_dir, restored = tmp_path / "backup", tmp_path / "restored" / "attribution.duckdb"
    acknowledged: list[int] = []
    stop = threading.Event()
    numbers = count()

    with serve(settings) as base_url:

        def load() -> None:
            with httpx.Client(base_url=base_url, timeout=30) as client:
                while not stop.is_set():
                    number = next(numbers)
                    if number >= MAX_LEADS:
                        return
                    if client.post("/v1/leads", json=pii_lead(number)).status_code == 200:
                        acknowledged.append(number)

        threads = [threading.Thread(target=load) for _ in range(4)]
        for thread in threads:
            thread.start()
        try:
            wait_until(lambda: len(acknowledged) >= 60, timeout=LOAD_SECONDS_CAP, what="load under way")
            before = len(acknowledged)
            result = attribution(
                "db",
                "backup",
                str(backup_dir),
                env=_env(settings, sandbox, settings.attribution_db_path, base_url),
            )
            after = len(acknowledged)
            # Restoring over the file the API holds is refused, and says why.
            refused = attribution(
                "db", "restore", str(backup_dir), env=_env(settings, sandbox, settings.attribution_db_path)
            )
        finally:
            stop.set()
            for thread in threads:
                thread.join(LOAD_SECONDS_CAP)
    assert result.returncode == 0, result.stderr
    assert "through" in result.stderr  # it went through the running API
    assert after > before, "the load kept going while the backup was taken"
    assert refused.returncode == 1 and "held by a running API" in " ".join(refused.stderr.split())

    manifest = json.loads((backup_dir / MANIFEST_FILE).read_text())
    assert before <= manifest["tables"]["leads"] <= after + 4  # (requests in flight at either end)
    restore = attribution("db", "restore", str(backup_dir), env=_env(settings, sandbox, restored))
    assert restore.returncode == 0, restore.stderr
    assert _lead_count(restored) == manifest["tables"]["leads"]
    assert _report(_env(settings, sandbox, restored)) == manifest["extra"]["metrics"]
    assert _lead_count(settings.attribution_db_path) > manifest["tables"]["leads"]


def test_backup_of_an_idle_file_restores_over_an_older_one_keeping_it(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    settings = ops_settings(tmp_path, sandbox, None)
    with serve(settings) as base_url, httpx.Client(base_url=base_url, timeout=30) as client:
        for number in range(3):
            assert client.post("/v1/leads", json=pii_lead(number)).status_code == 200
    env = _env(settings, sandbox, settings.attribution_db_path)
    backup_dir = tmp_path / "idle-backup"
    result = attribution("db", "backup", str(backup_dir), env=env)
    assert result.returncode == 0, result.stderr
    again = attribution("db", "backup", str(backup_dir), env=env)
    assert again.returncode == 1 and "already holds a backup" in " ".join(again.stderr.split())
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("someone's file")
    busy = attribution("db", "backup", str(tmp_path / "busy"), env=env)
    assert busy.returncode == 1 and "not empty" in " ".join(busy.stderr.split())
    assert (tmp_path / "busy" / "notes.txt").read_text() == "someone's file"
    expected = _report(env)

    with serve(settings) as base_url, httpx.Client(base_url=base_url, timeout=30) as client:
        assert client.post("/v1/leads", json=pii_lead(50)).status_code == 200  # after the backup
    restore = attribution("db", "restore", str(backup_dir), env=env)
    assert restore.returncode == 0, restore.stderr
    assert _lead_count(settings.attribution_db_path) == 3
    assert _report(env) == expected
    kept = list(tmp_path.glob("attribution.duckdb.before-restore-*"))
    assert [path for path in kept if not path.name.endswith(".wal")] and _lead_count(
        next(path for path in kept if not path.name.endswith(".wal"))
    ) == 4


def test_the_backup_endpoint_on_postgresql_answers_409_and_writes_nothing(
    tmp_path: Path, postgres_store: dict[str, str]
) -> None:
    settings = make_settings(tmp_path, **postgres_store)
    target = tmp_path / "pg-backup"
    with serve(settings) as base_url, httpx.Client(base_url=base_url, timeout=30) as client:
        answer = client.post("/v1/admin/backup", json={"directory": str(target)}, headers=ADMIN)
        unauthenticated = client.post("/v1/admin/backup", json={"directory": str(target)})
        malformed = client.post("/v1/admin/backup", json={"directory": "relative/path"}, headers=ADMIN)
    assert answer.status_code == 409 and "pg_dump" in answer.json()["message"], answer.text
    assert unauthenticated.status_code == 401 and malformed.status_code == 422
    assert not target.exists()
