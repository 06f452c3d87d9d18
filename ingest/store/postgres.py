"""The PostgreSQL operational store: connecting with asyncpg, and versioned migrations any number of instances
may run at the same moment.

asyncpg rather than psycopg 3: on our hot path (a lead and its four rows, 32 callers, grouped commits through
`unnest` arrays) it spends about half the client CPU per lead (bench/pg_driver.py; README "PostgreSQL").
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

import asyncpg

from ingest.core.clock import utcnow
from ingest.store.database import available_migrations
from ingest.store.writer import StoreUnavailable

log = logging.getLogger(__name__)

# The advisory lock every instance takes to migrate: the first applies what is missing, the others wait for it and
# then find nothing left to do. Any constant works as long as every instance uses the same.
MIGRATION_LOCK_KEY = 0x61747472  # "attr"
CONNECT_TIMEOUT_SECONDS = 10.0


def describe(url: str) -> str:
    """A URL as it may be shown and logged: host, port and database, never the user's password."""
    parts = urlsplit(url)
    return f"{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path or '/'}"


async def connect(url: str) -> asyncpg.Connection:
    """One connection; StoreUnavailable, naming the server but not the password, when it cannot be had."""
    try:
        return await asyncpg.connect(url, timeout=CONNECT_TIMEOUT_SECONDS)
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise StoreUnavailable(
            f"cannot connect to PostgreSQL at {describe(url)}: {type(exc).__name__}: {exc}"
        ) from exc


async def migrate(url: str) -> list[str]:
    """Apply the PostgreSQL migrations not yet applied, each in its own transaction; return their names."""
    conn = await connect(url)
    applied: list[str] = []
    try:
        await conn.execute("select pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
        try:
            await conn.execute(
                "create table if not exists schema_migrations ("
                "version integer primary key, name text not null, applied_at timestamp not null)"
            )
            done = {row["version"] for row in await conn.fetch("select version from schema_migrations")}
            for version, name, sql in available_migrations("postgresql"):
                if version in done:
                    continue
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute(
                        "insert into schema_migrations values ($1, $2, $3)", version, name, utcnow()
                    )
                log.info("migration applied", extra={"migration": name, "engine": "postgresql"})
                applied.append(name)
        finally:
            await conn.execute("select pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
    finally:
        await conn.close()
    return applied
