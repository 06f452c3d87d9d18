"""Dashboard render times on the 1,000,000-lead database of the reconciliation benchmark (bench/report.py).

    .venv/bin/python -m bench.dashboard [--leads 1000000] [--rounds 3] [--data-dir /tmp/attribution-bench] [--reuse]

1. Reuses (with --reuse, when present) or writes the bulk database bench/report.py uses (`bulk-<leads>.duckdb`,
   same seed and spec), and publishes its replica as the API would (the heavy models materialised in the copy).
2. Baseline, same run: what `attribution report --source replica` computes in process - a reader over the
   replica and the five metrics (median of --rounds, in a fresh process each, like a user's first look).
3. Each round, in a fresh process (a new dashboard server, its modules imported first and timed apart): the first
   render of the Overview on the cold server (it opens the replica); then, as a new session on that server with
   the result caches emptied, the first render of every page (what a marketer opening the dashboard sees), and a
   second render of each (cached). Renders are Streamlit AppTest script runs: the server-side work of a page.

Targets (the issue): Overview first render <= 3 s, each other page <= 3 s.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import ROOT, save
from ingest.store.database import Database
from sandbox.bulk import BulkSpec, generate_bulk
from sandbox.scenario import GroundTruth

APP = ROOT / "dashboard" / "app.py"
PAGES = {
    "overview": "pages/overview.py",
    "funnel": "pages/funnel.py",
    "coverage": "pages/coverage.py",
    "consent": "pages/consent.py",
    "deliveries": "pages/deliveries.py",
}
TARGET_SECONDS = 3.0
RUN_TIMEOUT_SECONDS = 600


def child_env(database: Path, replica: Path) -> dict[str, str]:
    """The dashboard's environment for this database; the API URL is nobody's (replay is not measured)."""
    return {
        **os.environ,
        "ATTRIBUTION_DB_PATH": str(database),
        "ATTRIBUTION_REPLICA_PATH": str(replica),
        "ATTRIBUTION_API_URL": "http://127.0.0.1:9",
    }


def measure_baseline() -> dict[str, float]:
    """In this (fresh) process: open a reader over the replica and compute the five metrics."""
    from ingest.core.settings import load_settings
    from ingest.reconcile.models import success_metrics
    from ingest.reconcile.replica import open_reader

    started = time.perf_counter()
    reader = open_reader(load_settings(), "replica")
    opened = time.perf_counter()
    success_metrics(reader.conn)
    done = time.perf_counter()
    reader.close()
    return {"open_seconds": opened - started, "metrics_seconds": done - opened, "seconds": done - started}


def measure_renders() -> dict[str, Any]:
    """In this (fresh) process: a cold server's first Overview, then a new session's first and cached renders."""
    started = time.perf_counter()
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    import dashboard.charts
    import dashboard.data  # noqa: F401 - imported before timing: a server imports its modules once

    import_seconds = time.perf_counter() - started

    def timed_run(app: AppTest, page: str | None = None) -> float:
        if page is not None:
            app.switch_page(page)
        started = time.perf_counter()
        app.run(timeout=RUN_TIMEOUT_SECONDS)
        seconds = time.perf_counter() - started
        if app.exception:
            raise RuntimeError(f"{page or 'overview'} raised: {[item.value for item in app.exception]}")
        return seconds

    cold = AppTest.from_file(str(APP), default_timeout=RUN_TIMEOUT_SECONDS)
    cold_seconds = timed_run(cold)
    st.cache_data.clear()  # a new session on the warm server: nothing cached but the opened replica
    session = AppTest.from_file(str(APP), default_timeout=RUN_TIMEOUT_SECONDS)
    first: dict[str, float] = {}
    cached: dict[str, float] = {}
    for name, page in PAGES.items():
        first[name] = timed_run(session, page if name != "overview" else None)
        cached[name] = timed_run(session, page)
    return {
        "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "import_seconds": import_seconds,
        "cold_overview_seconds": cold_seconds,
        "first_render_seconds": first,
        "cached_render_seconds": cached,
    }


def in_child(mode: str, database: Path, replica: Path) -> dict[str, Any]:
    """Run one measurement in a fresh Python process; its JSON answer."""
    completed = subprocess.run(
        [sys.executable, "-m", "bench.dashboard", "--child", mode],
        env=child_env(database, replica),
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    result: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    return result


def prepare_database(data_dir: Path, leads: int, reuse: bool) -> tuple[Path, Path, dict[str, Any]]:
    """The bulk database (bench/report.py's) and a freshly published replica of it."""
    from ingest.reconcile.replica import publish_replica

    data_dir.mkdir(parents=True, exist_ok=True)
    database = data_dir / f"bulk-{leads}.duckdb"
    replica = data_dir / f"bulk-{leads}.dashboard-replica.duckdb"
    info: dict[str, Any] = {}
    if reuse and database.exists():
        truth = GroundTruth.load(database)
        print(f"reusing {database}")
    else:
        started = time.perf_counter()
        truth = generate_bulk(database, BulkSpec(leads=leads))
        info["generate_seconds"] = round(time.perf_counter() - started, 1)
        print(f"generated {database} in {info['generate_seconds']} s")
    opened = Database.open(database)
    try:
        snapshot = publish_replica(opened, replica, truth.params)
    finally:
        opened.close()
    info |= {
        "rows": truth.rows,
        "replica_bytes": snapshot.size_bytes,
        "publish_seconds": round(snapshot.seconds, 1),
    }
    return database, replica, info


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--leads", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/attribution-bench"))
    parser.add_argument("--reuse", action="store_true", help="reuse the bulk database when present")
    parser.add_argument("--child", choices=["baseline", "renders"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        measure = measure_baseline if args.child == "baseline" else measure_renders
        print(json.dumps(measure()))
        return

    database, replica, info = prepare_database(args.data_dir, args.leads, args.reuse)
    load_before = round(os.getloadavg()[0], 2)
    baselines = [in_child("baseline", database, replica) for _ in range(args.rounds)]
    renders = [in_child("renders", database, replica) for _ in range(args.rounds)]
    baseline = statistics.median(run["seconds"] for run in baselines)
    first = {name: statistics.median(run["first_render_seconds"][name] for run in renders) for name in PAGES}
    cached = {
        name: statistics.median(run["cached_render_seconds"][name] for run in renders) for name in PAGES
    }
    cold = statistics.median(run["cold_overview_seconds"] for run in renders)
    result = {
        "command": f"python -m bench.dashboard --leads {args.leads} --rounds {args.rounds}",
        "leads": args.leads,
        "database": info,
        "load_average": {"before": load_before, "after": round(os.getloadavg()[0], 2)},
        "baseline_report_seconds_median": round(baseline, 2),
        "cold_server_overview_seconds_median": round(cold, 2),
        "cold_vs_baseline_ratio": round(cold / baseline, 2),
        "import_seconds_median": round(statistics.median(run["import_seconds"] for run in renders), 2),
        "server_max_rss_mib_median": round(statistics.median(run["max_rss_mib"] for run in renders)),
        "first_render_seconds_median": {name: round(value, 2) for name, value in first.items()},
        "cached_render_seconds_median": {name: round(value, 2) for name, value in cached.items()},
        "target_seconds": TARGET_SECONDS,
        "every_page_within_target": all(value <= TARGET_SECONDS for value in first.values()),
        "runs": {"baseline": baselines, "renders": renders},
    }
    path = save("dashboard", result)
    print(json.dumps({key: value for key, value in result.items() if key != "runs"}, indent=2))
    print(f"saved {path}")


if __name__ == "__main__":
    main()
