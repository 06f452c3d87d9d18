"""Delivery worker throughput: drain queued deliveries to a loopback sink that answers every request after 10 ms.

    .venv/bin/python -m bench.deliveries [--deliveries 50000] [--rounds 3] [--round-size 10000] [--latency-ms 10]
    .venv/bin/python -m bench.deliveries --engine postgresql --instances 2

Each drain seeds a fresh store with `--round-size` leads and one pending delivery each (spread over MailerLite, the
CRM and sGTM, all pointed at the sink, MailerLite's 120/min pacing off), written by lead capture's own writer batch
handler (`capture_leads`) on either engine, then times the real `DeliveryWorker` until every delivery is
`delivered`. The sink is one asyncio process answering after `--latency-ms` (10 ms); it counts the requests per
Idempotency-Key, and after each drain every delivery must have been sent exactly once and be `delivered` with
exactly one attempt row (`exactly_once` in the results).

DuckDB (the default, `bench/results/deliveries.json`): a fresh file per drain and the worker in this process. In
the same run, two baselines on the same sink: the HTTP ceiling (the same requests and concurrency, no database at
all) and the naive outbox (claim one row, send, record it, one transaction each, same concurrency). Then one drain
of `--deliveries` (50,000) queued deliveries. Target: >= 1,000 deliveries/s.

PostgreSQL (`--engine postgresql --instances N`, `bench/results/deliveries-postgresql-<N>i.json`): a throwaway
cluster with fsync on, a fresh database per drain; the worker runs in separate OS processes (spawned), each with
its own `PostgresDatabase` and the real `DeliveryWorker` (claims FOR UPDATE SKIP LOCKED under leases, LISTEN/NOTIFY
wake-ups), all against the same sink. Each round drains once with 1 instance and once with N (the order
alternates), so the N/1 ratio comes from the same run; then one drain of `--deliveries` with N instances. Each
instance has its own 16 requests in flight per destination, as a deployed instance would (N x 48 in all; the
HTTP ceiling is one process's 48). The clock starts when the instances, already started and connected, are told
to go. The PostgreSQL server, the instances, the sink and this process all share the machine's 2 cores: CPU per
delivery is given for the instances and for the server.

Everything runs on uvloop, the event loop `attribution serve` runs the worker on (uvicorn[standard] picks it);
`--loop asyncio` measures on the standard library's loop instead.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import queue
import random
import re
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any, ClassVar

import httpx
import psycopg
import uvloop
from psycopg import sql

from bench.common import cpu_seconds, save, server, synthetic_lead
from ingest.core.clock import utcnow
from ingest.core.settings import Settings
from ingest.core.vocabulary import DeliveryKind, Destination
from ingest.leads.consent import RequestContext
from ingest.leads.service import LeadCaptured, LeadPlan, capture_leads, plan_lead
from ingest.outbox.delivery import deliver_one, settle
from ingest.outbox.destinations import build_clients
from ingest.outbox.destinations.transport import OutgoingRequest
from ingest.outbox.gate import ConsentState
from ingest.outbox.leases import ClaimRequest, Flush, claim_deliveries, record_deliveries
from ingest.outbox.planning import plan_delivery
from ingest.outbox.worker import DeliveryWorker
from ingest.store.database import Database, connect, open_database
from ingest.store.postgres import migrate
from ingest.store.writer import Writer
from sandbox.postgres import PostgresCluster

TARGET_PER_SECOND = 1000
CONCURRENCY = 16  # per destination, so 48 requests in flight at most (per instance)
_ANSWER = b'{"contact_id":"ct_bench","data":{"id":"100000000000000001"}}'
_FIELDS_ANSWER = b'{"data":[],"links":{}}'  # no fields listed: each create answers 200
_INSTANCE_PREFIX = re.compile(rb"^/(i\d+)(/.*)$")  # /i<k>/...: which instance sent it (PostgreSQL runs)
_NOT_COUNTED = (b"/count", b"/readyz", b"/keys", b"/reset")
READY_TIMEOUT_SECONDS = 120


# --- the sink: a minimal HTTP/1.1 keep-alive server answering every request after a fixed delay -----------


class _Sink(asyncio.Protocol):
    latency = 0.01
    answered = 0
    keys: ClassVar[Counter[str]] = Counter()  # requests per Idempotency-Key since the last /reset
    by_instance: ClassVar[Counter[str]] = Counter()  # requests per sending instance since the last /reset

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            head = self.buffer[:end].lower()
            length = 0
            key: bytes | None = None
            for line in head.split(b"\r\n"):
                if line.startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
                elif line.startswith(b"idempotency-key:"):
                    key = line.split(b":", 1)[1].strip()
            if len(self.buffer) < end + 4 + length:
                return
            path = head.split(b" ", 2)[1]
            instance = b"main"
            if prefixed := _INSTANCE_PREFIX.match(path):
                instance, path = prefixed.group(1), prefixed.group(2)
            self.buffer = self.buffer[end + 4 + length :]
            if path == b"/count":
                body = json.dumps({"answered": _Sink.answered}).encode()
            elif path == b"/keys":
                body = json.dumps({"keys": _Sink.keys, "by_instance": _Sink.by_instance}).encode()
            elif path == b"/reset":
                _Sink.keys, _Sink.by_instance = Counter(), Counter()
                body = b"{}"
            elif path.startswith(b"/api/fields"):  # the worker's MailerLite custom-field check at start
                body = _FIELDS_ANSWER
            else:
                body = _ANSWER
            if path not in _NOT_COUNTED and not path.startswith(b"/api/fields"):
                _Sink.answered += 1
                if key is not None:
                    _Sink.keys[key.decode()] += 1
                    _Sink.by_instance[instance.decode()] += 1
            response = (
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                % (
                    len(body),
                    body,
                )
            )
            asyncio.get_running_loop().call_later(_Sink.latency, self._write, response)

    def _write(self, response: bytes) -> None:
        if not self.transport.is_closing():
            self.transport.write(response)


async def _serve_sink(port: int, latency_ms: float) -> None:
    _Sink.latency = latency_ms / 1000
    sink = await asyncio.get_running_loop().create_server(_Sink, "127.0.0.1", port)
    await sink.serve_forever()


def _reset_sink(sink: str) -> None:
    httpx.get(f"{sink}/reset", timeout=10).raise_for_status()


# --- seeding ------------------------------------------------------------------------------------------------


def _settings(db_path: Path, sink: str, database_url: str | None = None) -> Settings:
    return Settings(
        _env_file=None,
        attribution_db_path=db_path,
        attribution_database_url=database_url,
        mailerlite_api_key="bench-key",
        mailerlite_base_url=sink,
        mailerlite_requests_per_minute=0,
        mailerlite_concurrency=CONCURRENCY,
        crm_webhook_url=f"{sink}/crm",
        crm_concurrency=CONCURRENCY,
        crm_signing_secret="bench-secret",
        sgtm_endpoint=f"{sink}/mp/collect",
        sgtm_concurrency=CONCURRENCY,
        attribution_delivery_poll_seconds=0.05,
    )


_SLOTS = (
    (Destination.MAILERLITE, DeliveryKind.SUBSCRIBER_UPSERT),
    (Destination.CRM, DeliveryKind.CONTACT_UPSERT),
    (Destination.SGTM, DeliveryKind.GENERATE_LEAD),
)


def _plans(settings: Settings, count: int) -> list[LeadPlan]:
    """`count` synthetic leads as lead capture plans them, each with one pending delivery (the slots in turn).

    One lead goes through `plan_lead` (validation, consent row); the others are copies with their own ids, name,
    address and phone: validating 50,000 addresses and phones would cost more than the drain measured after."""
    now = utcnow()
    context = RequestContext(received_at=now, ip="203.0.113.7", user_agent="bench")
    template = plan_lead(settings, synthetic_lead(0, consent_version=settings.consent_version), context)
    consent = ConsentState(marketing=True, analytics=True)
    plans = []
    for i in range(count):
        event_id, session = uuid.uuid4(), uuid.uuid4()
        destination, kind = _SLOTS[i % len(_SLOTS)]
        lead = template.lead | {
            "event_id": event_id,
            "user_session_id": session,
            "full_name": f"Bench Buyer {i}",
            "email": f"buyer{i}@example.com",
            "phone": f"+351912{i % 1_000_000:06d}",
        }
        ledger = template.consent | {
            "consent_id": uuid.uuid4(),
            "event_id": event_id,
            "user_session_id": session,
        }
        delivery = plan_delivery(
            settings,
            destination=destination,
            kind=kind,
            event_id=event_id,
            user_session_id=session,
            consent=consent,
            now=now,
        )
        plans.append(LeadPlan(lead=lead, consent=ledger, deliveries=[delivery]))
    return plans


def seed(database: Database, settings: Settings, count: int) -> None:
    """Commit `count` leads with their consent rows and one pending delivery each, through the store's writer and
    lead capture's batch handler (grouped commits, either engine); then checkpoint (and on PostgreSQL analyze), so
    the drain measured next does not pay for the seeding."""
    futures = [database.writer.submit_nowait(capture_leads, plan) for plan in _plans(settings, count)]
    for future in futures:
        captured = future.result()
        assert isinstance(captured, LeadCaptured) and not captured.duplicate
    database.read(lambda conn: conn.execute("checkpoint"))
    if database.engine == "postgresql":
        database.read(lambda conn: conn.execute("analyze"))


def _delivered(database: Database) -> int:
    row = database.read(
        lambda c: c.execute("select count(*) from deliveries where status = 'delivered'").fetchone()
    )
    return int(row[0]) if row else 0


def _attempts(database: Database) -> int:
    row = database.read(lambda c: c.execute("select count(*) from delivery_attempts").fetchone())
    return int(row[0]) if row else 0


def _stored(database: Database) -> list[tuple[str, str, int]]:
    """(idempotency key, status, attempt rows) of every delivery."""
    rows = database.read(
        lambda c: c.execute(
            "select d.idempotency_key, d.status, count(a.delivery_id) from deliveries d "
            "left join delivery_attempts a on a.delivery_id = d.delivery_id "
            "group by d.delivery_id, d.idempotency_key, d.status"
        ).fetchall()
    )
    return [(str(key), str(status), int(attempts)) for key, status, attempts in rows]


def check_exactly_once(database: Database, sink: str, count: int) -> dict[str, Any]:
    """What the sink received since its reset against what the store holds: every delivery sent once (one request
    under its idempotency key, none under another), `delivered`, with one attempt row."""
    received = httpx.get(f"{sink}/keys", timeout=60).json()
    keys: dict[str, int] = received["keys"]
    stored = _stored(database)
    expected = {key for key, _, _ in stored}
    check: dict[str, Any] = {
        "deliveries_stored": len(stored),
        "requests": sum(keys.values()),
        "keys_received": len(keys),
        "sent_more_than_once": sum(1 for n in keys.values() if n > 1),
        "never_sent": len(expected - keys.keys()),
        "unknown_keys": len(keys.keys() - expected),
        "delivered": sum(1 for _, status, _ in stored if status == "delivered"),
        "attempt_rows": _attempts(database),
        "delivered_with_one_attempt": sum(
            1 for _, status, attempts in stored if status == "delivered" and attempts == 1
        ),
        "requests_by_instance": dict(sorted(received["by_instance"].items())),
    }
    check["exactly_once"] = (
        len(stored) == len(expected) == count
        and check["requests"] == count
        and check["sent_more_than_once"] == check["never_sent"] == check["unknown_keys"] == 0
        and check["delivered_with_one_attempt"] == check["attempt_rows"] == count
    )
    return check


# --- the measurements: embedded DuckDB ----------------------------------------------------------------------


async def drain_with_worker(sink: str, count: int) -> dict[str, Any]:
    """Seed `count` deliveries and time the real worker until every one is delivered."""
    with tempfile.TemporaryDirectory() as folder:
        settings = _settings(Path(folder) / "bench.duckdb", sink)
        database = open_database(settings)
        seed(database, settings, count)
        _reset_sink(sink)
        seeding_commits = database.writer.batches_committed
        worker = DeliveryWorker(database, settings)
        started, cpu_started = time.perf_counter(), time.process_time()
        await worker.start()
        # Counted off the event loop, so the count does not slow the worker it measures.
        while await asyncio.to_thread(_delivered, database) < count:
            await asyncio.sleep(0.1)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        await worker.stop()
        check = check_exactly_once(database, sink, count)
        commits = database.writer.batches_committed - seeding_commits
        database.close()
    return {
        "deliveries": count,
        "seconds": elapsed,
        "per_second": count / elapsed,
        "commits": commits,
        # CPU of this process (event loop, writer, DuckDB threads) per delivery: what the work costs,
        # whatever else the machine is doing at the time.
        "cpu_ms_per_delivery": cpu * 1000 / count,
        "check": check,
    }


async def http_ceiling(sink: str, count: int) -> dict[str, float]:
    """The same number of requests at the same concurrency through the same clients, no database."""
    with tempfile.TemporaryDirectory() as folder:
        settings = _settings(Path(folder) / "unused.duckdb", sink)
        clients = build_clients(settings)
        body = json.dumps({"email": "buyer@example.com", "fields": {"event_id": "x" * 36}}).encode()
        urls = {
            Destination.MAILERLITE: f"{sink}/api/subscribers",
            Destination.CRM: f"{sink}/crm",
            Destination.SGTM: f"{sink}/mp/collect",
        }
        per_lane = count // len(clients)

        async def lane(destination: Destination) -> None:
            client = clients[destination]

            async def sender(n: int) -> None:
                for _ in range(n):
                    answer = await client.send(OutgoingRequest(urls[destination], body))
                    assert answer.is_success

            await asyncio.gather(*(sender(per_lane // CONCURRENCY) for _ in range(CONCURRENCY)))

        started = time.perf_counter()
        await asyncio.gather(*(lane(destination) for destination in clients))
        elapsed = time.perf_counter() - started
        for client in clients.values():
            await client.aclose()
    sent = (per_lane // CONCURRENCY) * CONCURRENCY * len(clients)
    return {"deliveries": sent, "seconds": elapsed, "per_second": sent / elapsed}


async def naive_outbox(sink: str, count: int) -> dict[str, float]:
    """Claim one row, send it, record it: one transaction each, the same concurrency, the same code paths."""
    with tempfile.TemporaryDirectory() as folder:
        db_path = Path(folder) / "bench.duckdb"
        settings = _settings(db_path, sink)
        seeded = open_database(settings)
        seed(seeded, settings, count)
        seeded.close()
        conn = connect(db_path)
        writer = Writer(conn, max_batch=1)  # one job, one commit
        writer.start()
        clients = build_clients(settings)
        rng = random.Random(0)

        async def sender(destination: Destination) -> None:
            while True:
                request = ClaimRequest(utcnow(), {destination.value: 1})
                claimed = (await writer.submit(claim_deliveries, request)).deliveries
                if not claimed:
                    return
                (item,) = claimed
                result = await deliver_one(clients[destination], item, settings=settings, now=utcnow())
                outcome = settle(item, result, settings=settings, now=utcnow(), rng=rng)
                await writer.submit(record_deliveries, Flush((outcome,)))

        started = time.perf_counter()
        await asyncio.gather(*(sender(d) for d in clients for _ in range(CONCURRENCY)))
        elapsed = time.perf_counter() - started
        for client in clients.values():
            await client.aclose()
        writer.stop()
        delivered = conn.execute("select count(*) from deliveries where status = 'delivered'").fetchone()
        conn.close()
    assert delivered is not None and delivered[0] == count
    return {"deliveries": count, "seconds": elapsed, "per_second": count / elapsed}


# --- the measurements: PostgreSQL, N instances in separate processes ----------------------------------------


def _runner(loop: str) -> Callable[[Coroutine[Any, Any, Any]], Any]:
    return uvloop.run if loop == "uvloop" else asyncio.run


def _instance(
    url: str, sink: str, index: int, loop: str, go: Event, stop: Event, reports: Queue[Any]
) -> None:
    """One instance's process (spawned): its own store and the real worker, from `go` until `stop`."""
    reports.put(("done", _runner(loop)(_run_instance(url, sink, index, go, stop, reports))))


async def _run_instance(
    url: str, sink: str, index: int, go: Event, stop: Event, reports: Queue[Any]
) -> dict[str, Any]:
    # Its requests go to /i<index>/... on the sink, which counts them per instance.
    settings = _settings(Path(tempfile.gettempdir()) / "unused.duckdb", f"{sink}/i{index}", url)
    database = open_database(settings)
    worker = DeliveryWorker(database, settings)
    reports.put(("ready", index))
    await asyncio.to_thread(go.wait)
    cpu_started = time.process_time()
    await worker.start()
    while not stop.is_set():
        await asyncio.sleep(0.05)
    cpu = time.process_time() - cpu_started
    await worker.stop()
    commits = database.writer.batches_committed
    database.close()
    return {"instance": f"i{index}", "cpu_seconds": cpu, "commits": commits}


def _database_url(cluster: PostgresCluster, name: str) -> str:
    return cluster.url.rsplit("/", 1)[0] + f"/{name}"


def _create_database(cluster: PostgresCluster, name: str) -> str:
    """A fresh, migrated database on the cluster; its URL."""
    with psycopg.connect(cluster.url, autocommit=True) as conn:
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    url = _database_url(cluster, name)
    migrate(url)
    return url


def _drop_database(cluster: PostgresCluster, name: str) -> None:
    with psycopg.connect(cluster.url, autocommit=True) as conn:
        conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


def _server_cpu(cluster: PostgresCluster) -> float:
    """CPU seconds the PostgreSQL server (postmaster, backends, writers) has used so far."""
    pids = cluster.server_pids()
    return (cpu_seconds(pids[0]) or 0.0) if pids else 0.0


def _collect(reports: Queue[Any], kind: str, expected: int, timeout: float) -> list[Any]:
    """Up to `expected` reports of one kind from the instances, waiting at most `timeout` seconds in all."""
    deadline = time.monotonic() + timeout
    got: list[Any] = []
    while len(got) < expected:
        try:
            what, value = reports.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            break
        if what == kind:
            got.append(value)
    return got


def drain_with_instances(
    cluster: PostgresCluster, sink: str, count: int, instances: int, loop: str, name: str
) -> dict[str, Any]:
    """Seed a fresh database with `count` deliveries; time `instances` worker processes until all are delivered."""
    url = _create_database(cluster, name)
    settings = _settings(Path(tempfile.gettempdir()) / "unused.duckdb", sink, url)
    database = open_database(settings)
    try:
        seed(database, settings, count)
        _reset_sink(sink)
        context = multiprocessing.get_context("spawn")
        go, stop = context.Event(), context.Event()
        reports: Queue[Any] = context.Queue()
        processes = [
            context.Process(
                target=_instance,
                args=(url, sink, index, loop, go, stop, reports),
                name=f"delivery-instance-{index}",
            )
            for index in range(instances)
        ]
        for process in processes:
            process.start()
        stats: list[dict[str, Any]] = []
        try:
            if len(_collect(reports, "ready", instances, READY_TIMEOUT_SECONDS)) < instances:
                raise RuntimeError("the instances did not start")
            server_cpu_started = _server_cpu(cluster)
            started = time.perf_counter()
            go.set()
            deadline = started + 60 + count / 100
            while _delivered(database) < count:
                if not all(process.is_alive() for process in processes):
                    raise RuntimeError("an instance exited during the drain")
                if time.perf_counter() > deadline:
                    raise TimeoutError(
                        f"{_delivered(database)} of {count} delivered after {deadline - started:.0f} s"
                    )
                time.sleep(0.1)
            elapsed = time.perf_counter() - started
            server_cpu = _server_cpu(cluster) - server_cpu_started
        finally:
            stop.set()
            stats = _collect(reports, "done", instances, 60)
            for process in processes:
                process.join(30)
                if process.is_alive():
                    process.terminate()
                    process.join(5)
        if len(stats) < instances:
            raise RuntimeError(f"{instances - len(stats)} instance(s) did not report")
        check = check_exactly_once(database, sink, count)
    finally:
        database.close()
        _drop_database(cluster, name)
    instance_cpu = sum(stat["cpu_seconds"] for stat in stats)
    return {
        "instances": instances,
        "deliveries": count,
        "seconds": elapsed,
        "per_second": count / elapsed,
        "commits": sum(stat["commits"] for stat in stats),
        # CPU per delivery of the instances together and of the PostgreSQL server: what the work costs, whatever
        # else the machine is doing at the time.
        "instance_cpu_ms_per_delivery": instance_cpu * 1000 / count,
        "server_cpu_ms_per_delivery": server_cpu * 1000 / count,
        "by_instance": sorted(stats, key=lambda stat: str(stat["instance"])),
        "check": check,
    }


# --- the runs -----------------------------------------------------------------------------------------------


def run_duckdb(args: argparse.Namespace, sink: str) -> tuple[dict[str, Any], list[bool]]:
    """The embedded store: rounds of worker, naive outbox and HTTP ceiling, then the big drain."""
    run = _runner(args.loop)
    rounds: list[dict[str, Any]] = []
    for number in range(1, args.rounds + 1):
        ceiling = run(http_ceiling(sink, args.round_size))
        naive = run(naive_outbox(sink, args.naive_size))
        worker = run(drain_with_worker(sink, args.round_size))
        rounds.append({"http_ceiling": ceiling, "naive_outbox": naive, "worker": worker})
        print(
            f"round {number}: worker {worker['per_second']:.0f}/s, naive outbox {naive['per_second']:.0f}/s, "
            f"HTTP ceiling {ceiling['per_second']:.0f}/s; exactly once: {worker['check']['exactly_once']}",
            flush=True,
        )
    drain = run(drain_with_worker(sink, args.deliveries))
    answered = httpx.get(f"{sink}/count", timeout=5).json()["answered"]

    def median(kind: str) -> float:
        return float(statistics.median(r[kind]["per_second"] for r in rounds))

    result = {
        "engine": "duckdb",
        "rounds": rounds,
        "median_per_second": {kind: median(kind) for kind in ("worker", "naive_outbox", "http_ceiling")},
        "worker_vs_naive": median("worker") / median("naive_outbox"),
        "worker_vs_http_ceiling": median("worker") / median("http_ceiling"),
        "drain": drain,
        "sink_answered": answered,
        "target_per_second": TARGET_PER_SECOND,
        "target_met": drain["per_second"] >= TARGET_PER_SECOND and median("worker") >= TARGET_PER_SECOND,
    }
    checks = [r["worker"]["check"]["exactly_once"] for r in rounds] + [drain["check"]["exactly_once"]]
    print(
        f"median over {args.rounds} rounds of {args.round_size}: worker {median('worker'):.0f}/s "
        f"(x{result['worker_vs_naive']:.1f} the naive outbox, {result['worker_vs_http_ceiling']:.0%} of the HTTP "
        f"ceiling); drain of {args.deliveries}: {drain['seconds']:.1f} s = {drain['per_second']:.0f}/s with "
        f"{drain['commits']} commits, {drain['cpu_ms_per_delivery']:.2f} ms CPU per delivery; "
        f"target {TARGET_PER_SECOND}/s {'met' if result['target_met'] else 'MISSED'}"
    )
    return result, checks


def run_postgresql(args: argparse.Namespace, sink: str) -> tuple[dict[str, Any], list[bool]]:
    """PostgreSQL: rounds of 1 and N instances (and the HTTP ceiling), then the big drain with N."""
    counts = sorted({1, args.instances})
    rounds: list[dict[str, Any]] = []
    with PostgresCluster(durable=True) as cluster:
        for number in range(1, args.rounds + 1):
            ceiling = _runner(args.loop)(http_ceiling(sink, args.round_size))
            measured = {
                n: drain_with_instances(cluster, sink, args.round_size, n, args.loop, f"bench_r{number}_{n}i")
                for n in (counts if number % 2 else counts[::-1])  # alternated: neither always runs first
            }
            rounds.append({"http_ceiling": ceiling, "instances": {str(n): measured[n] for n in counts}})
            print(
                f"round {number}: "
                + ", ".join(
                    f"{n} instance(s) {measured[n]['per_second']:.0f}/s "
                    f"(exactly once: {measured[n]['check']['exactly_once']})"
                    for n in counts
                )
                + f"; HTTP ceiling {ceiling['per_second']:.0f}/s",
                flush=True,
            )
        drain = drain_with_instances(cluster, sink, args.deliveries, args.instances, args.loop, "bench_drain")

    def median(n: int) -> float:
        return float(statistics.median(r["instances"][str(n)]["per_second"] for r in rounds))

    ceiling_median = float(statistics.median(r["http_ceiling"]["per_second"] for r in rounds))
    scaling = median(args.instances) / median(1)
    result = {
        "engine": "postgresql",
        "instances": args.instances,
        "rounds": rounds,
        "median_per_second": {f"{n}_instance{'s' if n > 1 else ''}": median(n) for n in counts}
        | {"http_ceiling": ceiling_median},
        "instances_vs_one": scaling,
        "drain": drain,
        "target_per_second": TARGET_PER_SECOND,
        "target_met": drain["per_second"] >= TARGET_PER_SECOND
        and median(args.instances) >= TARGET_PER_SECOND,
    }
    checks = [m["check"]["exactly_once"] for r in rounds for m in r["instances"].values()]
    checks.append(drain["check"]["exactly_once"])
    print(
        f"median over {args.rounds} rounds of {args.round_size}: 1 instance {median(1):.0f}/s, "
        f"{args.instances} instances {median(args.instances):.0f}/s (x{scaling:.2f}); drain of {args.deliveries} "
        f"with {args.instances}: {drain['seconds']:.1f} s = {drain['per_second']:.0f}/s, "
        f"{drain['instance_cpu_ms_per_delivery']:.2f} ms instance CPU + {drain['server_cpu_ms_per_delivery']:.2f} ms "
        f"server CPU per delivery, requests by instance {drain['check']['requests_by_instance']}; "
        f"target {TARGET_PER_SECOND}/s {'met' if result['target_met'] else 'MISSED'}"
    )
    return result, checks


def main() -> None:
    """Run the rounds and the 50,000 drain; print and save the figures."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--deliveries", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--round-size", type=int, default=10_000)
    parser.add_argument("--naive-size", type=int, default=1_000, help="DuckDB only")
    parser.add_argument("--latency-ms", type=float, default=10.0)
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--engine", choices=("duckdb", "postgresql"), default="duckdb")
    parser.add_argument(
        "--instances", type=int, default=1, help="worker processes on one database; > 1 needs PostgreSQL"
    )
    parser.add_argument("--sink", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sink:
        asyncio.run(_serve_sink(args.port, args.latency_ms))
        return
    if args.instances < 1 or (args.engine == "duckdb" and args.instances > 1):
        parser.error("--instances N > 1 needs --engine postgresql (DuckDB admits one writing process)")

    load_before = round(os.getloadavg()[0], 2)
    with server(["bench.deliveries", "--sink", "--latency-ms", str(args.latency_ms)]) as sink:
        if args.engine == "duckdb":
            result, checks = run_duckdb(args, sink)
        else:
            result, checks = run_postgresql(args, sink)
    result = {
        "command": "python -m bench.deliveries "
        + f"--engine {args.engine} --instances {args.instances} --rounds {args.rounds} "
        + f"--round-size {args.round_size} --deliveries {args.deliveries} --latency-ms {args.latency_ms:g} "
        + f"--loop {args.loop}"
        + (f" --naive-size {args.naive_size}" if args.engine == "duckdb" else ""),
        # Other work on the machine shares the two cores: the 1-minute load average before and after.
        "load_average": {"before": load_before, "after": round(os.getloadavg()[0], 2)},
        "event_loop": args.loop,
        "sink_latency_ms": args.latency_ms,
        "concurrency_per_destination": CONCURRENCY,
        "exactly_once": all(checks),
    } | result
    name = "deliveries" if args.engine == "duckdb" else f"deliveries-{args.engine}-{args.instances}i"
    path = save(name, result)
    print(
        f"exactly once (every delivery one request, delivered, one attempt row): {result['exactly_once']}; "
        f"load average {result['load_average']}"
    )
    print(f"saved {path}")
    if not result["exactly_once"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
