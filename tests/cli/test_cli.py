from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from cli.main import LAZY_COMMANDS
from tests.conftest import ApiProcess


def attribution(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_db_migrate_is_safe_to_repeat(tmp_path: Path) -> None:
    env = {"ATTRIBUTION_DB_PATH": str(tmp_path / "sub" / "cli.duckdb")}
    first = attribution("db", "migrate", env=env)
    assert first.returncode == 0, first.stderr
    assert "001_initial.sql" in first.stderr
    again = attribution("db", "migrate", env=env)
    assert again.returncode == 0
    assert "up to date" in again.stderr


def test_bad_setting_stops_with_the_variable_named(tmp_path: Path) -> None:
    result = attribution(
        "db", "migrate", env={"ATTRIBUTION_DB_PATH": str(tmp_path / "x.duckdb"), "REQUIRE_CONSENT": "perhaps"}
    )
    assert result.returncode == 2
    assert "REQUIRE_CONSENT" in result.stderr
    assert not (tmp_path / "x.duckdb").exists()


def test_migrate_while_the_api_runs_explains_the_lock(tmp_path: Path) -> None:
    env = {"ATTRIBUTION_DB_PATH": str(tmp_path / "live.duckdb")}
    api = ApiProcess(env)
    api.start()
    try:
        result = attribution("db", "migrate", env=env)
    finally:
        api.stop()
    assert result.returncode == 1
    assert "another process" in result.stderr


def test_help_lists_every_command_and_each_one_loads() -> None:
    listing = attribution("--help", env={})
    assert listing.returncode == 0, listing.stderr
    listed = [line.strip("│ ").split(" ")[0] for line in listing.stdout.splitlines() if line.startswith("│ ")]
    assert set(listed) >= {"serve", "db", *LAZY_COMMANDS}, listed
    for name in ("serve", "db", *LAZY_COMMANDS):
        own = attribution(name, "--help", env={})
        assert own.returncode == 0, (name, own.stderr)
    unknown = attribution("reprot", env={})
    assert unknown.returncode == 2 and "No such command" in unknown.stderr


def test_report_starts_without_the_modules_of_other_commands(tmp_path: Path) -> None:
    # `attribution report` is run by cron and deploy gates: it must not pay for the sandbox, the scenario or the
    # Stripe SDK (what the lazy commands are for).
    probe = (
        "import sys\n"
        "from cli.main import app\n"
        "try:\n"
        "    app(['report', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = [m for m in ('sandbox', 'sandbox.scenario', 'stripe', 'pyarrow') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).parents[2],
    )
    assert "HEAVY []" in result.stdout, result.stdout + result.stderr
