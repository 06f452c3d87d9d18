"""Stripe webhook throughput vs the bare echo in the same run, and a duplicate storm.

    .venv/bin/python -m bench.webhooks [--rounds 3] [--seconds 10] [--connections 32] [--storm-events 1000]
    .venv/bin/python -m bench.webhooks --engine postgresql --workers 2

Throughput: each round runs wrk with signed ~3 KB `payment_intent.succeeded` events (unique ids, each paying a
lead seeded beforehand, so every event does the full work: verify, store, payment + lead update, 3 outbox rows)
against the echo app's /v1/webhooks/stripe (with as many worker processes), then against `attribution serve` on a
fresh store: a DuckDB file, or a throwaway PostgreSQL cluster on the same cores with fsync on; afterwards the store
is read to check every acknowledged event is committed as processed. Storm: `--storm-copies` deliveries of each of
`--storm-events` distinct events, shuffled, over 32 connections; exactly one per event must be processed. On
PostgreSQL the storm runs against two separate `attribution serve` instances on one database (each with
`--workers`), every connection bound to one of them, so copies of one event race on both.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import duckdb
import psycopg

from bench.common import echo_server, load_average, median_of, run_wrk, save, server, synthetic_lead
from ingest.core.clock import utcnow
from ingest.core.settings import Settings
from ingest.core.vocabulary import Destination
from ingest.leads.consent import RequestContext
from ingest.leads.service import capture_leads, plan_lead
from ingest.payments import repository as payments_repository
from ingest.payments.checkout import PaymentIntentLink, payment_metadata
from ingest.store.database import open_database
from ingest.store.postgres import migrate
from sandbox.postgres import PostgresCluster
from tests.payments import events

SCRIPT = Path(__file__).with_name("webhook.lua")
SECRET = "whsec_bench_only_not_a_real_secret"
TARGET_RATIO = 0.6
PRICE_CENTS = 4700
WRK_THREADS = 2
RUDDERSTACK_EVENTS_PER_SECOND = 1700  # RudderStack's published figure on 2 cores (issue 14)
# Stored Stripe events by status, then payments, payment deliveries and paid leads: the same SQL on both engines.
STATUS_SQL = "select status, count(*) from stripe_events group by status"
COUNT_SQL = {
    "payments": "select count(*) from payments",
    "payment_deliveries": (
        "select count(*) from deliveries where kind in ('purchase', 'refund') or idempotency_key like '%:paid'"
    ),
    "leads_paid": "select count(*) from leads where status = 'paid'",
}


@dataclass
class Store:
    """One fresh store: the API's variables for it, settings naming it (for seeding), and how to read it."""

    env: dict[str, str]
    settings: Settings
    connect: Callable[[], Any]  # a connection whose execute(sql).fetchone() / fetchall() read the store

    def instance_env(self, tmp: Path, instance: int) -> dict[str, str]:
        """`env`, plus (on PostgreSQL) a metrics folder of the instance's own for its worker processes."""
        if "ATTRIBUTION_DATABASE_URL" not in self.env:
            return self.env
        metrics = tmp / f"metrics-{time.monotonic_ns()}-{instance}"
        metrics.mkdir()
        return self.env | {"PROMETHEUS_MULTIPROC_DIR": str(metrics)}


@contextmanager
def fresh_store(engine: str, tmp: Path, name: str) -> Iterator[Store]:
    """A new DuckDB file, or a new migrated PostgreSQL cluster with fsync on (as bench/leads.py); removed after."""
    if engine == "duckdb":
        db_path = tmp / f"{name}-{time.monotonic_ns()}.duckdb"
        yield Store(
            env=api_env(db_path),
            settings=Settings(_env_file=None, attribution_db_path=db_path),
            connect=lambda: duckdb.connect(str(db_path), read_only=True),
        )
        db_path.unlink(missing_ok=True)
        return
    with PostgresCluster(durable=True) as cluster:
        migrate(cluster.url)
        # The URL makes PostgreSQL the store; the file variables still point into the temporary folder.
        yield Store(
            env=api_env(tmp / f"{name}-unused.duckdb") | {"ATTRIBUTION_DATABASE_URL": cluster.url},
            settings=Settings(_env_file=None, attribution_database_url=cluster.url),
            connect=lambda: psycopg.connect(cluster.url),
        )


def seed_checkouts(settings: Settings, count: int) -> list[tuple[dict[str, Any], str]]:
    """Store `count` synthetic leads, each with the PaymentIntent its checkout created (as the API links it), in
    the store `settings` name (the DuckDB file, or PostgreSQL with `attribution_database_url`)."""
    context = RequestContext(received_at=utcnow(), ip="127.0.0.1", user_agent="bench")
    plans = []
    for number in range(count):
        plans.append(plan_lead(settings, synthetic_lead(number), context))
    links = [
        PaymentIntentLink(
            event_id=plan.event_id,
            user_session_id=plan.lead["user_session_id"],
            payment_intent_id=events.new_id("pi"),
            amount_cents=PRICE_CENTS,
            currency="eur",
            created_at=utcnow(),
        )
        for plan in plans
    ]
    database = open_database(settings)
    try:
        for future in [database.writer.submit_nowait(capture_leads, plan) for plan in plans]:
            future.result()
        database.writer.submit_sync(_link_all, links)
    finally:
        database.close()
    return [(plan.lead, link.payment_intent_id) for plan, link in zip(plans, links, strict=True)]


def _link_all(conn: duckdb.DuckDBPyConnection, batches: Sequence[list[PaymentIntentLink]]) -> list[None]:
    """What `link_payment_intents` writes for each checkout, in two bulk statements (seeding only)."""
    links = [link for batch in batches for link in batch]
    payments_repository.insert_payments(conn, [link.payment_row() for link in links])
    payments_repository.update_lead_payments(
        conn,
        [
            {
                "event_id": link.event_id,
                "status": "lead",
                "payment_intent_id": link.payment_intent_id,
                "updated_at": link.created_at,
            }
            for link in links
        ],
    )
    return [None for _ in batches]


def succeeded_event(lead: dict[str, Any], payment_intent_id: str, settings: Settings) -> dict[str, Any]:
    """A real-shaped ~3 KB payment_intent.succeeded paying `lead` (metadata as our checkout sets it)."""
    intent = events.payment_intent_object(
        payment_intent_id, amount=PRICE_CENTS, metadata=payment_metadata(settings, lead, None)
    )
    charge = events.charge_object(payment_intent_id, amount=PRICE_CENTS)
    intent["charges"] = {"object": "list", "data": [charge], "has_more": False, "total_count": 1}
    return events.event("payment_intent.succeeded", intent)


def write_events(prefix: Path, bodies: list[dict[str, Any]]) -> float:
    """Sign the events now and write them round-robin to one file per wrk thread; return the mean body size."""
    files = [open(f"{prefix}.{n}", "w", encoding="utf-8") for n in range(WRK_THREADS)]  # noqa: SIM115
    sizes = []
    try:
        for number, body in enumerate(bodies):
            text, headers = events.signed(body, SECRET)
            sizes.append(len(text))
            files[number % WRK_THREADS].write(f"{headers['Stripe-Signature']}\t{text}\n")
    finally:
        for file in files:
            file.close()
    return statistics.mean(sizes) if sizes else 0.0


def api_env(db_path: Path) -> dict[str, str]:
    """The API as deployed, minus the per-IP rate limit (one load generator is one IP)."""
    return {
        "ATTRIBUTION_DB_PATH": str(db_path),
        "ATTRIBUTION_REPLICA_PATH": str(db_path.with_suffix(".replica.duckdb")),
        "ATTRIBUTION_RATE_LIMIT_PER_MINUTE": "0",
        "ATTRIBUTION_LOG_LEVEL": "WARNING",
        "STRIPE_WEBHOOK_SECRET": SECRET,
        "PRODUCT_PRICE_CENTS": "4700",
    }


def event_counts(store: Store) -> dict[str, int]:
    """Stored Stripe events by status, plus payments, payment deliveries and paid leads (after the API stopped)."""
    conn = store.connect()
    try:
        counts = {str(status): int(n) for status, n in conn.execute(STATUS_SQL).fetchall()}
        for key, sql in COUNT_SQL.items():
            counts[key] = int(conn.execute(sql).fetchone()[0])
    finally:
        conn.close()
    return counts


def serve_args(workers: int) -> list[str]:
    """`attribution serve`, with `--workers` when there are several."""
    return ["cli", "serve"] + (["--workers", str(workers)] if workers > 1 else [])


def throughput_round(
    args: argparse.Namespace, tmp: Path, settings: Settings
) -> tuple[dict[str, float], dict[str, float]]:
    """One echo run, then one API run with enough unique events to never repeat one."""
    prefix = tmp / "events"
    os.environ["WEBHOOK_EVENTS"] = str(prefix)
    sample = [
        succeeded_event(
            {
                "event_id": f"00000000-0000-4000-8000-{n:012d}",
                "marketing_consent": True,
                "consent_at": utcnow(),
            },
            events.new_id("pi"),
            settings,
        )
        for n in range(2000)
    ]
    write_events(prefix, sample)
    with echo_server(args.workers) as url:
        echo = run_wrk(
            f"{url}/v1/webhooks/stripe",
            SCRIPT,
            connections=args.connections,
            seconds=args.seconds,
            server_cpu=True,
        )
    # The API is slower than the echo, so this many events can't run out during the same number of seconds.
    count = int(echo["rps"] * args.seconds * 1.1) + 1000
    with fresh_store(args.engine, tmp, "bench") as store:
        checkouts = seed_checkouts(store.settings, count)
        size = write_events(prefix, [succeeded_event(lead, pi, settings) for lead, pi in checkouts])
        with server(serve_args(args.workers), store.instance_env(tmp, 1)) as url:
            api = run_wrk(
                f"{url}/v1/webhooks/stripe",
                SCRIPT,
                connections=args.connections,
                seconds=args.seconds,
                server_cpu=True,
            )
        counts = event_counts(store)
    acknowledged = api["completed"] - api["non_2xx"]
    api |= {
        "events_prepared": count,
        "mean_body_bytes": size,
        "acknowledged": acknowledged,
        "processed": counts.get("processed", 0),
        "payment_deliveries": counts["payment_deliveries"],
        "all_acknowledged_processed": counts.get("processed", 0) >= acknowledged
        and api["completed"] <= count,
    }
    for path in tmp.glob("events.*"):
        path.unlink()
    return echo, api


async def _deliver_all(
    urls: list[str], deliveries: list[tuple[str, dict[str, str]]], connections: int
) -> list[tuple[int, int, bool | None]]:
    """Send every delivery over `connections` keep-alive connections (aiohttp: httpx's async pool is the
    bottleneck at this rate), connection n bound to urls[n % len(urls)], all taking from one shuffled queue;
    return (instance, status, duplicate) per answer."""
    pending = list(reversed(deliveries))
    answers: list[tuple[int, int, bool | None]] = []
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:

        async def worker(instance: int) -> None:
            url = urls[instance]
            while pending:
                text, headers = pending.pop()
                async with session.post(url, data=text, headers=headers) as response:
                    body = await response.json() if response.status == 200 else {}
                    answers.append((instance, response.status, body.get("duplicate")))

        await asyncio.gather(*(worker(n % len(urls)) for n in range(connections)))
    return answers


def duplicate_storm(args: argparse.Namespace, tmp: Path, settings: Settings) -> dict[str, Any]:
    """`storm_copies` deliveries of each of `storm_events` events, shuffled, at 32 connections: to one instance on
    DuckDB, split between two instances on one database on PostgreSQL."""
    instances = 1 if args.engine == "duckdb" else 2
    with fresh_store(args.engine, tmp, "storm") as store:
        checkouts = seed_checkouts(store.settings, args.storm_events)
        signed = [events.signed(succeeded_event(lead, pi, settings), SECRET) for lead, pi in checkouts]
        deliveries = [item for item in signed for _ in range(args.storm_copies)]
        random.Random(7).shuffle(deliveries)
        with ExitStack() as stack:
            urls = [
                stack.enter_context(server(serve_args(args.workers), store.instance_env(tmp, n)))
                for n in range(1, instances + 1)
            ]
            started = time.perf_counter()
            answers = asyncio.run(
                _deliver_all(
                    [f"{url}/v1/webhooks/stripe" for url in urls], deliveries, args.storm_connections
                )
            )
            seconds = time.perf_counter() - started
        counts = event_counts(store)
    first_answers = sum(1 for _, status, duplicate in answers if status == 200 and duplicate is False)
    result = {
        "instances": instances,
        "workers_per_instance": args.workers,
        "deliveries": len(deliveries),
        "deliveries_per_instance": [sum(1 for n, _, _ in answers if n == i) for i in range(instances)],
        "processed_first_per_instance": [
            sum(1 for n, status, duplicate in answers if n == i and status == 200 and duplicate is False)
            for i in range(instances)
        ],
        "distinct_events": args.storm_events,
        "connections": args.storm_connections,
        "seconds": round(seconds, 2),
        "deliveries_per_second": round(len(deliveries) / seconds, 1),
        "non_200": sum(1 for _, status, _ in answers if status != 200),
        "answered_not_duplicate": first_answers,
        "stored_events": sum(counts.get(s, 0) for s in ("processed", "duplicate", "ignored", "failed")),
        "processed": counts.get("processed", 0),
        "payments": counts["payments"],
        "leads_paid": counts["leads_paid"],
        "payment_deliveries": counts["payment_deliveries"],
    }
    result["exactly_once"] = (
        result["processed"] == result["answered_not_duplicate"] == result["leads_paid"] == args.storm_events
        and result["stored_events"] == args.storm_events
        and result["payment_deliveries"] == len(Destination) * args.storm_events  # one per destination
        and result["non_200"] == 0
    )
    return result


def _cpu_median(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Median server CPU per request, where it could be measured."""
    if all("server_cpu_ms_per_request" in run for run in runs):
        return {"server_cpu_ms_per_request": median_of(runs, "server_cpu_ms_per_request")}
    return {}


def main() -> None:
    """Run the rounds and the storm; print and save the medians."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--storm-events", type=int, default=1000)
    parser.add_argument("--storm-copies", type=int, default=10)
    parser.add_argument("--storm-connections", type=int, default=32)
    parser.add_argument("--engine", choices=("duckdb", "postgresql"), default="duckdb")
    parser.add_argument(
        "--workers", type=int, default=1, help="API (and echo) processes; > 1 needs PostgreSQL"
    )
    args = parser.parse_args()
    if args.workers > 1 and args.engine == "duckdb":
        parser.error("--workers > 1 needs --engine postgresql (the DuckDB file admits one writing process)")
    embedded = args.engine == "duckdb"  # the default deployment: one process on the file, results as before
    settings = Settings(_env_file=None, product_price_cents=PRICE_CENTS)
    load_at_start = load_average()
    echo_runs, api_runs = [], []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for round_number in range(1, args.rounds + 1):
            echo, api = throughput_round(args, tmp, settings)
            echo_runs.append(echo)
            api_runs.append(api)
            print(
                f"round {round_number}: echo {echo['rps']:.0f} req/s, webhooks {api['rps']:.0f} req/s "
                f"({api['mean_body_bytes']:.0f} B events), {api['acknowledged']} acknowledged, "
                f"{api['processed']} processed; server CPU per request: echo "
                f"{echo.get('server_cpu_ms_per_request', float('nan')):.2f} ms, webhooks "
                f"{api.get('server_cpu_ms_per_request', float('nan')):.2f} ms",
                flush=True,
            )
        storm = duplicate_storm(args, tmp, settings)
    print(
        f"storm: {storm['deliveries']} deliveries of {storm['distinct_events']} events at {storm['connections']} "
        f"connections in {storm['seconds']} s"
        + (
            ""
            if storm["instances"] == 1
            else f" across {storm['instances']} instances {storm['deliveries_per_instance']}"
        )
        + f": {storm['processed']} processed, exactly once: {storm['exactly_once']}"
    )
    echo_rps, api_rps = median_of(echo_runs, "rps"), median_of(api_runs, "rps")
    command = (
        f"python -m bench.webhooks --rounds {args.rounds} --seconds {args.seconds} --connections {args.connections} "
        f"--storm-events {args.storm_events} --storm-copies {args.storm_copies}"
    )
    if args.storm_connections != 32:
        command += f" --storm-connections {args.storm_connections}"
    if not embedded:
        command += f" --engine {args.engine} --workers {args.workers}"
    result = {
        "command": command,
        "engine": args.engine,
        "workers": args.workers,
        "connections": args.connections,
        "load_average_at_start": load_at_start,
        "echo": {
            "rps_median": echo_rps,
            "p50_ms": median_of(echo_runs, "p50_ms"),
            "p99_ms": median_of(echo_runs, "p99_ms"),
            **_cpu_median(echo_runs),
        },
        "webhooks": {
            "rps_median": api_rps,
            "p50_ms": median_of(api_runs, "p50_ms"),
            "p99_ms": median_of(api_runs, "p99_ms"),
            **_cpu_median(api_runs),
        },
        "ratio": api_rps / echo_rps,
        # The 0.6x target is the embedded deployment's; issue 14 sets none for webhooks on PostgreSQL.
        "target_ratio": TARGET_RATIO if embedded else None,
        "every_acknowledged_event_processed": all(run["all_acknowledged_processed"] for run in api_runs),
        "storm": storm,
        "runs": {"echo": echo_runs, "webhooks": api_runs},
    }
    if not embedded:
        result["reference_events_per_second"] = {"rudderstack_2_cores": RUDDERSTACK_EVENTS_PER_SECOND}
    path = save("webhooks" if embedded else f"webhooks-{args.engine}-{args.workers}w", result)
    target = (
        f"(target >= {TARGET_RATIO})"
        if embedded
        else f"(RudderStack publishes {RUDDERSTACK_EVENTS_PER_SECOND} events/s on 2 cores)"
    )
    print(
        f"median: echo {echo_rps:.0f} req/s, webhooks {api_rps:.0f} req/s, ratio {result['ratio']:.2f} "
        f"{target}; webhooks p50 {result['webhooks']['p50_ms']:.1f} ms "
        f"p99 {result['webhooks']['p99_ms']:.1f} ms; every acknowledged event processed: "
        f"{result['every_acknowledged_event_processed']}  → {path}"
    )


if __name__ == "__main__":
    main()
