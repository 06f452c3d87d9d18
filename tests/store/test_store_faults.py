"""When the disk fills or is read-only: 503 with Retry-After, /readyz not ready, nothing half-written, recovery.

The database lives on a small tmpfs the test mounts itself (root in CI); where mounting is not allowed the tests
are skipped with the reason.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import httpx
import pytest

from tests.conftest import ADMIN_TOKEN, fill_disk, lead_body, make_settings, remount, serve, wait_until


def _leads(database: Path) -> int:
    conn = duckdb.connect(str(database), read_only=True)
    try:
        return int(conn.execute("select count(*) from leads").fetchone()[0])  # type: ignore[index]
    finally:
        conn.close()


def _settings(tmp_path: Path, disk: Path):  # type: ignore[no-untyped-def]
    return make_settings(
        tmp_path,
        attribution_db_path=disk / "attribution.duckdb",
        attribution_replica_seconds=3600,  # the replica (on the big disk) plays no part here
    )


def test_a_full_disk_answers_503_until_space_is_freed(tmp_path: Path, small_disk: Path) -> None:
    settings = _settings(tmp_path, small_disk)
    with serve(settings) as base_url, httpx.Client(base_url=base_url, timeout=30) as client:
        assert client.post("/v1/leads", json=lead_body()).status_code == 200
        filler = fill_disk(small_disk)
        # The write-ahead log's last page may still take a lead or two; then every write is refused.
        answers = [client.post("/v1/leads", json=lead_body(email=f"full{n}@example.com")) for n in range(20)]
        accepted = sum(answer.status_code == 200 for answer in answers)
        refused = [answer for answer in answers if answer.status_code != 200]
        assert accepted <= 3 and len(refused) >= 17
        for answer in refused:
            assert answer.status_code == 503, answer.text
            assert answer.headers["retry-after"] == "5"
            assert answer.headers["content-type"] == "application/json"
            assert answer.json()["error"] == "unavailable"
            assert (
                answer.json()["message"]
                == "the database cannot write now; nothing was stored, try again shortly"
            )
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "storage" in ready.json()["reason"]
        assert "/" not in ready.text  # no file path on the unauthenticated probe
        status = client.get("/v1/admin/status", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).json()
        assert "No space left" in status["writer"]["last_fault"]  # the detail is for the admin
        filler.unlink()
        assert client.post("/v1/leads", json=lead_body(email="after@example.com")).status_code == 200
        wait_until(lambda: client.get("/readyz").status_code == 200, timeout=20, what="ready again")
    assert _leads(settings.attribution_db_path) == 2 + accepted  # the refused leads left nothing behind


def test_a_stop_whose_checkpoint_fails_ends_cleanly_and_loses_nothing(
    tmp_path: Path, small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    settings = _settings(tmp_path, small_disk)
    with serve(settings) as base_url, httpx.Client(base_url=base_url, timeout=30) as client:
        for n in range(5):
            assert client.post("/v1/leads", json=lead_body(email=f"kept{n}@example.com")).status_code == 200
        filler = fill_disk(small_disk)  # the shutdown checkpoint can't write the database file now
    messages = [record.getMessage() for record in caplog.records]
    assert any("checkpoint failed at shutdown" in message for message in messages), messages
    assert not [r for r in caplog.records if r.name.startswith("uvicorn") and r.levelno >= logging.ERROR]
    filler.unlink()
    assert _leads(settings.attribution_db_path) == 5  # replayed from the write-ahead log


def test_serve_explains_an_unwritable_database_in_one_line(tmp_path: Path, small_disk: Path) -> None:
    remount(small_disk, "ro")
    try:
        result = subprocess.run(
            [sys.executable, "-m", "cli", "serve", "--port", "9"],
            env={**os.environ, "ATTRIBUTION_DB_PATH": str(small_disk / "attribution.duckdb")},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        remount(small_disk, "rw")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "cannot open" in result.stderr and "Read-only file system" in result.stderr
