"""The replica the dashboard reads: each published copy prepared once, and replaced in the background by newer ones.

The dashboard never opens the API's database: DuckDB lets one process hold a file for writing and then nobody
else may open it, so it reads the read-only replica the API publishes every ATTRIBUTION_REPLICA_SECONDS
(`ingest.reconcile.replica`). The publisher has already computed the heavy models into each copy
(`ingest.reconcile.models.MATERIALISED`), so the metrics, the coverage matrix and the funnel are short queries instead
of a fresh pass over every lead and delivery (bench/dashboard.py has the figures). Each copy is *prepared* once
(opened, its models loaded, its row counts read) into a `Snapshot`; newer copies are prepared in a background thread
while pages keep reading the previous one. `dashboard.data` holds one `ReplicaSource` per server and the queries.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

import duckdb
import pandas as pd

from ingest.core.clock import utcnow
from ingest.core.settings import Settings
from ingest.core.vocabulary import Destination
from ingest.reconcile.models import ModelParams
from ingest.reconcile.replica import Reader, ReaderUnavailable, file_identity, open_reader
from ingest.store.database import DatabaseLocked

T = TypeVar("T")
log = logging.getLogger(__name__)
REFRESH_CHECK_SECONDS = 1.0  # how often the watcher looks for a newer replica file
RETRY_AFTER_FAILURE_SECONDS = 10.0  # a copy that failed to prepare is tried again this much later


class NoReplica(Exception):
    """No replica to read yet: the message says what to start."""


@dataclass(frozen=True)
class Snapshot:
    """The replica copy a rerun reads: `key` identifies it for the caches."""

    key: str
    path: Path
    taken_at: datetime
    age_seconds: float
    params: ModelParams
    leads: int
    stripe_events: int
    deliveries: int
    prepare_seconds: float
    newer_pending: bool = False

    @property
    def is_empty(self) -> bool:
        """Nothing captured yet: no lead, no payment event, no delivery."""
        return self.leads == 0 and self.stripe_events == 0 and self.deliveries == 0

    @property
    def disabled_destinations(self) -> list[Destination]:
        """Destinations the publishing API had no endpoint for."""
        enabled = {
            Destination.MAILERLITE: self.params.mailerlite_enabled,
            Destination.CRM: self.params.crm_enabled,
            Destination.SGTM: self.params.sgtm_enabled,
            Destination.META: self.params.meta_enabled,
        }
        return [destination for destination in Destination if not enabled[destination]]


class _SharedLock:
    """Many queries side by side, or one swap of the reader they use."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._writing)
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._writing and self._readers == 0)
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()


@dataclass(frozen=True)
class _Prepared:
    """A reader over one replica copy with the heavy models materialised, and what it holds."""

    reader: Reader
    identity: tuple[int, int]
    snapshot: Snapshot


def plain(frame: pd.DataFrame) -> pd.DataFrame:
    """UUID values as text: Arrow (and so st.dataframe and CSV) would show them as raw bytes."""
    for column in frame.columns:
        if frame[column].dtype == object and frame[column].map(lambda value: isinstance(value, UUID)).any():
            frame[column] = frame[column].map(lambda value: str(value) if isinstance(value, UUID) else value)
    return frame


def prepare(settings: Settings) -> tuple[Reader, Snapshot]:
    """Open a reader on the current replica and read what it holds."""
    started = time.perf_counter()
    try:
        reader = open_reader(settings, "replica")
    except (ReaderUnavailable, DatabaseLocked, duckdb.IOException) as exc:
        # A model that fails to load is not "no data": that error propagates as it is.
        raise NoReplica(missing_message(settings, exc)) from None
    try:
        row = reader.conn.execute(
            "select (select count(*) from stg_leads), (select count(*) from stg_stripe_events), "
            "(select count(*) from stg_deliveries)"
        ).fetchone()
    except BaseException:
        reader.close()
        raise
    leads, events, deliveries = (int(value) for value in row) if row else (0, 0, 0)
    taken_at = reader.taken_at or utcnow()
    snapshot = Snapshot(
        key=f"{settings.attribution_replica_path}@{taken_at.isoformat()}",
        path=settings.attribution_replica_path,
        taken_at=taken_at,
        age_seconds=0.0,
        params=reader.params,
        leads=leads,
        stripe_events=events,
        deliveries=deliveries,
        prepare_seconds=time.perf_counter() - started,
    )
    return reader, snapshot


def missing_message(settings: Settings, error: BaseException | None = None) -> str:
    """What to start when there is no replica to read."""
    detail = f" ({error})" if error is not None else ""
    return (
        f"No replica at {settings.attribution_replica_path} yet{detail}. The API publishes one every "
        f"{settings.attribution_replica_seconds:g} s once it runs: start it with `attribution serve` "
        "(or run `attribution demo` for a seeded sandbox)."
    )


class ReplicaSource:
    """The prepared replica every session of the server reads, replaced in the background by newer copies.

    The first use prepares the current copy while the caller waits; after that a watcher thread looks for a newer
    file every REFRESH_CHECK_SECONDS and prepares it aside, so pages keep answering from the previous copy until
    the new one is ready (they say so). It waits at least as long as the last preparation took before starting
    the next one, so on a large database it never spends more than half its time preparing.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.path = settings.attribution_replica_path
        self._current: _Prepared | None = None
        self._lock = _SharedLock()
        self._first = threading.Lock()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._newer_pending = False
        self.failures = 0

    def snapshot(self) -> Snapshot:
        """The copy pages read now; NoReplica when none has been published."""
        current = self._current
        if current is None:
            with self._first:
                if self._current is None:
                    self._install(self._prepare_current())
                    self._start_watcher()
                current = self._current
        assert current is not None
        age = (utcnow() - current.snapshot.taken_at).total_seconds()
        return replace(current.snapshot, age_seconds=age, newer_pending=self._newer_pending)

    def run(self, query: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        """Run `query` on a cursor of the current copy."""
        with self._lock.shared():
            if self._current is None:
                raise NoReplica(missing_message(self.settings))
            cursor = self._current.reader.cursor()
            try:
                return query(cursor)
            finally:
                cursor.close()

    def frame(self, sql: str, params: list[Any] | dict[str, Any] | None = None) -> pd.DataFrame:
        """The result of one parameterised query as a DataFrame (UUIDs as text)."""
        return plain(self.run(lambda cursor: cursor.execute(sql, params or []).df()))

    def close(self) -> None:
        """Stop watching and close the reader."""
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join()
            self._watcher = None
        self._install(None)

    def _prepare_current(self) -> _Prepared:
        identity = file_identity(self.path)
        reader, snapshot = prepare(self.settings)
        # The identity read before opening: if the file was replaced meanwhile, the watcher prepares it again.
        return _Prepared(reader, identity or (0, 0), snapshot)

    def _install(self, prepared: _Prepared | None) -> None:
        with self._lock.exclusive():
            previous, self._current = self._current, prepared
        if previous is not None:
            previous.reader.close()

    def _start_watcher(self) -> None:
        self._watcher = threading.Thread(target=self._watch, name="dashboard-replica-watcher", daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        pause = REFRESH_CHECK_SECONDS
        while not self._stop.wait(pause):
            current = self._current
            identity = file_identity(self.path)
            pause = REFRESH_CHECK_SECONDS
            if identity is None or current is None or identity == current.identity:
                continue  # nothing newer (a vanished replica keeps the last copy on screen, its age shown)
            self._newer_pending = True
            try:
                prepared = self._prepare_current()
            except (NoReplica, duckdb.Error) as exc:
                self.failures += 1
                log.warning(
                    "replica preparation failed", extra={"replica": str(self.path), "error": repr(exc)}
                )
                pause = RETRY_AFTER_FAILURE_SECONDS
                continue
            finally:
                self._newer_pending = False
            self._install(prepared)
            pause = max(REFRESH_CHECK_SECONDS, prepared.snapshot.prepare_seconds)
