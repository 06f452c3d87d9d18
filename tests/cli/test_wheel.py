"""A non-editable install works on its own: the wheel carries the SQL models, the migrations and the static files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from ingest.reconcile.models import METRIC_NAMES
from ingest.store.database import available_migrations
from sandbox.bulk import BulkSpec, generate_bulk

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding the project's wheel, built from this checkout; its dependencies are borrowed."""
    work = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            work,
            ROOT,
        ],
        check=True,
        timeout=120,
    )
    (wheel,) = work.glob("attribution_toolkit-*.whl")
    env_dir = work / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps", wheel],
        check=True,
        timeout=120,
    )
    # Borrow the dependencies from this interpreter's site-packages: a path line in a .pth file adds that folder
    # without reading the .pth files inside it, so the editable install of this checkout stays out of the way.
    site = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    (site / "borrowed_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return env_dir


def _run(env_dir: Path, args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(
        args, capture_output=True, text=True, cwd=cwd, env=clean | env, timeout=120, check=False
    )


def test_the_installed_package_is_the_wheel_not_this_checkout(installed: Path, tmp_path: Path) -> None:
    probe = "import ingest, cli, sandbox; print(ingest.__file__, cli.__file__, sandbox.__file__)"
    result = _run(installed, [str(installed / "bin" / "python"), "-c", probe], tmp_path, {})
    assert result.returncode == 0, result.stderr
    assert all(path.startswith(str(installed)) for path in result.stdout.split()), result.stdout


def test_attribution_report_from_the_wheel_matches_the_ground_truth(installed: Path, tmp_path: Path) -> None:
    database = tmp_path / "shop.duckdb"
    truth = generate_bulk(database, BulkSpec(leads=600, chunk_leads=600, seed=11, days=7))
    env = {
        "ATTRIBUTION_DB_PATH": str(database),
        "ATTRIBUTION_REPLICA_PATH": str(tmp_path / "replica.duckdb"),
        "MAILERLITE_API_KEY": "configured",
        "CRM_WEBHOOK_URL": "http://127.0.0.1:9/crm",
        "SGTM_ENDPOINT": "http://127.0.0.1:9/mp/collect",
    }
    result = _run(installed, [str(installed / "bin" / "attribution"), "report", "--json"], tmp_path, env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert [m["metric"] for m in report["metrics"]] == list(METRIC_NAMES)
    assert {m["metric"]: (m["numerator"], m["denominator"]) for m in report["metrics"]} == truth.expected()


def test_a_fresh_database_is_migrated_by_the_installed_package(installed: Path, tmp_path: Path) -> None:
    env = {"ATTRIBUTION_DB_PATH": str(tmp_path / "new.duckdb")}
    result = _run(installed, [str(installed / "bin" / "attribution"), "db", "migrate"], tmp_path, env)
    assert result.returncode == 0, result.stderr
    assert f"applied {len(available_migrations())} migration(s)" in result.stderr
