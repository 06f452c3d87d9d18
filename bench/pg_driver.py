"""Which PostgreSQL driver for the operational store: asyncpg or psycopg 3, measured on our hot path.

The hot path is lead capture: one lead row, one consent-ledger row and three outbox rows, committed before the
answer. 32 concurrent callers (as the lead benchmark's wrk connections) write synthetic leads for `--seconds`, in
two designs per driver:
- `per-request`: each caller runs its own transaction on a pooled connection (a commit's fsync each);
- `grouped`: callers hand their lead to one writer task that commits up to 64 at once, each table in one
  `insert ... select * from unnest(...)` statement (the group commit the DuckDB writer already does).
Reported per design: leads/s, client CPU ms per lead (this process) and server CPU ms per lead (the postmaster
and its backends, from /proc), medians of `--rounds`. The server is a throwaway cluster with fsync on.

    python -m bench.pg_driver --rounds 3 --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
import psycopg_pool

from bench.common import cpu_seconds, load_average, save
from sandbox.postgres import PostgresCluster

CALLERS = 32
GROUP_MAX = 64
LEAD_COLUMNS = {
    "event_id": "uuid primary key", "user_session_id": "uuid not null", "full_name": "text not null",
    "email": "text not null", "phone": "text", "utm_source": "text", "utm_medium": "text", "utm_campaign": "text",
    "utm_content": "text", "utm_term": "text", "landing_page": "text", "referrer": "text", "ga_client_id": "text",
    "lead_created_at": "timestamp", "checkout_started_at": "timestamp", "marketing_consent": "boolean not null",
    "analytics_consent": "boolean not null", "consent_method": "text not null", "consent_version": "text not null",
    "consent_version_current": "boolean not null", "consent_at": "timestamp not null", "consent_ip": "text",
    "consent_user_agent": "text", "status": "text not null", "received_at": "timestamp not null",
    "updated_at": "timestamp not null",
}  # fmt: skip
LEDGER_COLUMNS = {
    "consent_id": "uuid not null", "user_session_id": "uuid not null", "event_id": "uuid",
    "marketing_consent": "boolean not null", "analytics_consent": "boolean not null",
    "consent_method": "text not null", "consent_version": "text not null", "consent_version_current": "boolean not null",
    "source": "text not null", "recorded_at": "timestamp not null", "ip": "text", "user_agent": "text",
}  # fmt: skip
DELIVERY_COLUMNS = {
    "delivery_id": "uuid primary key", "event_id": "uuid", "user_session_id": "uuid", "destination": "text not null",
    "kind": "text not null", "purpose": "text not null", "idempotency_key": "text not null unique",
    "payload": "jsonb", "status": "text not null", "reason": "text", "next_attempt_at": "timestamp",
    "created_at": "timestamp not null", "updated_at": "timestamp not null",
}  # fmt: skip
TABLES = {"leads": LEAD_COLUMNS, "consent_ledger": LEDGER_COLUMNS, "deliveries": DELIVERY_COLUMNS}
Row = dict[str, Any]


def _types(columns: dict[str, str]) -> list[str]:
    return [spec.split()[0] for spec in columns.values()]


def synthetic_lead() -> dict[str, list[Row]]:
    """The five rows one lead capture writes (synthetic data)."""
    now = datetime.now(UTC).replace(tzinfo=None)
    event_id, session = uuid.uuid4(), uuid.uuid4()
    lead: Row = dict.fromkeys(LEAD_COLUMNS)
    lead |= {
        "event_id": event_id, "user_session_id": session, "full_name": "Ana Teste",
        "email": f"{event_id.hex[:12]}@example.com", "phone": "+351912345678", "utm_source": "instagram",
        "utm_medium": "social", "utm_campaign": "lisbon-launch", "landing_page": "https://shop.example/",
        "lead_created_at": now, "marketing_consent": True, "analytics_consent": True, "consent_method": "modal",
        "consent_version": "1.0", "consent_version_current": True, "consent_at": now, "consent_ip": "203.0.113.7",
        "consent_user_agent": "bench", "status": "lead", "received_at": now, "updated_at": now,
    }  # fmt: skip
    ledger: Row = {name: lead.get(name) for name in LEDGER_COLUMNS} | {
        "consent_id": uuid.uuid4(), "source": "lead", "recorded_at": now, "ip": "203.0.113.7", "user_agent": "bench",
    }  # fmt: skip
    deliveries = [
        {
            "delivery_id": uuid.uuid4(),
            "event_id": event_id,
            "user_session_id": session,
            "destination": dest,
            "kind": kind,
            "purpose": purpose,
            "idempotency_key": f"{event_id}:{dest}:{kind}",
            "payload": "{}",
            "status": "pending",
            "reason": None,
            "next_attempt_at": now,
            "created_at": now,
            "updated_at": now,
        }
        for dest, kind, purpose in (
            ("mailerlite", "subscriber_upsert", "marketing"),
            ("crm", "contact_upsert", "contact"),
            ("sgtm", "generate_lead", "analytics"),
        )
    ]
    return {"leads": [lead], "consent_ledger": [ledger], "deliveries": deliveries}


def _merge(leads: list[dict[str, list[Row]]]) -> dict[str, list[Row]]:
    return {table: [row for lead in leads for row in lead[table]] for table in TABLES}


def _single_sql(table: str, style: str) -> str:
    names = list(TABLES[table])
    marks = [f"${n}" for n in range(1, len(names) + 1)] if style == "asyncpg" else ["%s"] * len(names)
    return f"insert into {table} ({', '.join(names)}) values ({', '.join(marks)})"


def _unnest_sql(table: str, style: str) -> str:
    names, types = list(TABLES[table]), _types(TABLES[table])
    if style == "asyncpg":
        arrays = [f"${n}::{kind}[]" for n, kind in enumerate(types, start=1)]
    else:
        arrays = [f"%s::{kind}[]" for kind in types]
    return f"insert into {table} ({', '.join(names)}) select * from unnest({', '.join(arrays)})"


def _columns(rows: list[Row], table: str) -> list[list[Any]]:
    return [[row[name] for row in rows] for name in TABLES[table]]


class Grouper:
    """Group commit: callers queue a lead and wait; one task commits up to GROUP_MAX per transaction."""

    def __init__(self, commit: Callable[[dict[str, list[Row]]], Awaitable[None]]) -> None:
        self._commit = commit
        self._queue: asyncio.Queue[tuple[dict[str, list[Row]], asyncio.Future[None]]] = asyncio.Queue()
        self._task = asyncio.create_task(self._run())

    async def write(self, lead: dict[str, list[Row]]) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self._queue.put((lead, future))
        await future

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < GROUP_MAX and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await self._commit(_merge([lead for lead, _ in batch]))
            for _, future in batch:
                future.set_result(None)

    def close(self) -> None:
        self._task.cancel()


async def _asyncpg_design(
    url: str, grouped: bool
) -> tuple[Callable[[dict[str, list[Row]]], Awaitable[None]], Any]:
    pool = await asyncpg.create_pool(
        url, min_size=1 if grouped else CALLERS, max_size=1 if grouped else CALLERS
    )

    async def commit(rows: dict[str, list[Row]]) -> None:
        async with pool.acquire() as conn, conn.transaction():
            for table, table_rows in rows.items():
                if grouped:
                    await conn.execute(_unnest_sql(table, "asyncpg"), *_columns(table_rows, table))
                else:
                    await conn.executemany(
                        _single_sql(table, "asyncpg"), [list(row.values()) for row in table_rows]
                    )

    return commit, pool


async def _psycopg_design(
    url: str, grouped: bool
) -> tuple[Callable[[dict[str, list[Row]]], Awaitable[None]], Any]:
    size = 1 if grouped else CALLERS
    pool = psycopg_pool.AsyncConnectionPool(url, min_size=size, max_size=size, open=False)
    await pool.open(wait=True)

    async def commit(rows: dict[str, list[Row]]) -> None:
        async with pool.connection() as conn, conn.transaction(), conn.cursor() as cursor:
            for table, table_rows in rows.items():
                if grouped:
                    await cursor.execute(_unnest_sql(table, "psycopg"), _columns(table_rows, table))
                else:
                    await cursor.executemany(
                        _single_sql(table, "psycopg"), [list(row.values()) for row in table_rows]
                    )

    return commit, pool


async def _run_design(cluster: PostgresCluster, driver: str, grouped: bool, seconds: float) -> Row:
    url = cluster.url
    make = _asyncpg_design if driver == "asyncpg" else _psycopg_design
    commit, pool = await make(url, grouped)
    grouper = Grouper(commit) if grouped else None
    write = grouper.write if grouper is not None else commit
    done = 0
    stop_at = time.monotonic() + seconds

    async def caller() -> None:
        nonlocal done
        while time.monotonic() < stop_at:
            lead = synthetic_lead()
            await write(lead)
            done += 1

    server_pids = cluster.server_pids()  # with the pool open: its backends are among them
    server_before = sum(cpu_seconds(pid) or 0.0 for pid in server_pids)
    client_before, started = time.process_time(), time.monotonic()
    await asyncio.gather(*(caller() for _ in range(CALLERS)))
    elapsed, client = time.monotonic() - started, time.process_time() - client_before
    server = sum(cpu_seconds(pid) or 0.0 for pid in server_pids) - server_before
    if grouper is not None:
        grouper.close()
    await pool.close()
    return {
        "leads_per_second": done / elapsed,
        "client_cpu_ms_per_lead": 1000 * client / done,
        "server_cpu_ms_per_lead": 1000 * server / done,
    }


async def _create_tables(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        for table, columns in TABLES.items():
            await conn.execute(f"drop table if exists {table}")
            await conn.execute(f"create table {table} ({', '.join(f'{n} {s}' for n, s in columns.items())})")
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    runs: dict[str, list[Row]] = {}
    with PostgresCluster(durable=True) as cluster:
        for round_number in range(args.rounds):
            # Alternate the order each round, so neither driver always runs on a warmer server.
            designs = [(d, g) for d in ("asyncpg", "psycopg") for g in (False, True)]
            for driver, grouped in designs if round_number % 2 == 0 else designs[::-1]:
                asyncio.run(_create_tables(cluster.url))
                result = asyncio.run(_run_design(cluster, driver, grouped, args.seconds))
                name = f"{driver} {'grouped' if grouped else 'per-request'}"
                runs.setdefault(name, []).append(result)
                print(
                    f"round {round_number + 1} {name}: "
                    + ", ".join(f"{k} {v:.3f}" for k, v in result.items())
                )
    medians = {
        name: {key: round(statistics.median(r[key] for r in results), 3) for key in results[0]}
        for name, results in runs.items()
    }
    for name, figures in medians.items():
        print(f"median {name}: {figures}")
    command = f"python -m bench.pg_driver --rounds {args.rounds} --seconds {args.seconds:g}"
    path = save("pg_driver", {"command": command, "callers": CALLERS, "group_max": GROUP_MAX, "medians": medians,
                              "runs": runs, "load_average_at_end": load_average()})  # fmt: skip
    print(f"saved {path}")


if __name__ == "__main__":
    main()
