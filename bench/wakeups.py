"""Wake-ups across instances on PostgreSQL: how long a delivery waits when its lead lands on an instance whose worker
does not send it, polling vs LISTEN/NOTIFY, and what NOTIFY costs lead capture.

    .venv/bin/python -m bench.wakeups [--leads 40] [--poll 0.5] [--capture-seconds 4] [--rounds 6]

One throwaway PostgreSQL cluster (fsync on), the sandbox fakes on loopback. Instance A captures leads through the
real handler (no worker: the lead "lands on the other instance"); instance B runs the real DeliveryWorker. Each
lead's latency is from A's commit to the CRM fake receiving its request, leads arriving every 0.15-0.35 s (B idle
between them, as a quiet shop's instance is). Modes: `poll` (B finds rows by its idle read every --poll seconds) and
`notify` (migration 008's trigger NOTIFYs at commit; B's worker LISTENs and wakes after its grace). Then capture
throughput with and without the trigger: 32 concurrent callers on A for --capture-seconds, the order alternated round by round.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg

from bench.common import save
from ingest.core.clock import utcnow
from ingest.leads.consent import RequestContext
from ingest.leads.schemas import LeadIn
from ingest.leads.service import capture_leads, plan_lead
from ingest.outbox.worker import DeliveryWorker
from ingest.store import postgres
from ingest.store.postgres import PostgresDatabase
from sandbox import Sandbox
from sandbox.postgres import PostgresCluster
from tests.conftest import lead_body, make_settings


def _plan(settings: Any, n: int) -> Any:
    context = RequestContext(received_at=utcnow(), ip="203.0.113.7", user_agent="bench")
    body = lead_body(email=f"wake{n}-{uuid.uuid4().hex[:6]}@example.com")
    return plan_lead(settings, LeadIn(**body), context)


async def latency(url: str, sandbox: Sandbox, tmp: str, mode: str, leads: int, poll: float) -> list[float]:
    env = {name.lower(): value for name, value in sandbox.env().items()}
    settings = make_settings(
        Path(tmp),
        **env,
        attribution_database_url=url,
        attribution_delivery_poll_seconds=poll,
        mailerlite_requests_per_minute=0,
    )
    capturing, sending = PostgresDatabase.connect(url), PostgresDatabase.connect(url)
    worker = DeliveryWorker(sending, settings)
    await worker.start()
    await asyncio.sleep(1.0)  # MailerLite fields ensured, the worker idle
    committed: dict[str, float] = {}
    rng = random.Random(7)
    try:
        for n in range(leads):
            plan = _plan(settings, n)
            await capturing.writer.submit(capture_leads, plan)
            committed[str(plan.event_id)] = time.time()
            await asyncio.sleep(rng.uniform(0.15, 0.35))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            got = {r.body["event_id"] for r in sandbox.requests("crm") if r.body["event_id"] in committed}
            if len(got) == leads:
                break
            await asyncio.sleep(0.05)
    finally:
        await worker.stop()
        capturing.close()
        sending.close()
    first: dict[str, float] = {}
    for request in sandbox.requests("crm"):
        event_id = request.body["event_id"]
        if event_id in committed and event_id not in first:
            first[event_id] = request.received_at
    return [1000 * (first[e] - committed[e]) for e in committed if e in first]


async def throughput(url: str, tmp: str, seconds: float, callers: int = 32) -> float:
    settings = make_settings(Path(tmp), attribution_database_url=url)
    database = PostgresDatabase.connect(url)
    done = 0
    stop = time.monotonic() + seconds

    async def caller(index: int) -> None:
        nonlocal done
        n = 0
        while time.monotonic() < stop:
            await database.writer.submit(capture_leads, _plan(settings, index * 1_000_000 + n))
            n += 1
            done += 1

    started = time.monotonic()
    await asyncio.gather(*(caller(i) for i in range(callers)))
    elapsed = time.monotonic() - started
    database.close()
    return done / elapsed


def _fresh(cluster: PostgresCluster, name: str) -> str:
    with psycopg.connect(cluster.url, autocommit=True) as conn:
        conn.execute(f"create database {name}")
    url = cluster.url.rsplit("/", 1)[0] + f"/{name}"
    postgres.migrate(url)
    return url


def _trigger(url: str, on: bool) -> None:
    """Migration 008's NOTIFY trigger on (as shipped) or off (the worker's listener then hears nothing: polling)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            f"alter table deliveries {'enable' if on else 'disable'} trigger outbox_deliveries_notify"
        )


def _summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "n": len(ordered),
        "median_ms": round(statistics.median(ordered), 1),
        "p90_ms": round(ordered[int(0.9 * (len(ordered) - 1))], 1),
        "max_ms": round(ordered[-1], 1),
        "mean_ms": round(statistics.fmean(ordered), 1),
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"leads": args.leads, "poll_seconds": args.poll}
    with PostgresCluster(durable=True) as cluster, tempfile.TemporaryDirectory() as tmp:
        for mode in ("poll", "notify"):
            with Sandbox() as sandbox:
                url = _fresh(cluster, f"wake_{mode}")
                _trigger(url, mode == "notify")
                values = await latency(url, sandbox, tmp, mode, args.leads, args.poll)
                results[f"latency_{mode}"] = _summary(values)
                print(mode, results[f"latency_{mode}"], flush=True)
        url = _fresh(cluster, "capture")
        rates: dict[str, list[float]] = {"without_trigger": [], "with_trigger": []}
        for round_ in range(args.rounds):
            for on in (False, True) if round_ % 2 == 0 else (True, False):  # ABBA: drift hits both alike
                _trigger(url, on)
                rate = await throughput(url, tmp, args.capture_seconds)
                rates["with_trigger" if on else "without_trigger"].append(round(rate, 1))
                print("capture", "trigger" if on else "plain", round(rate, 1), flush=True)
        results["capture_leads_per_second"] = rates
        results["capture_median"] = {k: statistics.median(v) for k, v in rates.items()}
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leads", type=int, default=40)
    parser.add_argument("--poll", type=float, default=0.5)
    parser.add_argument("--capture-seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=6)
    outcome = asyncio.run(main(parser.parse_args()))
    with contextlib.suppress(Exception):
        save("wakeups", outcome)
    print(outcome)
