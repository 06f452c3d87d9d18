"""The warehouse on PostgreSQL: an incremental round against a full copy, its staleness and its cost to ingest,
at 100k-1M leads.

    .venv/bin/python -m bench.warehouse [--leads 100000] [--changes 1000] [--rounds 3] [--data-dir DIR] [--reuse]
        [--ingest-seconds 60] [--replica-seconds 5] [--connections 32]

1. Writes (or, with --reuse, reuses) a bulk DuckDB database of `--leads` leads (sandbox.bulk, ~3.7 deliveries a
   lead) and moves it into a throwaway PostgreSQL cluster (fsync on) with `db copy`'s copy_to_postgres, timed.
2. Round 1 of a Warehouse is the full copy: everything read from PostgreSQL through COPY, then published (the base
   file copied, the heavy models materialised, the copy put in place).
3. `--rounds` times: `--changes` new leads (each with its ledger row and four deliveries) and as many updated
   deliveries, committed in PostgreSQL, then one incremental round; reported: rows read, the read and the publish
   time. Then one `--full` round over the same, grown data for comparison.
4. For reference: `report --source database` on PostgreSQL (a fresh copy, the models as views), and the embedded
   publisher's copy of the original DuckDB file (what the API does on DuckDB).
5. Staleness and the cost to ingest (`--ingest-seconds` N, 0 skips it), on the same cluster, as deployed:
   `attribution serve --workers 2` on it (its delivery worker on; the synthetic history's due deliveries, to
   destinations this run does not configure, are drained first, so the outbox is idle while it is measured), then
   - wrk (bench/lead.lua, `--connections`) for N s with no warehouse process running: the baseline;
   - `attribution warehouse` started as a process of its own (ATTRIBUTION_REPLICA_SECONDS = `--replica-seconds`;
     its base is the one the rounds above left, so it goes on incrementally); once it has published, wrk again for
     N s, while a probe posts PROBES_PER_SECOND leads at a steady rate and a watcher opens each new replica
     read-only as the dashboard and `report` do (`replica.reading`) to see when each probe lead is visible;
   - N s more with the probe alone (a light load), then until every acknowledged probe lead is visible;
   - the warehouse process stopped, wrk for N s again: the second baseline (the two bracket the run with it).
   Staleness: from the probe lead's 2xx to the moment the watcher saw a replica holding it, median / p90 / max,
   under load and light. Ingest cost: req/s and p99 with the warehouse running over the mean of the two stopped
   runs (ratios). Checked: every lead answered 2xx is in PostgreSQL, and the last replica the warehouse process
   published holds each lead of PostgreSQL exactly once.
Results: bench/results/warehouse.json (medians of the incremental rounds; `staleness`, `ingest_cost`).
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import httpx
import psycopg

from bench.common import ROOT, cpu_seconds, load_average, run_wrk, save, server
from ingest.core.settings import Settings
from ingest.reconcile.models import success_metrics
from ingest.reconcile.postgres_tables import copy_postgres
from ingest.reconcile.replica import file_identity, publish_replica, reading
from ingest.reconcile.warehouse import RoundResult, Warehouse
from ingest.store.database import Database
from ingest.store.transfer import copy_to_postgres
from sandbox.bulk import BulkSpec, generate_bulk
from sandbox.postgres import PostgresCluster
from sandbox.scenario import GroundTruth

SCRIPT = Path(__file__).with_name("lead.lua")
SERVE_WORKERS = 2
PROBES_PER_SECOND = 2.0  # the staleness sample: leads posted at this steady rate beside wrk's
WATCH_SECONDS = 0.02  # how often the watcher looks for a new replica: the staleness figures' resolution
DRAIN_TIMEOUT = 1800.0  # the synthetic history's due deliveries, recorded as disabled before the measurement
PUBLISH_TIMEOUT = 1800.0  # the warehouse process's first round, and the last probe lead becoming visible


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


def _probe_lead(event_id: str) -> dict[str, Any]:
    """The lead bench/lead.lua posts (synthetic: an example.com address, a fixed test number)."""
    return {
        "event_id": event_id,
        "full_name": "Bench Probe",
        "email": f"probe.{event_id}@example.com",
        "phone": "+351912345678",
        "utm_source": "bench",
        "utm_medium": "cpc",
        "utm_campaign": "staleness-probe",
        "marketing_consent": True,
        "analytics_consent": True,
        "consent_method": "modal",
        "consent_version": "1.0",
    }


class _Probe(threading.Thread):
    """Posts a lead every 1/PROBES_PER_SECOND s (on a fixed schedule, not after the previous answer's time) and
    records when each was sent and when its 2xx came back (monotonic seconds)."""

    def __init__(self, url: str) -> None:
        super().__init__(name="staleness-probe", daemon=True)
        self.url = url
        self.sent: dict[str, float] = {}
        self.acked: dict[str, float] = {}
        self.refused = 0  # answered, not 2xx
        self.failed = 0  # no answer
        self._halt = threading.Event()
        self._lock = threading.Lock()

    def run(self) -> None:
        interval = 1.0 / PROBES_PER_SECOND
        with httpx.Client(timeout=30) as client:
            due = time.monotonic()
            while not self._halt.is_set():
                event_id = str(uuid.uuid4())
                with self._lock:
                    self.sent[event_id] = time.monotonic()
                try:
                    response = client.post(self.url, json=_probe_lead(event_id))
                except httpx.HTTPError:
                    self.failed += 1
                else:
                    if response.is_success:
                        self.acked[event_id] = time.monotonic()
                    else:
                        self.refused += 1
                due += interval
                self._halt.wait(max(0.0, due - time.monotonic()))

    def ids(self) -> list[str]:
        """Every probe lead sent so far (some perhaps still unanswered)."""
        with self._lock:
            return list(self.sent)

    def stop(self) -> None:
        self._halt.set()
        self.join(60)


class _Watcher(threading.Thread):
    """Notices each new replica file (every WATCH_SECONDS), opens it read-only as the dashboard and `report` do,
    and records which probe leads it holds: a lead is visible from the moment its first copy was noticed."""

    def __init__(self, settings: Settings, probe: _Probe) -> None:
        super().__init__(name="replica-watcher", daemon=True)
        self.settings = settings
        self.probe = probe
        self.seen: dict[str, float] = {}
        self.copies: list[dict[str, Any]] = []  # noticed (monotonic), the round's snapshot-to-publish seconds
        self.open_seconds: list[float] = []
        self.errors = 0
        self._halt = threading.Event()
        self._last = file_identity(settings.attribution_replica_path)

    def run(self) -> None:
        while not self._halt.is_set():
            identity = file_identity(self.settings.attribution_replica_path)
            if identity is not None and identity != self._last:
                noticed = time.monotonic()
                try:
                    self._look(noticed)
                except (duckdb.Error, OSError, ValueError):  # replaced as it was opened: look again
                    self.errors += 1
                else:
                    self._last = identity
            self._halt.wait(WATCH_SECONDS)

    def _look(self, noticed: float) -> None:
        wanted = [event_id for event_id in self.probe.ids() if event_id not in self.seen]
        with reading(self.settings, "replica") as reader:
            found = reader.conn.execute(
                "select cast(event_id as varchar) from leads "
                "where cast(event_id as varchar) in (select unnest(?::varchar[]))",
                [wanted],
            ).fetchall()
            info = reader.info
        self.open_seconds.append(time.monotonic() - noticed)
        for (event_id,) in found:
            self.seen[str(event_id)] = noticed
        self.copies.append(
            {
                "noticed": noticed,
                "round_seconds": (info.published_at - info.taken_at).total_seconds() if info else None,
            }
        )

    def stop(self) -> None:
        self._halt.set()
        self.join(60)


@contextmanager
def _warehouse_process(env: dict[str, str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`attribution warehouse` as its own process (as deployed); its lines go to `log_path`; stopped as a service
    manager does (SIGTERM: the round in progress is abandoned)."""
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "cli", "warehouse"],
            env={**os.environ, **env, "COLUMNS": "240"},
            cwd=ROOT,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        try:
            yield process
        except BaseException:
            print(f"the warehouse process's last lines ({log_path}):\n{log_path.read_text()[-2000:]}")
            raise
        finally:
            process.terminate()
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


def _count(url: str, sql: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(sql).fetchone()
    return int(row[0]) if row else 0


_DUE = (
    "select count(*) from deliveries where status in ('pending', 'retrying') and next_attempt_at <= now() "
    "and (claimed_until is null or claimed_until < now())"
)


def _wait(what: str, done: Any, timeout: float, process: subprocess.Popen[bytes] | None = None) -> float:
    """Poll `done()` until true; return the seconds it took (RuntimeError past `timeout` or if `process` died)."""
    started = time.monotonic()
    while not done():
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with {process.returncode}")
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.1)
    return time.monotonic() - started


def _lags(probe: _Probe, watcher: _Watcher, ids: list[str]) -> dict[str, Any]:
    """Acknowledged → visible, in seconds, over the probe leads `ids` (negative: visible before its answer)."""
    acked = [event_id for event_id in ids if event_id in probe.acked]
    lags = sorted(watcher.seen[i] - probe.acked[i] for i in acked if i in watcher.seen)
    if not lags:
        return {"leads_acknowledged": len(acked), "leads_visible": 0}
    return {
        "leads_acknowledged": len(acked),
        "leads_visible": len(lags),
        "median_seconds": round(statistics.median(lags), 3),
        "p90_seconds": round(lags[min(len(lags) - 1, int(0.9 * len(lags)))], 3),
        "max_seconds": round(lags[-1], 3),
        "min_seconds": round(lags[0], 3),
    }


def _copies(watcher: _Watcher, start: float, end: float) -> dict[str, Any]:
    """The replicas published between `start` and `end`: how many, how far apart, each round's duration."""
    copies = [copy for copy in watcher.copies if start <= copy["noticed"] < end]
    gaps = [b["noticed"] - a["noticed"] for a, b in itertools.pairwise(copies)]
    rounds = [copy["round_seconds"] for copy in copies if copy["round_seconds"] is not None]
    return {
        "replicas_published": len(copies),
        "publish_interval_median_seconds": round(statistics.median(gaps), 3) if gaps else None,
        "round_median_seconds": round(statistics.median(rounds), 3) if rounds else None,
    }


def _ingest_phase(
    url: str, data_dir: Path, replica: Path, seconds: int, replica_seconds: float, connections: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Staleness and the cost to ingest (step 5 of the module doc): the `staleness` and `ingest_cost` results."""
    metrics = data_dir / "metrics"
    shutil.rmtree(metrics, ignore_errors=True)
    metrics.mkdir()
    env = {
        "ATTRIBUTION_DATABASE_URL": url,
        "ATTRIBUTION_REPLICA_PATH": str(replica),
        "ATTRIBUTION_REPLICA_SECONDS": str(replica_seconds),
        "ATTRIBUTION_LOG_LEVEL": "WARNING",
    }
    reader_settings = Settings(_env_file=None, attribution_database_url=url, attribution_replica_path=replica)
    leads_before = _count(url, "select count(*) from leads")
    due = _count(url, _DUE)
    serve = ["cli", "serve", "--workers", str(SERVE_WORKERS)]
    serve_env = env | {
        "ATTRIBUTION_RATE_LIMIT_PER_MINUTE": "0",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics),
    }
    with server(serve, serve_env) as base:
        drained = _wait("draining the due deliveries", lambda: _count(url, _DUE) == 0, DRAIN_TIMEOUT)
        print(f"ingest: {due:,} due deliveries of the history recorded as disabled in {drained:.1f} s")
        stopped = run_wrk(
            f"{base}/v1/leads", SCRIPT, connections=connections, seconds=seconds, server_cpu=True
        )
        print(f"ingest, warehouse stopped: {stopped['rps']:.0f} req/s, p99 {stopped['p99_ms']:.1f} ms")
        log_path = data_dir / "warehouse-process.log"
        with _warehouse_process(env, log_path) as keeper:
            before = file_identity(replica)
            first = _wait(
                "the warehouse process's first round",
                lambda: file_identity(replica) != before,
                PUBLISH_TIMEOUT,
                keeper,
            )
            print(f"ingest: the warehouse process published its first replica in {first:.1f} s")
            probe = _Probe(f"{base}/v1/leads")
            watcher = _Watcher(reader_settings, probe)
            watcher.start()
            probe.start()
            load_start = time.monotonic()
            cpu_start = cpu_seconds(keeper.pid)
            running = run_wrk(
                f"{base}/v1/leads", SCRIPT, connections=connections, seconds=seconds, server_cpu=True
            )
            load_end = time.monotonic()
            cpu_loaded = cpu_seconds(keeper.pid)
            under_load = probe.ids()
            print(f"ingest, warehouse running: {running['rps']:.0f} req/s, p99 {running['p99_ms']:.1f} ms")
            time.sleep(seconds)
            probe.stop()
            light_end = time.monotonic()
            cpu_light = cpu_seconds(keeper.pid)
            loaded = set(under_load)
            light = [event_id for event_id in probe.ids() if event_id not in loaded]
            try:
                _wait(
                    "every acknowledged probe lead visible in the replica",
                    lambda: all(event_id in watcher.seen for event_id in probe.acked),
                    PUBLISH_TIMEOUT,
                    keeper,
                )
            except RuntimeError as exc:  # recorded below (every_acknowledged_probe_visible: false)
                print(f"ingest: {exc}")
            finally:
                watcher.stop()
            with reading(reader_settings, "replica") as reader:
                row = reader.conn.execute("select count(*), count(distinct event_id) from leads").fetchone()
            replica_leads, replica_distinct = (int(row[0]), int(row[1])) if row else (0, 0)
            leads_now = _count(url, "select count(*) from leads")
        # The baseline again, the warehouse process gone: the two bracket the run with it (drift, autovacuum).
        stopped_after = run_wrk(
            f"{base}/v1/leads", SCRIPT, connections=connections, seconds=seconds, server_cpu=True
        )
        print(
            f"ingest, warehouse stopped again: {stopped_after['rps']:.0f} req/s, p99 {stopped_after['p99_ms']:.1f} ms"
        )
    leads_after = _count(url, "select count(*) from leads")
    acknowledged = sum(run["completed"] - run["non_2xx"] for run in (stopped, running, stopped_after)) + len(
        probe.acked
    )

    baseline_rps = round((stopped["rps"] + stopped_after["rps"]) / 2, 2)  # the mean of the two around it
    baseline_p99 = round((stopped["p99_ms"] + stopped_after["p99_ms"]) / 2, 2)

    def share(cpu_from: float | None, cpu_to: float | None, span: float) -> float | None:
        return round((cpu_to - cpu_from) / span, 3) if cpu_from is not None and cpu_to is not None else None

    staleness = {
        "replica_seconds": replica_seconds,
        "probes_per_second": PROBES_PER_SECOND,
        "watch_resolution_seconds": WATCH_SECONDS,
        "under_load": _lags(probe, watcher, under_load)
        | _copies(watcher, load_start, load_end)
        | {"warehouse_cpu_cores": share(cpu_start, cpu_loaded, load_end - load_start)},
        "light_load": _lags(probe, watcher, light)
        | _copies(watcher, load_end, light_end)
        | {"warehouse_cpu_cores": share(cpu_loaded, cpu_light, light_end - load_end)},
        "probe_refused": probe.refused,
        "probe_failed": probe.failed,
        "every_acknowledged_probe_visible": all(event_id in watcher.seen for event_id in probe.acked),
        "replica_open_median_seconds": round(statistics.median(watcher.open_seconds), 3)
        if watcher.open_seconds
        else None,
        "watcher_errors": watcher.errors,
        "warehouse_first_round_seconds": round(first, 2),
    }
    ingest_cost = {
        "workers": SERVE_WORKERS,
        "connections": connections,
        "seconds": seconds,
        "due_deliveries_drained": due,
        "drain_seconds": round(drained, 2),
        "warehouse_stopped": {"before": stopped, "after": stopped_after},
        "warehouse_running": running,
        "stopped_rps": baseline_rps,
        "stopped_p99_ms": baseline_p99,
        "rps_ratio": round(running["rps"] / baseline_rps, 3) if baseline_rps else None,
        "p99_ratio": round(running["p99_ms"] / baseline_p99, 3) if baseline_p99 else None,
        "leads_acknowledged": acknowledged,
        "leads_committed": leads_after - leads_before,
        "every_acknowledged_lead_committed": leads_after - leads_before >= acknowledged,
        "replica_holds_every_lead_once": replica_leads == replica_distinct == leads_now,
        "load_average_after": load_average(),
    }
    return staleness, ingest_cost


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
    parser.add_argument(
        "--ingest-seconds",
        type=int,
        default=60,
        help="each wrk run of the staleness / ingest-cost phase (0: skip the phase)",
    )
    parser.add_argument(
        "--replica-seconds",
        type=float,
        default=Settings.model_fields["attribution_replica_seconds"].default,
        help="ATTRIBUTION_REPLICA_SECONDS of the warehouse process (default: its default)",
    )
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
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
        "command": f"python -m bench.warehouse --leads {args.leads} --changes {args.changes} "
        f"--rounds {args.rounds} --ingest-seconds {args.ingest_seconds} --replica-seconds {args.replica_seconds:g} "
        f"--connections {args.connections}"
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
        if args.ingest_seconds > 0:
            result["staleness"], result["ingest_cost"] = _ingest_phase(
                cluster.url,
                args.data_dir,
                settings.attribution_replica_path,
                args.ingest_seconds,
                args.replica_seconds,
                args.connections,
            )
            stale, cost = result["staleness"], result["ingest_cost"]
            print(
                f"staleness: under load median {stale['under_load'].get('median_seconds')} s, max "
                f"{stale['under_load'].get('max_seconds')} s; light load median "
                f"{stale['light_load'].get('median_seconds')} s, max {stale['light_load'].get('max_seconds')} s; "
                f"ingest with the warehouse running: {cost['rps_ratio']}x req/s, {cost['p99_ratio']}x p99; "
                f"acknowledged committed: {cost['every_acknowledged_lead_committed']}, replica holds each once: "
                f"{cost['replica_holds_every_lead_once']}"
            )

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
