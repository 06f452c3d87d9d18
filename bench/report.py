"""Reconciliation at scale: `attribution report` on a million leads vs a straightforward pandas implementation of
the same five metrics, and the read replica's publish time, staleness and cost to lead capture, in one run.

    .venv/bin/python -m bench.report [--leads 1000000] [--rounds 3] [--seconds 60] [--data-dir /tmp/attribution-bench]

1. Writes (or, with --reuse, reuses) a bulk database: `ingest.scenario_bulk`, ~3.7 deliveries a lead, with its
   ground truth. 2. Publishes its replica from a writer over that database, as the API does (twice, timed: the
   table copy plus the materialised models). 3. Times `attribution report --json` as a user runs it (a new process
   each time; the first run of each warms the OS cache and is not counted), both ways it can read: `--source
   replica`, what it reads while the API runs (the normal case), and `--source database`, the idle file with
   every model computed from scratch; checks both against the ground truth. 4. Computes the same metrics with
   pandas (loading the columns it needs from DuckDB, then pandas only) and checks the numbers are identical; the
   speed-up is quoted against the database path, which, like pandas, starts from the raw tables. 5. Serves the API
   on a copy of the database and drives lead capture with wrk, once with the publisher idle after its first copy
   and once publishing every ATTRIBUTION_REPLICA_SECONDS=5, sampling the replica's staleness meanwhile.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Literal

import duckdb
import pandas as pd

from bench.common import ROOT, median_of, run_wrk, save, server
from ingest.core.clock import utcnow
from ingest.core.settings import Settings
from ingest.reconcile.models import METRIC_NAMES, ModelParams
from ingest.reconcile.replica import ReaderUnavailable, open_reader, publish_replica
from ingest.store.database import Database
from sandbox.bulk import BulkSpec, generate_bulk
from sandbox.scenario import GroundTruth

LEAD_SCRIPT = ROOT / "bench" / "lead.lua"
CONFIGURED = {  # what the bulk database was generated under: every destination on
    "MAILERLITE_API_KEY": "bench",
    "CRM_WEBHOOK_URL": "http://127.0.0.1:9/crm",
    "SGTM_ENDPOINT": "http://127.0.0.1:9/mp/collect",
}


# --- the pandas baseline ------------------------------------------------------------------------------------------


def load_frames(path: Path) -> dict[str, pd.DataFrame]:
    """The columns the metrics need, read from DuckDB into pandas (ids as strings)."""
    conn = duckdb.connect(str(path), read_only=True)
    try:
        queries = {
            "leads": "select event_id::varchar as event_id, user_session_id::varchar as user_session_id, "
            "crm_contact_id from leads",
            "ledger": "select event_id::varchar as event_id, user_session_id::varchar as user_session_id, source, "
            "marketing_consent, analytics_consent, recorded_at from consent_ledger",
            "deliveries": "select delivery_id::varchar as delivery_id, event_id::varchar as event_id, "
            "user_session_id::varchar as user_session_id, destination, kind, status, payload, delivered_at "
            "from deliveries",
            "attempts": "select delivery_id::varchar as delivery_id, started_at, outcome from delivery_attempts",
            "payments": "select payment_intent_id, event_id::varchar as event_id, status, succeeded_at, refunded_at, "
            "last_stripe_event_id from payments",
            "events": "select stripe_event_id, status from stripe_events",
        }
        return {name: conn.execute(sql).df() for name, sql in queries.items()}
    finally:
        conn.close()


def _consent_at(probes: pd.DataFrame, ledger: pd.DataFrame, time_column: str) -> pd.DataFrame:
    """For each probe (event_id, user_session_id, time), the latest decision recorded at or before that time for
    its session or naming its event_id: columns marketing, analytics (False when none)."""
    probes = probes.reset_index(drop=True).reset_index(names="probe")
    ordered = probes.dropna(subset=[time_column]).sort_values(time_column)
    decisions = ledger.sort_values("recorded_at")
    by_session = pd.merge_asof(
        ordered,
        decisions[["user_session_id", "recorded_at", "marketing_consent", "analytics_consent"]],
        left_on=time_column,
        right_on="recorded_at",
        by="user_session_id",
        direction="backward",
    )
    by_event = pd.merge_asof(
        ordered.dropna(subset=["event_id"]),
        decisions[["event_id", "recorded_at", "marketing_consent", "analytics_consent"]].dropna(
            subset=["event_id"]
        ),
        left_on=time_column,
        right_on="recorded_at",
        by="event_id",
        direction="backward",
    )
    both = by_session.merge(
        by_event[["probe", "recorded_at", "marketing_consent", "analytics_consent"]],
        on="probe",
        how="left",
        suffixes=("", "_event"),
    )
    use_event = both["recorded_at_event"].notna() & (
        both["recorded_at"].isna() | (both["recorded_at_event"] > both["recorded_at"])
    )
    result = pd.DataFrame(
        {
            "probe": both["probe"],
            "marketing": both["marketing_consent"].where(~use_event, both["marketing_consent_event"]),
            "analytics": both["analytics_consent"].where(~use_event, both["analytics_consent_event"]),
        }
    )
    merged = probes[["probe"]].merge(result, on="probe", how="left")
    return merged.fillna({"marketing": False, "analytics": False}).astype(
        {"marketing": bool, "analytics": bool}
    )


def pandas_metrics(frames: dict[str, pd.DataFrame], params: ModelParams) -> dict[str, tuple[int, int]]:
    """The five metrics as DESIGN.md defines them, in pandas."""
    leads, ledger, deliveries = frames["leads"], frames["ledger"], frames["deliveries"]
    attempts, payments, events = frames["attempts"], frames["payments"], frames["events"]
    delivered = deliveries[deliveries["status"] == "delivered"]

    # consent_compliance: each send of a delivered MailerLite / sGTM delivery (not an unsubscribe).
    needing = delivered[
        delivered["destination"].isin(["mailerlite", "sgtm"]) & (delivered["kind"] != "unsubscribe")
    ]
    sends = needing.merge(attempts[attempts["outcome"] == "delivered"], on="delivery_id", how="left")
    sends["sent_at"] = sends["started_at"].fillna(sends["delivered_at"])
    consent = _consent_at(sends[["event_id", "user_session_id", "sent_at"]], ledger, "sent_at")
    sends["ok"] = (
        consent["marketing"].where(sends["destination"] == "mailerlite", consent["analytics"]).to_numpy()
    )
    per_delivery = sends.groupby("delivery_id")["ok"].all()
    compliance = (int(per_delivery.sum()), len(per_delivery))

    # attribution_accuracy
    purchases = delivered[(delivered["destination"] == "sgtm") & (delivered["kind"] == "purchase")]
    delivered_purchases = {json.loads(payload)["transaction_id"] for payload in purchases["payload"]}
    succeeded = payments[payments["status"].isin(["succeeded", "refunded"])].copy()
    known = set(leads["event_id"])
    succeeded["names_lead"] = succeeded["event_id"].isin(known)
    with_lead = succeeded[succeeded["names_lead"]].merge(
        leads[["event_id", "user_session_id"]], on="event_id", how="left"
    )
    with_lead["known_at"] = with_lead[["succeeded_at", "refunded_at"]].min(axis=1)
    at_success = _consent_at(with_lead[["event_id", "user_session_id", "known_at"]], ledger, "known_at")
    with_lead["analytics"] = at_success["analytics"].to_numpy()
    with_lead["purchase"] = with_lead["payment_intent_id"].isin(delivered_purchases)
    scope = with_lead[with_lead["analytics"] | (not params.require_consent)]
    accuracy = (int(scope["purchase"].sum()), len(scope))

    # data_consistency
    crm = set(
        delivered.loc[
            (delivered["destination"] == "crm") & (delivered["kind"] == "contact_upsert"), "event_id"
        ]
    )
    mailerlite = set(
        delivered.loc[
            (delivered["destination"] == "mailerlite") & (delivered["kind"] == "subscriber_upsert"),
            "event_id",
        ]
    )
    latest_by_session = ledger.sort_values("recorded_at").groupby("user_session_id").tail(1)
    latest_by_event = (
        ledger[ledger["source"] != "lead"].sort_values("recorded_at").groupby("event_id").tail(1)
    )
    now = leads.merge(
        latest_by_session[["user_session_id", "recorded_at", "marketing_consent"]],
        on="user_session_id",
        how="left",
    ).merge(
        latest_by_event[["event_id", "recorded_at", "marketing_consent"]],
        on="event_id",
        how="left",
        suffixes=("", "_e"),
    )
    use_event = now["recorded_at_e"].notna() & (
        now["recorded_at"].isna() | (now["recorded_at_e"] > now["recorded_at"])
    )
    marketing_now = (
        now["marketing_consent"].where(~use_event, now["marketing_consent_e"]).fillna(False).astype(bool)
    )
    stored_events = set(events["stripe_event_id"])
    with_lead["in_stripe"] = with_lead["last_stripe_event_id"].isin(stored_events)
    per_lead = with_lead.groupby("event_id").agg(
        in_stripe=("in_stripe", "any"),
        sgtm_due=("analytics", lambda a: bool(a.any()) or not params.require_consent),
        in_sgtm=("purchase", "any"),
    )
    journeys = leads[["event_id"]].merge(per_lead, left_on="event_id", right_index=True, how="left")
    has_payment = journeys["in_stripe"].notna()
    ok = pd.Series(True, index=journeys.index)
    if params.crm_enabled and params.crm_enable_lead_capture:
        ok &= journeys["event_id"].isin(crm)
    if params.mailerlite_enabled:
        ok &= journeys["event_id"].isin(mailerlite) | ~(
            marketing_now.to_numpy() | (not params.require_consent)
        )
    ok &= ~has_payment | journeys["in_stripe"].fillna(False).astype(bool)
    if params.sgtm_enabled:
        ok &= ~journeys["sgtm_due"].fillna(False).astype(bool) | journeys["in_sgtm"].fillna(False).astype(
            bool
        )
    orphans = int((~succeeded["names_lead"]).sum())
    consistency = (int(ok.sum()), len(leads) + orphans)

    return {
        "attribution_accuracy": accuracy,
        "data_consistency": consistency,
        "consent_compliance": compliance,
        "system_resilience": (int((events["status"] == "failed").sum()), len(events)),
        "crm_coverage": (int(leads["crm_contact_id"].notna().sum()), len(leads)),
    }


# --- the SQL models as a user runs them ----------------------------------------------------------------------


def run_report_cli(path: Path, replica: Path, source: str) -> tuple[float, dict[str, Any]]:
    """One `attribution report --json --source SOURCE` in a new process: wall seconds and its JSON."""
    env = {
        **os.environ,
        **CONFIGURED,
        "ATTRIBUTION_DB_PATH": str(path),
        "ATTRIBUTION_REPLICA_PATH": str(replica),
    }
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "cli", "report", "--json", "--source", source],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    return time.perf_counter() - started, json.loads(done.stdout)


def sql_breakdown(
    path: Path, replica: Path, source: Literal["replica", "database"], rounds: int
) -> dict[str, float]:
    """In-process: seconds to open a reader (attach + create the views) and to compute each metric."""
    settings = Settings(
        _env_file=None,
        attribution_db_path=path,
        attribution_replica_path=replica,
        mailerlite_api_key=CONFIGURED["MAILERLITE_API_KEY"],
        crm_webhook_url=CONFIGURED["CRM_WEBHOOK_URL"],
        sgtm_endpoint=CONFIGURED["SGTM_ENDPOINT"],
    )
    started = time.perf_counter()
    reader = open_reader(settings, source)
    timings = {"open_reader": time.perf_counter() - started}
    try:
        for name in METRIC_NAMES:
            runs = []
            for _ in range(rounds):
                started = time.perf_counter()
                reader.conn.execute(f"select * from {name}").fetchall()
                runs.append(time.perf_counter() - started)
            timings[name] = statistics.median(runs)
    finally:
        reader.close()
    return {name: round(seconds, 3) for name, seconds in timings.items()}


def main() -> None:
    """Run the benchmark; print and save the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leads", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=60, help="wrk duration of each lead-capture run")
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/attribution-bench"))
    parser.add_argument(
        "--reuse", action="store_true", help="reuse a database generated with the same --leads"
    )
    args = parser.parse_args()
    args.data_dir.mkdir(parents=True, exist_ok=True)
    path = args.data_dir / f"bulk-{args.leads}.duckdb"
    replica = args.data_dir / f"bulk-{args.leads}.replica.duckdb"
    spec = BulkSpec(leads=args.leads, seed=1)
    result: dict[str, Any] = {
        "command": "python -m bench.report " + " ".join(sys.argv[1:]),
        "leads": args.leads,
    }

    if args.reuse and path.exists():
        truth = GroundTruth.load(path)
        print(f"reusing {path}")
    else:
        started = time.perf_counter()
        truth = generate_bulk(path, spec)
        result["generate_seconds"] = round(time.perf_counter() - started, 1)
        print(f"generated {path} in {result['generate_seconds']} s: {truth.rows}")
    result["rows"] = truth.rows
    result["database_bytes"] = path.stat().st_size
    expected = truth.expected()

    # 2. the replica, published as the API does.
    database = Database.open(path)
    try:
        publishes = [publish_replica(database, replica, truth.params) for _ in range(2)]
    finally:
        database.close()
    result["replica_publish"] = {
        "seconds": [round(p.seconds, 2) for p in publishes],
        "replica_bytes": publishes[-1].size_bytes,
    }
    print(
        f"replica publish: {result['replica_publish']['seconds']} s, {publishes[-1].size_bytes / 1e6:.0f} MB"
    )

    # 3. attribution report, as a user runs it, from the replica and from the idle database.
    result["report"] = {"target_seconds": 2.0}
    got: dict[str, tuple[int, int]] = {}
    for source in ("replica", "database"):
        run_report_cli(path, replica, source)  # warms the OS cache
        timings: list[float] = []
        report: dict[str, Any] = {}
        for _ in range(args.rounds):
            seconds, report = run_report_cli(path, replica, source)
            timings.append(seconds)
        got = {m["metric"]: (m["numerator"], m["denominator"]) for m in report["metrics"]}
        result["report"][source] = {
            "warm_seconds_median": round(statistics.median(timings), 3),
            "warm_seconds": [round(t, 3) for t in timings],
            "equals_ground_truth": got == expected,
            "in_process_seconds": sql_breakdown(path, replica, source, args.rounds),
        }
        print(f"attribution report --source {source} (warm, new process): {result['report'][source]}")
    from_scratch = result["report"]["database"]["warm_seconds_median"]

    # 4. pandas, same metrics.
    load_times, compute_times, pandas_numbers = [], [], {}
    for _ in range(args.rounds):
        started = time.perf_counter()
        frames = load_frames(path)
        loaded = time.perf_counter()
        pandas_numbers = pandas_metrics(frames, truth.params)
        load_times.append(loaded - started)
        compute_times.append(time.perf_counter() - loaded)
        del frames
    pandas_total = statistics.median(a + b for a, b in zip(load_times, compute_times, strict=True))
    result["pandas"] = {
        "load_seconds_median": round(statistics.median(load_times), 3),
        "compute_seconds_median": round(statistics.median(compute_times), 3),
        "total_seconds_median": round(pandas_total, 3),
        "identical_numbers": pandas_numbers == got,
    }
    result["speedup_vs_pandas"] = {
        "total": round(pandas_total / from_scratch, 2),
        "compute_only": round(statistics.median(compute_times) / from_scratch, 2),
        "target": 10,
    }
    print(f"pandas: load {result['pandas']['load_seconds_median']} s + compute {result['pandas']['compute_seconds_median']} s; "
          f"identical: {result['pandas']['identical_numbers']}; SQL from scratch faster x{result['speedup_vs_pandas']['total']} "
          f"(x{result['speedup_vs_pandas']['compute_only']} against pandas compute alone)")  # fmt: skip

    # 5. lead capture with and without the publisher, and the replica's staleness under load.
    result["ingest"] = ingest_under_publishing(path, args.data_dir, args.seconds)
    out = save("report", result)
    print(json.dumps(result, indent=2))
    print(f"→ {out}")


def _wait_for(condition: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out")
        time.sleep(0.2)


def ingest_under_publishing(path: Path, data_dir: Path, seconds: int) -> dict[str, Any]:
    """wrk on lead capture over a copy of the big database: publisher idle vs publishing every 5 s."""
    runs: dict[str, Any] = {}
    for label, interval in (("publisher_idle", 3600), ("publishing_every_5s", 5)):
        copy = data_dir / "ingest.duckdb"
        replica = data_dir / "ingest.replica.duckdb"
        for stale in (copy, replica):
            stale.unlink(missing_ok=True)
        shutil.copyfile(path, copy)
        env = {
            **CONFIGURED,
            "ATTRIBUTION_DB_PATH": str(copy),
            "ATTRIBUTION_REPLICA_PATH": str(replica),
            "ATTRIBUTION_REPLICA_SECONDS": str(interval),
            "ATTRIBUTION_RATE_LIMIT_PER_MINUTE": "0",
            "ATTRIBUTION_LOG_LEVEL": "WARNING",
            "ATTRIBUTION_DELIVERY_WORKER": "false",  # forwarding is measured elsewhere; nothing to send to here
        }
        with server(["cli", "serve"], env) as url:
            _wait_for(replica.exists, 600)  # the first copy, made at start, is not what is measured
            staleness: list[float] = []
            stop = threading.Event()
            sampler = threading.Thread(target=_sample_staleness, args=(env, staleness, stop), daemon=True)
            sampler.start()
            wrk = run_wrk(f"{url}/v1/leads", LEAD_SCRIPT, connections=32, seconds=seconds)
            stop.set()
            sampler.join(30)
        runs[label] = {
            **wrk,
            "staleness_seconds_median": round(statistics.median(staleness), 1) if staleness else None,
            "staleness_seconds_max": round(max(staleness), 1) if staleness else None,
        }
        print(f"{label}: {wrk['rps']:.0f} leads/s, p50 {wrk['p50_ms']:.1f} ms, p99 {wrk['p99_ms']:.1f} ms; staleness "
              f"median {runs[label]['staleness_seconds_median']} s, max {runs[label]['staleness_seconds_max']} s")  # fmt: skip
        copy.unlink(missing_ok=True)
    runs["throughput_ratio"] = round(
        median_of([runs["publishing_every_5s"]], "rps") / median_of([runs["publisher_idle"]], "rps"), 3
    )
    return runs


def _sample_staleness(env: dict[str, str], samples: list[float], stop: threading.Event) -> None:
    """Once a second, how old the replica a reader opens is."""
    settings = Settings(
        _env_file=None,
        attribution_db_path=Path(env["ATTRIBUTION_DB_PATH"]),
        attribution_replica_path=Path(env["ATTRIBUTION_REPLICA_PATH"]),
    )
    while not stop.wait(1.0):
        try:
            reader = open_reader(settings, "replica")
        except ReaderUnavailable:
            continue
        try:
            taken_at = reader.taken_at
        finally:
            reader.close()
        if taken_at is not None:
            samples.append((utcnow() - taken_at).total_seconds())


if __name__ == "__main__":
    main()
