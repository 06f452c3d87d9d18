"""`attribution warehouse` (on PostgreSQL: the analytics replica kept current) and `attribution db copy` (an
embedded deployment's history moved into PostgreSQL)."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cli.common import console, settings_or_exit
from ingest.ops.alerts import AlertMonitor
from ingest.reconcile.models import ModelParams
from ingest.reconcile.warehouse import Warehouse, WarehouseError, WarehouseStopped
from ingest.store.database import DatabaseLocked, connect, migrate
from ingest.store.postgres import PostgresDatabase, describe
from ingest.store.transfer import CopyRefused, copy_to_postgres, source_counts
from ingest.store.writer import StoreUnavailable

FAILED_EXIT_CODE = 1
MISCONFIGURED_EXIT_CODE = 2


def warehouse(
    once: Annotated[bool, typer.Option("--once", help="Run one round, then exit (cron, tests).")] = False,
    full: Annotated[
        bool, typer.Option("--full", help="Copy everything in the first round instead of what changed.")
    ] = False,
) -> None:
    """On PostgreSQL: keep the DuckDB replica (ATTRIBUTION_REPLICA_PATH) current, every ATTRIBUTION_REPLICA_SECONDS."""
    settings = settings_or_exit(with_logging=True)
    if settings.attribution_database_url is None:
        console.print(
            "[red]ATTRIBUTION_DATABASE_URL is not set: `attribution warehouse` keeps the replica from PostgreSQL "
            "(on the embedded store `attribution serve` publishes it itself)[/red]"
        )
        raise typer.Exit(MISCONFIGURED_EXIT_CODE)
    url = settings.attribution_database_url.get_secret_value()
    try:
        keeper = Warehouse(url, settings.attribution_replica_path, ModelParams.from_settings(settings))
    except WarehouseError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(FAILED_EXIT_CODE) from None
    try:
        keeper.check()
    except WarehouseError as exc:
        keeper.close()
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(FAILED_EXIT_CODE) from None
    console.print(
        f"warehouse: {keeper.location} → {settings.attribution_replica_path}"
        + ("" if once else f", every {settings.attribution_replica_seconds:g} s (Ctrl-C stops)")
    )
    # On PostgreSQL no API publishes the replica, so the success targets are evaluated here as each copy is
    # published (alerts are queued in the store; the API instances' senders post them).
    try:
        store = PostgresDatabase.connect(url, pool_size=2)
    except StoreUnavailable as exc:
        keeper.close()
        console.print(f"[red]ATTRIBUTION_DATABASE_URL: {exc}[/red]")
        raise typer.Exit(FAILED_EXIT_CODE) from None
    monitor = AlertMonitor(store, settings)
    try:
        code = _run(
            keeper, once=once, full=full, interval=settings.attribution_replica_seconds, monitor=monitor
        )
    finally:
        keeper.close()
        store.close()
    if code:
        raise typer.Exit(code)


def _rounds(
    keeper: Warehouse,
    once: bool,
    full: bool,
    interval: float,
    stop: threading.Event,
    code: list[int],
    monitor: AlertMonitor,
) -> None:
    """The loop, in a thread of its own so that Ctrl-C reaches the main thread at once and can interrupt a round."""
    first = True
    while not stop.is_set():
        try:
            result = keeper.run_round(full=full and first)
            console.print(result.summary())
            if result.published is not None:
                monitor.evaluate_targets(result.published)
        except WarehouseStopped:
            return
        except WarehouseError as exc:
            console.print(f"[red]{exc}[/red]")
            if first or once:  # nothing works yet (or a single round was asked for): say so and stop
                code.append(FAILED_EXIT_CODE)
                return
        first = False
        if once:
            return
        # As the embedded publisher: rest at least as long as the last round took, leaving CPU to the rest.
        stop.wait(max(interval, keeper.last.seconds if keeper.last is not None else 0.0))


def _interrupt(_signal: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _run(keeper: Warehouse, *, once: bool, full: bool, interval: float, monitor: AlertMonitor) -> int:
    stop = threading.Event()
    code: list[int] = []
    worker = threading.Thread(
        target=_rounds,
        args=(keeper, once, full, interval, stop, code, monitor),
        name="warehouse",
        daemon=True,
    )
    previous = signal.signal(signal.SIGTERM, _interrupt)  # a service manager's stop is a Ctrl-C too
    try:
        worker.start()
        while worker.is_alive():
            worker.join(0.2)
    except KeyboardInterrupt:
        stop.set()
        keeper.stop()
        worker.join()
        last = keeper.last
        kept = (
            f"the copy taken {last.taken_at.isoformat(sep=' ', timespec='seconds')} UTC"
            if last is not None
            else "the copy it held before"
        )
        console.print(f"stopped; {keeper.replica} keeps {kept}")
    finally:
        signal.signal(signal.SIGTERM, previous)
    return code[0] if code else 0


def copy_database(to: str) -> None:
    """`attribution db copy --to URL`: the embedded file's whole history into an empty PostgreSQL database."""
    settings = settings_or_exit(with_logging=True)
    if not to.startswith(("postgresql://", "postgres://")):
        console.print("[red]--to must be a postgresql:// URL (postgresql://user@host:port/database)[/red]")
        raise typer.Exit(MISCONFIGURED_EXIT_CODE)
    path: Path = settings.attribution_db_path
    if not path.exists():
        console.print(f"[red]no embedded database at {path} (ATTRIBUTION_DB_PATH): nothing to copy[/red]")
        raise typer.Exit(FAILED_EXIT_CODE)
    try:
        source = connect(path)
    except (DatabaseLocked, StoreUnavailable) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(FAILED_EXIT_CODE) from None
    started = time.perf_counter()
    try:
        migrate(source)
        total = sum(source_counts(source).values())
        columns = (
            TextColumn("{task.description:<26}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=console, transient=True) as bar:
            task = bar.add_task("copying", total=total)
            copied = copy_to_postgres(
                source, to, progress=lambda table, rows: bar.update(task, advance=rows, description=table)
            )
    except CopyRefused as exc:
        console.print(f"[red]copy refused: {exc}[/red]")
        raise typer.Exit(FAILED_EXIT_CODE) from None
    finally:
        source.close()
    largest = sorted(copied.items(), key=lambda item: -item[1])[:4]
    console.print(
        f"copied {sum(copied.values()):,} rows in {len(copied)} tables from {path} to PostgreSQL at {describe(to)} "
        f"in {time.perf_counter() - started:.1f} s; every table's count verified "
        f"({', '.join(f'{table} {rows:,}' for table, rows in largest)})"
    )
    console.print(
        "next: set ATTRIBUTION_DATABASE_URL to it, run `attribution serve`, and `attribution warehouse` for the replica"
    )
