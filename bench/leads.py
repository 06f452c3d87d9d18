"""Lead capture throughput and latency vs a bare FastAPI echo of the same payload, in the same run.

    .venv/bin/python -m bench.leads [--rounds 3] [--seconds 10] [--connections 32]

Each round runs wrk against the echo, then against `attribution serve` on a fresh DuckDB file; after each API run
the server is stopped and the file opened to check that every lead answered 2xx is committed.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import duckdb

from bench.common import echo_server, load_average, median_of, run_wrk, save, server

SCRIPT = Path(__file__).with_name("lead.lua")


def main() -> None:
    """Run the rounds and print / save the medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    load_at_start = load_average()
    echo_runs, api_runs = [], []
    for round_number in range(1, args.rounds + 1):
        with echo_server() as url:
            echo_runs.append(
                run_wrk(
                    f"{url}/v1/leads",
                    SCRIPT,
                    connections=args.connections,
                    seconds=args.seconds,
                    server_cpu=True,
                )
            )
        with tempfile.TemporaryDirectory() as tmp:
            db_path = Path(tmp) / "bench.duckdb"
            env = {
                "ATTRIBUTION_DB_PATH": str(db_path),
                "ATTRIBUTION_REPLICA_PATH": str(db_path.with_suffix(".replica.duckdb")),
                "ATTRIBUTION_RATE_LIMIT_PER_MINUTE": "0",
                "ATTRIBUTION_LOG_LEVEL": "WARNING",
            }
            with server(["cli", "serve"], env) as url:
                run = run_wrk(
                    f"{url}/v1/leads",
                    SCRIPT,
                    connections=args.connections,
                    seconds=args.seconds,
                    server_cpu=True,
                )
            conn = duckdb.connect(str(db_path), read_only=True)
            committed = conn.execute("select count(*) from leads").fetchone()[0]  # type: ignore[index]
            conn.close()
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
        + f"--rounds {args.rounds} --seconds {args.seconds} --connections {args.connections}",
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
        },
        "ratio": api_rps / echo_rps,
        "target_ratio": 0.75,
        "every_acknowledged_lead_committed": all(run["all_acknowledged_committed"] for run in api_runs),
        "runs": {"echo": echo_runs, "api": api_runs},
    }
    path = save("leads", result)
    print(
        f"median: echo {echo_rps:.0f} req/s, api {api_rps:.0f} req/s, ratio {result['ratio']:.2f} (target >= 0.75); "
        f"api p50 {result['api']['p50_ms']:.1f} ms p99 {result['api']['p99_ms']:.1f} ms; "
        f"all acknowledged committed: {result['every_acknowledged_lead_committed']}  → {path}"
    )


if __name__ == "__main__":
    main()
