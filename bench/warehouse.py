"""The warehouse on PostgreSQL: an incremental round against a full copy, at 100k-1M leads.

    .venv/bin/python -m bench.warehouse [--leads 100000] [--changes 1000] [--rounds 3] [--data-dir DIR] [--reuse]

1. Writes (or, with --reuse, reuses) a bulk DuckDB database of `--leads` leads (sandbox.bulk, ~3.7 deliveries a
   lead) and moves it into a throwaway PostgreSQL cluster (fsync on) with `db copy`'s copy_to_postgres, timed.
2. Round 1 of a Warehouse is the full copy: everything read from PostgreSQL through COPY, then published (the base
   file copied, the heavy models materialised, the copy put in place).
3. `--rounds` times: `--changes` new leads (each with its ledger row and four deliveries) and as many updated
   deliveries, committed in PostgreSQL, then one incremental round; reported: rows read, the read and the publish
   time. Then one `--full` round over the same, grown data for comparison.
4. For reference: `report --source database` on PostgreSQL (a fresh copy, the models as views), and the embedded
   publisher's copy of the original DuckDB file (what the API does on DuckDB).
Results: bench/results/warehouse.json (medians of the incremental rounds).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import duckdb
import psycopg

from bench.common import save
from ingest.core.settings import Settings
from ingest.reconcile.models import success_metrics
from ingest.reconcile.postgres_tables import copy_postgres
from ingest.reconcile.replica import publish_replica, reading
from ingest.reconcile.warehouse import RoundResult, Warehouse
from ingest.store.database import Database
from ingest.store.transfer import copy_to_postgres
from sandbox.bulk import BulkSpec, generate_bulk
from sandbox.postgres import PostgresCluster
from sandbox.scenario import GroundTruth


def _changes(url: str, leads: int) -> None:
    """`leads` deliveries moved on and `leads` new journeys (a lead, its ledger row, four deliveries), 100 of each
    a transaction, as the API's group commits write them."""
    with psycopg.connect(url) as conn:
        for start in range(0, leads, 100):
            size = min(100, leads - start)
            conn.execute(  # deliveries of earlier rounds moving on (first: not the ones inserted below)
                "update deliveries set status = 'delivered', delivered_at = now(), updated_at = now() "
                "where delivery_id in (select delivery_id from deliveries where status <> 'delivered' limit %s)",
                [size],
            )
            conn.execute(
                "with new as (select gen_random_uuid() as event_id, gen_random_uuid() as session_id, n "
                "from generate_series(1, %s) as n), "
                "l as (insert into leads (event_id, user_session_id, full_name, email, marketing_consent, "
                "analytics_consent, consent_method, consent_version, consent_version_current, consent_at, "
                "received_at, updated_at) select event_id, session_id, 'Bench Lead', event_id || '@example.com', "
                "true, true, 'modal', '1.0', true, now(), now(), now() from new returning event_id, user_session_id), "
                "c as (insert into consent_ledger (consent_id, user_session_id, event_id, marketing_consent, "
                "analytics_consent, consent_method, consent_version, consent_version_current, source, recorded_at) "
                "select gen_random_uuid(), user_session_id, event_id, true, true, 'modal', '1.0', true, 'lead', now() "
                "from l returning 1) "
                "insert into deliveries (delivery_id, event_id, user_session_id, destination, kind, purpose, "
                "idempotency_key, payload, status, created_at, updated_at) "
                "select gen_random_uuid(), l.event_id, l.user_session_id, d.destination, 'generate_lead', 'marketing', "
                "l.event_id || ':' || d.destination, '{}'::jsonb, 'pending', now(), now() from l "
                "cross join (values ('mailerlite'), ('crm'), ('sgtm'), ('meta')) as d(destination)",
                [size],
            )
            conn.commit()


def _round(keeper: Warehouse, *, full: bool = False) -> dict[str, Any]:
    result: RoundResult = keeper.run_round(full=full)
    published = result.published.seconds if result.published is not None else 0.0
    return {
        "rows_read": result.rows_read,
        "read_seconds": round(result.read_seconds, 3),
        "publish_seconds": round(published, 3),
        "seconds": round(result.seconds, 3),
    }


def _median(rounds: list[dict[str, Any]], key: str) -> float:
    return round(float(statistics.median(run[key] for run in rounds)), 3)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--leads", type=int, default=100_000)
    parser.add_argument(
        "--changes", type=int, default=1000, help="new leads (and updated deliveries) per round"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/attribution-bench-warehouse"))
    parser.add_argument("--reuse", action="store_true", help="reuse the bulk database of an earlier run")
    args = parser.parse_args()
    args.data_dir.mkdir(parents=True, exist_ok=True)
    bulk = args.data_dir / f"bulk-{args.leads}.duckdb"
    if not (args.reuse and bulk.exists()):
        started = time.perf_counter()
        generate_bulk(bulk, BulkSpec(leads=args.leads))
        print(f"bulk database of {args.leads:,} leads in {time.perf_counter() - started:.1f} s")
    params = GroundTruth.load(bulk).params
    settings = Settings(
        _env_file=None,
        attribution_db_path=bulk,
        attribution_replica_path=args.data_dir / "replica.duckdb",
    )
    for stale in args.data_dir.glob("replica.duckdb*"):
        stale.unlink()

    result: dict[str, Any] = {
        "command": f"python -m bench.warehouse --leads {args.leads} --changes {args.changes}"
    }
    with PostgresCluster(durable=True) as cluster:
        source = duckdb.connect(str(bulk))
        try:
            started = time.perf_counter()
            copied = copy_to_postgres(source, cluster.url)
            result["db_copy_seconds"] = round(time.perf_counter() - started, 2)
        finally:
            source.close()
        result["leads"] = args.leads
        result["rows"] = copied
        print(f"db copy: {sum(copied.values()):,} rows in {result['db_copy_seconds']} s")

        keeper = Warehouse(cluster.url, settings.attribution_replica_path, params)
        try:
            result["first_round_full_copy"] = _round(keeper)
            print(f"round 1 (full copy): {result['first_round_full_copy']}")
            incremental = []
            for _ in range(args.rounds):
                _changes(cluster.url, args.changes)
                incremental.append(_round(keeper))
                print(f"incremental round: {incremental[-1]}")
            result["incremental_rounds"] = incremental
            result["incremental_median"] = {
                key: _median(incremental, key) for key in ("read_seconds", "publish_seconds", "seconds")
            }
            result["quiet_round"] = _round(keeper)
            result["full_round"] = _round(keeper, full=True)
            print(f"quiet round: {result['quiet_round']}; full round: {result['full_round']}")
        finally:
            keeper.close()
        with reading(settings, "replica") as reader:
            replica_metrics = {m.metric: (m.numerator, m.denominator) for m in success_metrics(reader.conn)}
        started = time.perf_counter()
        copy_postgres(cluster.url, args.data_dir / "report-copy.duckdb")
        result["report_source_database_copy_seconds"] = round(time.perf_counter() - started, 2)
        (args.data_dir / "report-copy.duckdb").unlink()
        with psycopg.connect(cluster.url) as conn:
            (leads,) = conn.execute("select count(*) from leads").fetchone() or (0,)
        result["replica_leads_match"] = replica_metrics["crm_coverage"][1] == leads

    database = Database.open(bulk)
    try:
        snapshot = publish_replica(database, args.data_dir / "embedded-replica.duckdb", params)
        result["embedded_publish_seconds"] = round(snapshot.seconds, 2)
    finally:
        database.close()
    (args.data_dir / "embedded-replica.duckdb").unlink()
    full = result["full_round"]["read_seconds"]
    quick = result["incremental_median"]["read_seconds"]
    result["read_speedup"] = round(full / quick, 1) if quick else None
    path = save("warehouse", result)
    print(f"incremental read {quick} s vs full copy {full} s ({result['read_speedup']}x); saved {path}")


if __name__ == "__main__":
    main()
