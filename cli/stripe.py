"""`attribution sync stripe`: backfill Stripe events, straight on the database file or through the running API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import typer

from cli.admin import through_api
from cli.common import console, open_store_or_exit, settings_or_exit
from ingest.core.errors import DomainError
from ingest.core.settings import Settings
from ingest.payments.checkout import stripe_client
from ingest.payments.sync import SyncReport, sync_stripe_events

sync_app = typer.Typer(help="Backfill from external systems.", no_args_is_help=True)


def _sync_through_api(settings: Settings, since: datetime | None) -> SyncReport:
    """Ask the running API (the database's one writer) to sync."""
    return through_api(settings, "syncing", lambda api: api.sync_stripe(since))


@sync_app.command("stripe")
def sync_stripe(
    since: Annotated[
        datetime | None,
        typer.Option(
            help="Start of the window (UTC); default: where the last sync left off, at most 30 days back."
        ),
    ] = None,
) -> None:
    """Process the Stripe events of the last 30 days that webhooks missed, and print the counts."""
    settings = settings_or_exit(with_logging=True)
    try:
        client = stripe_client(settings)
        database = open_store_or_exit(settings)
        if database is None:
            report = _sync_through_api(settings, since)
        else:
            try:
                report = sync_stripe_events(settings, database, client, since=since)
            finally:
                database.close()
    except DomainError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    typer.echo(
        f"seen {report.seen}  new {report.new}  processed {report.processed}  failed {report.failed}  "
        f"(retried {report.retried}, duplicates {report.duplicates}, ignored {report.ignored}, "
        f"invalid {report.invalid}; window from {report.since:%Y-%m-%d %H:%M:%S} UTC)"
    )
    if report.failed:
        raise typer.Exit(1)
