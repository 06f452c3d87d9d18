"""Lead capture throughput and latency vs a bare FastAPI echo of the same payload, in the same run.

    .venv/bin/python -m bench.leads [--rounds 3] [--seconds 10] [--connections 32]
    .venv/bin/python -m bench.leads --engine postgresql --workers 2

Each round runs wrk against the echo (with as many worker processes), then against `attribution serve` on a fresh
store: a DuckDB file, or a throwaway PostgreSQL cluster on the same cores with fsync on, as a production server
runs; after each API run the server is stopped and the store read to check that every lead answered 2xx is
committed. Server CPU counts the API's processes (not PostgreSQL's).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import psycopg

from bench.common import echo_server, load_average, median_of, run_wrk, save, server
from ingest.store.postgres import migrate
from sandbox.postgres import PostgresCluster

SCRIPT = Path(__file__).with_name("lead.lua")
# Issue 14's targets: the embedded file against the 1-worker echo, PostgreSQL with --workers 2 against the 2-worker echo.
TARGET_RATIO = {"duckdb": 0.25, "postgresql": 0.4}


@contextmanager
def _store(engine: str, tmp: Path) -> Iterator[tuple[dict[str, str], Callable[[], int], dict[str, int]]]:
    """The API's store settings for one round, how to count the leads committed to it, and the store's own
    server process (PostgreSQL's postmaster, whose backends do the database work) to count the CPU of."""
    if engine == "duckdb":
        db_path = tmp / "bench.duckdb"

        def count_file() -> int:
            conn = duckdb.connect(str(db_path), read_only=True)
            try:
                return int(conn.execute("select count(*) from leads").fetchone()[0])  # type: ignore[index]
            finally:
                conn.close()

        yield (
            {"ATTRIBUTION_DB_PATH": str(db_path), "ATTRIBUTION_REPLICA_PATH": str(tmp / "replica.duckdb")},
            count_file,
            {},
        )
        return
    with PostgresCluster(durable=True) as cluster:
        migrate(cluster.url)

        def count_rows() -> int:
            with psycopg.connect(cluster.url) as conn:
                return int(conn.execute("select count(*) from leads").fetchone()[0])  # type: ignore[index]

        yield (
            {
                "ATTRIBUTION_DATABASE_URL": cluster.url,
                "ATTRIBUTION_REPLICA_PATH": str(tmp / "replica.duckdb"),
                "PROMETHEUS_MULTIPROC_DIR": str(tmp / "metrics"),
            },
            count_rows,
            {"postgresql": cluster.server_pids()[0]},
        )


def main() -> None:
    """Run the rounds and print / save the medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--engine", choices=("duckdb", "postgresql"), default="duckdb")
    parser.add_argument(
        "--workers", type=int, default=1, help="API (and echo) processes; > 1 needs PostgreSQL"
    )
    args = parser.parse_args()
    load_at_start = load_average()
    echo_runs, api_runs = [], []
    for round_number in range(1, args.rounds + 1):
        with echo_server(args.workers) as url:
            echo_runs.append(
                run_wrk(
                    f"{url}/v1/leads",
                    SCRIPT,
                    connections=args.connections,
                    seconds=args.seconds,
                    server_cpu=True,
                )
            )
        with (
            tempfile.TemporaryDirectory() as tmp,
            _store(args.engine, Path(tmp)) as (
                env,
                count_leads,
                store_server,
            ),
        ):
            serve = ["cli", "serve", "--workers", str(args.workers)]
            with server(
                serve, env | {"ATTRIBUTION_RATE_LIMIT_PER_MINUTE": "0", "ATTRIBUTION_LOG_LEVEL": "WARNING"}
            ) as url:
                run = run_wrk(
                    f"{url}/v1/leads",
                    SCRIPT,
                    connections=args.connections,
                    seconds=args.seconds,
                    server_cpu=True,
                    also_cpu=store_server,
                )
            committed = count_leads()
        acknowledged = run["completed"] - run["non_2xx"]
        run["committed"] = committed
        run["all_acknowledged_committed"] = committed >= acknowledged
        api_runs.append(run)
        print(
            f"round {round_number}: echo {echo_runs[-1]['rps']:.0f} req/s, api {run['rps']:.0f} req/s, "
            f"{acknowledged} acknowledged, {committed} committed; server CPU per request: echo "
            f"{echo_runs[-1].get('server_cpu_ms_per_request', float('nan')):.2f} ms, api "
            f"{run.get('server_cpu_ms_per_request', float('nan')):.2f} ms"
        )
    echo_rps, api_rps = median_of(echo_runs, "rps"), median_of(api_runs, "rps")
    result = {
        "command": "python -m bench.leads "
        + f"--rounds {args.rounds} --seconds {args.seconds} --connections {args.connections} "
        + f"--engine {args.engine} --workers {args.workers}",
        "engine": args.engine,
        "workers": args.workers,
        "connections": args.connections,
        "load_average_at_start": load_at_start,
        "echo": {
            "rps_median": echo_rps,
            "p50_ms": median_of(echo_runs, "p50_ms"),
            "p99_ms": median_of(echo_runs, "p99_ms"),
            "server_cpu_ms_per_request": median_of(echo_runs, "server_cpu_ms_per_request"),
        },
        "api": {
            "rps_median": api_rps,
            "p50_ms": median_of(api_runs, "p50_ms"),
            "p99_ms": median_of(api_runs, "p99_ms"),
            "server_cpu_ms_per_request": median_of(api_runs, "server_cpu_ms_per_request"),
            "wrk_cpu_ms_per_request": median_of(api_runs, "wrk_cpu_ms_per_request"),
            **(
                {"postgresql_cpu_ms_per_request": median_of(api_runs, "postgresql_cpu_ms_per_request")}
                if args.engine == "postgresql"
                else {}
            ),
        },
        "ratio": api_rps / echo_rps,
        "target_ratio": TARGET_RATIO[args.engine],
        "every_acknowledged_lead_committed": all(run["all_acknowledged_committed"] for run in api_runs),
        "runs": {"echo": echo_runs, "api": api_runs},
    }
    # Where the machine's CPU goes per lead: the API's processes, the database server's, the load generator's.
    spent = sum(value for key, value in result["api"].items() if key.endswith("cpu_ms_per_request"))
    result["cpu_ms_per_lead_all_processes"] = round(spent, 3)
    result["cpu_bound_rps"] = round((os.cpu_count() or 1) * 1000 / spent) if spent else None
    breakdown = " + ".join(
        f"{key.removesuffix('_cpu_ms_per_request').replace('server', 'api')} {value:.2f}"
        for key, value in result["api"].items()
        if key.endswith("cpu_ms_per_request")
    )
    path = save("leads" if args.engine == "duckdb" else f"leads-{args.engine}-{args.workers}w", result)
    print(
        f"median: echo {echo_rps:.0f} req/s, api {api_rps:.0f} req/s, ratio {result['ratio']:.2f} "
        f"(target >= {TARGET_RATIO[args.engine]}); CPU per lead {spent:.2f} ms over all processes "
        f"({breakdown}), so at most {result['cpu_bound_rps']} leads/s on {os.cpu_count()} cores; "
        f"api p50 {result['api']['p50_ms']:.1f} ms p99 {result['api']['p99_ms']:.1f} ms; "
        f"all acknowledged committed: {result['every_acknowledged_lead_committed']}  → {path}"
    )


if __name__ == "__main__":
    main()
