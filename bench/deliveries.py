"""Delivery worker throughput: drain queued deliveries to a loopback sink that answers after 10 ms.

    .venv/bin/python -m bench.deliveries [--deliveries 50000] [--rounds 3] [--round-size 10000] [--latency-ms 10]

Each round seeds a fresh DuckDB file with `--round-size` leads and one pending delivery each (spread over
MailerLite, the CRM and sGTM, all pointed at the sink, MailerLite's 120/min pacing off), starts the real
`DeliveryWorker` and times it until every delivery is `delivered` with its attempt row written. In the same run,
two baselines on the same sink: the HTTP ceiling (the same requests and concurrency, no database at all) and
the naive outbox (claim one row, send, record it, one transaction each, same concurrency). Then one drain of
`--deliveries` (50,000) queued deliveries. Target: >= 1,000 deliveries/s.

Everything runs on uvloop, the event loop `attribution serve` runs the worker on (uvicorn[standard] picks it);
`--loop asyncio` measures on the standard library's loop instead.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import httpx
import uvloop

from bench.common import save, server
from ingest.core.clock import utcnow
from ingest.core.settings import Settings
from ingest.core.vocabulary import Destination
from ingest.outbox.delivery import deliver_one, settle
from ingest.outbox.destinations import build_clients
from ingest.outbox.destinations.transport import OutgoingRequest
from ingest.outbox.leases import ClaimRequest, Flush, claim_deliveries, record_deliveries
from ingest.outbox.worker import DeliveryWorker
from ingest.store.database import Database, connect, migrate
from ingest.store.writer import Writer

TARGET_PER_SECOND = 1000
CONCURRENCY = 16  # per destination, so 48 requests in flight at most
_ANSWER = b'{"contact_id":"ct_bench","data":{"id":"100000000000000001"}}'
_FIELDS_ANSWER = b'{"data":[],"links":{}}'  # no fields listed: each create answers 200


# --- the sink: a minimal HTTP/1.1 keep-alive server answering every request after a fixed delay -----------


class _Sink(asyncio.Protocol):
    latency = 0.01
    answered = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            head = self.buffer[:end].lower()
            length = 0
            for line in head.split(b"\r\n"):
                if line.startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            if len(self.buffer) < end + 4 + length:
                return
            path = head.split(b" ", 2)[1]
            self.buffer = self.buffer[end + 4 + length :]
            if path == b"/count":
                body = json.dumps({"answered": _Sink.answered}).encode()
            elif path.startswith(b"/api/fields"):  # the worker's MailerLite custom-field check at start
                body = _FIELDS_ANSWER
            else:
                body = _ANSWER
            if path not in (b"/count", b"/readyz") and not path.startswith(b"/api/fields"):
                _Sink.answered += 1
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


# --- seeding ------------------------------------------------------------------------------------------------


def _settings(db_path: Path, sink: str) -> Settings:
    return Settings(  # type: ignore[call-arg]
        _env_file=None,
        attribution_db_path=db_path,
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


def seed(db_path: Path, count: int) -> None:
    """`count` leads with their consent rows and one pending delivery each, in three statements."""
    conn = connect(db_path)
    migrate(conn)
    now = utcnow()
    conn.execute(
        """
        insert into leads (event_id, user_session_id, full_name, email, phone, utm_source, utm_medium,
            utm_campaign, lead_created_at, marketing_consent, analytics_consent, consent_method, consent_version,
            consent_version_current, consent_at, consent_ip, status, received_at, updated_at)
        select uuid(), uuid(), 'Bench Buyer ' || i, 'buyer' || i || '@example.com', '+351912' || lpad(i::varchar, 6, '0'),
            'instagram', 'social', 'bench', ?, true, true, 'modal', '1.0', true, ?, '203.0.113.7', 'lead', ?, ?
        from range(?) t(i)
        """,
        [now, now, now, now, count],
    )
    conn.execute(
        """
        insert into consent_ledger (consent_id, user_session_id, event_id, marketing_consent, analytics_consent,
            consent_method, consent_version, consent_version_current, source, recorded_at, ip, user_agent)
        select uuid(), user_session_id, event_id, true, true, 'modal', '1.0', true,
            'lead', ?, '203.0.113.7', 'bench' from leads
        """,
        [now],
    )
    conn.execute(
        """
        insert into deliveries (delivery_id, event_id, user_session_id, destination, kind, purpose,
            idempotency_key, payload, status, next_attempt_at, created_at, updated_at)
        select uuid(), event_id, user_session_id, d.destination, d.kind, d.purpose,
            event_id::varchar || ':' || d.destination || ':' || d.kind, '{}', 'pending', ?, ?, ?
        from (select *, row_number() over () % 3 as slot from leads) l
        join (values (0, 'mailerlite', 'subscriber_upsert', 'marketing'), (1, 'crm', 'contact_upsert', 'contact'),
                     (2, 'sgtm', 'generate_lead', 'analytics')) d(slot, destination, kind, purpose)
          on d.slot = l.slot
        """,
        [now, now, now],
    )
    conn.execute("checkpoint")
    conn.close()


def _delivered(database: Database) -> int:
    row = database.read(
        lambda c: c.execute("select count(*) from deliveries where status = 'delivered'").fetchone()
    )
    return int(row[0]) if row else 0


def _attempts(database: Database) -> int:
    row = database.read(lambda c: c.execute("select count(*) from delivery_attempts").fetchone())
    return int(row[0]) if row else 0


# --- the three measurements ---------------------------------------------------------------------------------


async def drain_with_worker(sink: str, count: int) -> dict[str, float]:
    """Seed `count` deliveries and time the real worker until every one is delivered."""
    with tempfile.TemporaryDirectory() as folder:
        db_path = Path(folder) / "bench.duckdb"
        seed(db_path, count)
        settings = _settings(db_path, sink)
        database = Database.open(db_path)
        worker = DeliveryWorker(database, settings)
        started, cpu_started = time.perf_counter(), time.process_time()
        await worker.start()
        # Counted off the event loop, so the count does not slow the worker it measures.
        while await asyncio.to_thread(_delivered, database) < count:
            await asyncio.sleep(0.1)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        await worker.stop()
        attempts = _attempts(database)
        commits = database.writer.batches_committed
        database.close()
    assert attempts == count, f"{attempts} attempt rows for {count} deliveries"
    return {
        "deliveries": count,
        "seconds": elapsed,
        "per_second": count / elapsed,
        "commits": commits,
        # CPU of this process (event loop, writer, DuckDB threads) per delivery: what the work costs,
        # whatever else the machine is doing at the time.
        "cpu_ms_per_delivery": cpu * 1000 / count,
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
        seed(db_path, count)
        settings = _settings(db_path, sink)
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


def _runner(loop: str) -> Callable[[Coroutine[Any, Any, dict[str, float]]], dict[str, float]]:
    return uvloop.run if loop == "uvloop" else asyncio.run


def main() -> None:
    """Run the rounds and the 50,000 drain; print and save the figures."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--deliveries", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--round-size", type=int, default=10_000)
    parser.add_argument("--naive-size", type=int, default=1_000)
    parser.add_argument("--latency-ms", type=float, default=10.0)
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--sink", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sink:
        asyncio.run(_serve_sink(args.port, args.latency_ms))
        return

    run = _runner(args.loop)
    load_before = round(os.getloadavg()[0], 2)
    with server(["bench.deliveries", "--sink", "--latency-ms", str(args.latency_ms)]) as sink:
        rounds: list[dict[str, Any]] = []
        for number in range(1, args.rounds + 1):
            ceiling = run(http_ceiling(sink, args.round_size))
            naive = run(naive_outbox(sink, args.naive_size))
            worker = run(drain_with_worker(sink, args.round_size))
            rounds.append({"http_ceiling": ceiling, "naive_outbox": naive, "worker": worker})
            print(
                f"round {number}: worker {worker['per_second']:.0f}/s, naive outbox {naive['per_second']:.0f}/s, "
                f"HTTP ceiling {ceiling['per_second']:.0f}/s",
                flush=True,
            )
        drain = run(drain_with_worker(sink, args.deliveries))
        answered = httpx.get(f"{sink}/count", timeout=5).json()["answered"]

    def median(kind: str) -> float:
        return float(statistics.median(r[kind]["per_second"] for r in rounds))

    result = {
        # Other work on the machine shares the two cores: the 1-minute load average before and after.
        "load_average": {"before": load_before, "after": round(os.getloadavg()[0], 2)},
        "event_loop": args.loop,
        "sink_latency_ms": args.latency_ms,
        "concurrency_per_destination": CONCURRENCY,
        "rounds": rounds,
        "median_per_second": {kind: median(kind) for kind in ("worker", "naive_outbox", "http_ceiling")},
        "worker_vs_naive": median("worker") / median("naive_outbox"),
        "worker_vs_http_ceiling": median("worker") / median("http_ceiling"),
        "drain": drain,
        "sink_answered": answered,
        "target_per_second": TARGET_PER_SECOND,
        "target_met": drain["per_second"] >= TARGET_PER_SECOND and median("worker") >= TARGET_PER_SECOND,
    }
    path = save("deliveries", result)
    print(
        f"median over {args.rounds} rounds of {args.round_size}: worker {median('worker'):.0f}/s "
        f"(x{result['worker_vs_naive']:.1f} the naive outbox, {result['worker_vs_http_ceiling']:.0%} of the HTTP "
        f"ceiling); drain of {args.deliveries}: {drain['seconds']:.1f} s = {drain['per_second']:.0f}/s with "
        f"{drain['commits']} commits, {drain['cpu_ms_per_delivery']:.2f} ms CPU per delivery; load average "
        f"{result['load_average']}; target {TARGET_PER_SECOND}/s {'met' if result['target_met'] else 'MISSED'}"
    )
    print(f"saved {path}")


if __name__ == "__main__":
    main()
