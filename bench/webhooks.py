"""Stripe webhook throughput vs the bare echo in the same run, and a duplicate storm.

    .venv/bin/python -m bench.webhooks [--rounds 3] [--seconds 10] [--connections 32] [--storm-events 1000]

Throughput: each round runs wrk with signed ~3 KB `payment_intent.succeeded` events (unique ids, each paying a
lead seeded beforehand, so every event does the full work: verify, store, payment + lead update, 3 outbox rows)
against the echo app's /v1/webhooks/stripe, then against `attribution serve` on a fresh DuckDB file; afterwards the
file is opened to check every acknowledged event is committed as processed. Storm: `--storm-copies` deliveries of
each of `--storm-events` distinct events, shuffled, over 32 connections; exactly one per event must be processed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import duckdb

from bench.common import echo_server, load_average, median_of, run_wrk, save, server
from ingest.core.clock import utcnow
from ingest.core.settings import Settings
from ingest.core.vocabulary import Destination
from ingest.leads.consent import RequestContext
from ingest.leads.schemas import ConsentMethod, LeadIn
from ingest.leads.service import capture_leads, plan_lead
from ingest.payments import repository as payments_repository
from ingest.payments.checkout import PaymentIntentLink, payment_metadata
from ingest.store.database import Database
from tests.payments import events

SCRIPT = Path(__file__).with_name("webhook.lua")
SECRET = "whsec_bench_only_not_a_real_secret"
TARGET_RATIO = 0.6
PRICE_CENTS = 4700
WRK_THREADS = 2


def seed_checkouts(db_path: Path, count: int) -> list[tuple[dict[str, Any], str]]:
    """Store `count` synthetic leads, each with the PaymentIntent its checkout created (as the API links it)."""
    settings = Settings(_env_file=None, attribution_db_path=db_path)  # type: ignore[call-arg]
    context = RequestContext(received_at=utcnow(), ip="127.0.0.1", user_agent="bench")
    plans = []
    for number in range(count):
        lead = LeadIn(
            full_name=f"Bench Buyer {number}",
            email=f"bench.buyer.{number}@example.com",
            phone="+351912345678",
            utm_source="instagram",
            utm_medium="social",
            utm_campaign="lisbon-launch",
            utm_content="hero-cta",
            marketing_consent=True,
            analytics_consent=True,
            consent_method=ConsentMethod.MODAL,
            consent_version="1.0",
        )
        plans.append(plan_lead(settings, lead, context))
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
    database = Database.open(db_path)
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


def event_counts(db_path: Path) -> dict[str, int]:
    """Stored Stripe events by status, plus payments and payment deliveries."""
    conn = duckdb.connect(str(db_path), read_only=True)
    try:
        counts = dict(conn.execute("select status, count(*) from stripe_events group by status").fetchall())
        counts["payments"] = conn.execute("select count(*) from payments").fetchone()[0]  # type: ignore[index]
        counts["payment_deliveries"] = conn.execute(  # type: ignore[index]
            "select count(*) from deliveries where kind in ('purchase', 'refund') or idempotency_key like '%:paid'"
        ).fetchone()[0]
        counts["leads_paid"] = conn.execute("select count(*) from leads where status = 'paid'").fetchone()[0]  # type: ignore[index]
    finally:
        conn.close()
    return counts


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
    with echo_server() as url:
        echo = run_wrk(
            f"{url}/v1/webhooks/stripe",
            SCRIPT,
            connections=args.connections,
            seconds=args.seconds,
            server_cpu=True,
        )
    # The API is slower than the echo, so this many events can't run out during the same number of seconds.
    count = int(echo["rps"] * args.seconds * 1.1) + 1000
    db_path = tmp / f"bench-{time.monotonic_ns()}.duckdb"
    checkouts = seed_checkouts(db_path, count)
    size = write_events(prefix, [succeeded_event(lead, pi, settings) for lead, pi in checkouts])
    with server(["cli", "serve"], api_env(db_path)) as url:
        api = run_wrk(
            f"{url}/v1/webhooks/stripe",
            SCRIPT,
            connections=args.connections,
            seconds=args.seconds,
            server_cpu=True,
        )
    counts = event_counts(db_path)
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
    db_path.unlink()
    return echo, api


async def _deliver_all(
    url: str, deliveries: list[tuple[str, dict[str, str]]], connections: int
) -> list[tuple[int, bool | None]]:
    """Send every delivery over `connections` keep-alive connections (aiohttp: httpx's async pool is the
    bottleneck at this rate); return (status, duplicate) per answer."""
    pending = list(reversed(deliveries))
    answers: list[tuple[int, bool | None]] = []
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:

        async def worker() -> None:
            while pending:
                text, headers = pending.pop()
                async with session.post(url, data=text, headers=headers) as response:
                    body = await response.json() if response.status == 200 else {}
                    answers.append((response.status, body.get("duplicate")))

        await asyncio.gather(*(worker() for _ in range(connections)))
    return answers


def duplicate_storm(args: argparse.Namespace, tmp: Path, settings: Settings) -> dict[str, Any]:
    """`storm_copies` deliveries of each of `storm_events` events, shuffled, at 32 connections."""
    db_path = tmp / "storm.duckdb"
    checkouts = seed_checkouts(db_path, args.storm_events)
    signed = [events.signed(succeeded_event(lead, pi, settings), SECRET) for lead, pi in checkouts]
    deliveries = [item for item in signed for _ in range(args.storm_copies)]
    random.Random(7).shuffle(deliveries)
    with server(["cli", "serve"], api_env(db_path)) as url:
        started = time.perf_counter()
        answers = asyncio.run(_deliver_all(f"{url}/v1/webhooks/stripe", deliveries, args.storm_connections))
        seconds = time.perf_counter() - started
    counts = event_counts(db_path)
    first_answers = sum(1 for status, duplicate in answers if status == 200 and duplicate is False)
    result = {
        "deliveries": len(deliveries),
        "distinct_events": args.storm_events,
        "connections": args.storm_connections,
        "seconds": round(seconds, 2),
        "deliveries_per_second": round(len(deliveries) / seconds, 1),
        "non_200": sum(1 for status, _ in answers if status != 200),
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
    args = parser.parse_args()
    settings = Settings(_env_file=None, product_price_cents=PRICE_CENTS)  # type: ignore[call-arg]
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
        f"connections in {storm['seconds']} s: {storm['processed']} processed, exactly once: {storm['exactly_once']}"
    )
    echo_rps, api_rps = median_of(echo_runs, "rps"), median_of(api_runs, "rps")
    result = {
        "command": (
            f"python -m bench.webhooks --rounds {args.rounds} --seconds {args.seconds} --connections {args.connections} "
            f"--storm-events {args.storm_events} --storm-copies {args.storm_copies}"
        ),
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
        "target_ratio": TARGET_RATIO,
        "every_acknowledged_event_processed": all(run["all_acknowledged_processed"] for run in api_runs),
        "storm": storm,
        "runs": {"echo": echo_runs, "webhooks": api_runs},
    }
    path = save("webhooks", result)
    print(
        f"median: echo {echo_rps:.0f} req/s, webhooks {api_rps:.0f} req/s, ratio {result['ratio']:.2f} "
        f"(target >= {TARGET_RATIO}); webhooks p50 {result['webhooks']['p50_ms']:.1f} ms "
        f"p99 {result['webhooks']['p99_ms']:.1f} ms; every acknowledged event processed: "
        f"{result['every_acknowledged_event_processed']}  → {path}"
    )


if __name__ == "__main__":
    main()
