"""`attribution reconcile`: our records against what Stripe, MailerLite, the CRM and GA4 hold; pull, import, repair.

Writes (pull, import, repair) go straight to the database file when no API holds it, else through the running API's
admin endpoints (DuckDB allows one writer). The report reads like `attribution report`: the file when no API holds
it, else the API's published replica.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, TypeVar

import duckdb
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from cli.admin import through_api
from cli.common import console, open_store_or_exit, settings_or_exit
from cli.report import ReadFrom
from ingest.core.clock import utcnow
from ingest.core.errors import DomainError
from ingest.core.settings import Settings
from ingest.reconcile.discrepancies import build_reconcile
from ingest.reconcile.imports import CrmColumns, Ga4Columns, import_export
from ingest.reconcile.pull import pull_systems
from ingest.reconcile.repair import repair_now
from ingest.reconcile.replica import ReaderUnavailable, reading
from ingest.reconcile.report import percent
from ingest.reconcile.repository import Records, replace_records
from ingest.reconcile.schemas import ImportOut, PullIn, PullOut, ReconcileOut, RepairIn, RepairOut, System
from ingest.store.database import Database

T = TypeVar("T")
FOUND_EXIT_CODE = 1  # --check: something is missing or stale
UNAVAILABLE_EXIT_CODE = 2
LIST_LIMIT = 20  # event_ids printed per list in the table view (--json prints all)

reconcile_app = typer.Typer(
    help="Our records against each system's own: pull, import, report, repair.", invoke_without_command=True
)
import_app = typer.Typer(help="Load a system's export file.", no_args_is_help=True)
reconcile_app.add_typer(import_app, name="import")


class PullWhat(StrEnum):
    """Which systems `reconcile pull` reads."""

    STRIPE = "stripe"
    MAILERLITE = "mailerlite"
    ALL = "all"


@contextmanager
def _on_file_or_none(settings: Settings) -> Iterator[Database | None]:
    """The store opened for writing, or None when the API holds the file (then go through the API)."""
    database = open_store_or_exit(settings)
    if database is None:
        yield None
        return
    try:
        yield database
    finally:
        database.close()


def _fail(exc: Exception | str, code: int = 1) -> typer.Exit:
    console.print(f"[red]{exc}[/red]")
    return typer.Exit(code)


def _writer(database: Database) -> Callable[[Records], int]:
    return lambda records: database.writer.submit_sync(replace_records, records)


def _run(settings: Settings, doing: str, on_file: Callable[[Database], T], on_api: Callable[..., T]) -> T:
    try:
        with _on_file_or_none(settings) as database:
            if database is not None:
                return on_file(database)
        return through_api(settings, doing, on_api)
    except DomainError as exc:
        raise _fail(exc) from None


@reconcile_app.callback()
def reconcile(
    ctx: typer.Context,
    json_output: Annotated[bool, typer.Option("--json", help="Print the JSON of GET /v1/reconcile.")] = False,
    check: Annotated[
        bool, typer.Option("--check", help="Exit 1 when a system misses or holds stale anything.")
    ] = False,
    source: Annotated[
        ReadFrom, typer.Option(help="auto: the database when no API holds it, else the replica.")
    ] = ReadFrom.AUTO,
) -> None:
    """Each system's records against ours: expected, held, missing, unexpected, stale; verified_data_consistency."""
    if ctx.invoked_subcommand is not None:
        return
    settings = settings_or_exit()
    try:
        with reading(settings, source.value) as reader:
            result = build_reconcile(reader.conn)
            read_from = reader.source
            taken_at = reader.taken_at
    except (ReaderUnavailable, duckdb.Error) as exc:
        raise _fail(f"cannot read the records: {exc}", UNAVAILABLE_EXIT_CODE) from None
    if json_output:
        typer.echo(result.model_dump_json(indent=2))
    else:
        Console().print(render_table(result))
        age = f", replica taken {taken_at:%Y-%m-%d %H:%M:%S} UTC" if taken_at else ""
        console.print(f"read from the {read_from}{age}")
    if check and not result.clean:
        dirty = [system.system.value for system in result.systems if system.missing or system.stale]
        raise _fail(f"missing or stale in: {', '.join(dirty)}", FOUND_EXIT_CODE)


def _listed(values: list[str]) -> str:
    shown = ", ".join(values[:LIST_LIMIT])
    return shown + (f" … (+{len(values) - LIST_LIMIT})" if len(values) > LIST_LIMIT else "") or "-"


def render_table(result: ReconcileOut) -> Table:
    """Per system: as of, held / expected and the lists; the verified metric in the caption."""
    metric = result.verified_data_consistency
    caption = (
        f"verified_data_consistency {percent(metric.value)} ({metric.numerator:,} / {metric.denominator:,}, "
        f"target {percent(metric.target)}: {'met' if metric.met else 'MISSED'}); verified: "
        f"{', '.join(metric.verified_systems) or 'none'}; without records: {', '.join(metric.unverified_systems) or 'none'}"
    )
    table = Table(title="Systems' records", caption=caption, caption_justify="left")
    for column in ("system", "as of (UTC)", "held / expected", "missing", "unexpected", "stale"):
        table.add_column(column)
    for system in result.systems:
        table.add_row(
            f"{system.system} ({system.source})",
            f"{system.as_of:%Y-%m-%d %H:%M:%S}",
            f"{system.held:,} / {system.expected:,}",
            _listed(system.missing),
            _listed(system.unexpected),
            _listed([f"{item.event_id} {item.field}: {item.ours} ≠ {item.theirs}" for item in system.stale]),
        )
    return table


@reconcile_app.command("pull")
def pull(
    what: Annotated[
        PullWhat, typer.Argument(help="stripe, mailerlite or all (those configured).")
    ] = PullWhat.ALL,
    since: Annotated[
        datetime | None,
        typer.Option(help="Only records created (Stripe) or updated (MailerLite) at or after (UTC)."),
    ] = None,
) -> None:
    """Read what Stripe and MailerLite hold into ext_* tables, replacing each system's previous pull."""
    settings = settings_or_exit(with_logging=True)
    request = PullIn(systems=None if what is PullWhat.ALL else [System(what.value)], since=since)

    def on_file(database: Database) -> PullOut:
        client = None
        if settings.stripe_secret_key is not None and what is not PullWhat.MAILERLITE:
            from ingest.payments.checkout import (
                stripe_client,  # the SDK client is built where checkout builds it
            )

            client = stripe_client(settings)
        with _progress() as advance:
            return pull_systems(settings, request, _writer(database), stripe_client=client, progress=advance)

    result = _run(settings, "pulling", on_file, lambda api: api.pull(request))
    for item in result.pulled:
        waited = f", waited out {item.rate_limited} 429(s)" if item.rate_limited else ""
        console.print(f"{item.system}: {item.records:,} records in {item.pages} page(s){waited}")
    print(result.model_dump_json())


@contextmanager
def _progress() -> Iterator[Callable[[System, int, int | None], None]]:
    tasks: dict[System, TaskID] = {}
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as bar:

        def advance(system: System, done: int, total: int | None) -> None:
            if system not in tasks:
                tasks[system] = bar.add_task(f"pulling {system}", total=total)
            bar.update(tasks[system], completed=done, total=total)

        yield advance


def _import(system: System, file: Path, columns: dict[str, str]) -> None:
    settings = settings_or_exit(with_logging=True)
    crm = (
        CrmColumns(**{key.removesuffix("_column"): value for key, value in columns.items()})
        if system is System.CRM
        else None
    )
    ga4 = (
        Ga4Columns(**{key.removesuffix("_column"): value for key, value in columns.items()})
        if system is System.GA4
        else None
    )
    if not file.is_file():
        raise _fail(f"no file at {file}", 2)

    def on_file(database: Database) -> ImportOut:
        return import_export(system, file, _writer(database), crm=crm, ga4=ga4)

    result = _run(settings, "importing", on_file, lambda api: api.import_export(system, file, columns))
    console.print(f"{system}: {result.records:,} records from {result.file_name} replace the previous import")
    print(result.model_dump_json())


@import_app.command("crm")
def import_crm(
    file: Annotated[Path, typer.Argument(help="The CRM contacts export (CSV with a header line).")],
    contact_id_column: Annotated[str, typer.Option(help="Column of the CRM's contact id.")] = "contact_id",
    email_column: Annotated[str, typer.Option(help="Column of the contact's email.")] = "email",
    event_id_column: Annotated[str, typer.Option(help="Column of our event_id.")] = "event_id",
) -> None:
    """Load a CRM contacts export; nothing is loaded when a column or line is refused."""
    _import(
        System.CRM,
        file,
        {
            "contact_id_column": contact_id_column,
            "email_column": email_column,
            "event_id_column": event_id_column,
        },
    )


@import_app.command("ga4")
def import_ga4(
    file: Annotated[
        Path, typer.Argument(help="The GA4 export (CSV, or Parquet as from the BigQuery export).")
    ],
    transaction_id_column: Annotated[
        str | None,
        typer.Option(
            help="Column of the transaction id (default: transaction_id, ecommerce.transaction_id)."
        ),
    ] = None,
    event_id_column: Annotated[
        str | None, typer.Option(help="Column of our event_id (default: event_id, else event_params).")
    ] = None,
) -> None:
    """Load a GA4 purchase export; nothing is loaded when a column or line is refused."""
    columns = {
        key: value
        for key, value in (
            ("transaction_id_column", transaction_id_column),
            ("event_id_column", event_id_column),
        )
        if value is not None
    }
    _import(System.GA4, file, columns)


@reconcile_app.command("repair")
def repair(
    system: Annotated[
        System | None, typer.Option(help="Only this system (default: every system with records).")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would be re-sent.")] = False,
) -> None:
    """Re-send through the outbox what a system misses or holds stale; journeys without consent are only reported."""
    settings = settings_or_exit(with_logging=True)
    request = RepairIn(system=system, dry_run=dry_run)

    def on_file(database: Database) -> RepairOut:
        return repair_now(database, settings, request, utcnow())

    result = _run(settings, "repairing", on_file, lambda api: api.repair(request))
    verb = "would re-send" if result.dry_run else "queued"
    for item in result.queued:
        console.print(f"{verb} {item.system} {item.event_id} ({item.why})")
    for left in result.not_repaired:
        console.print(f"[yellow]not repaired {left.system} {left.event_id}: {left.reason}[/yellow]")
    console.print(f"{verb} {len(result.queued)}; not repaired {len(result.not_repaired)}")
    print(result.model_dump_json())
