"""`attribution sync stripe`: backfill Stripe events, straight on the database file or through the running API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import httpx
import typer
from rich.console import Console

from ingest.db import Database, DatabaseLocked
from ingest.errors import DomainError
from ingest.logs import configure_logging
from ingest.payments import stripe_client
from ingest.settings import Settings, SettingsError, load_settings
from ingest.stripe_sync import SyncReport, sync_stripe_events

sync_app = typer.Typer(help="Backfill from external systems.", no_args_is_help=True)
console = Console(stderr=True)
API_TIMEOUT_SECONDS = 600.0


def _sync_through_api(settings: Settings, since: datetime | None) -> SyncReport:
    """Ask the running API (the database's one writer) to sync."""
    token = settings.attribution_admin_token
    if token is None:
        console.print(
            f"[red]{settings.attribution_db_path} is held by a running API, and ATTRIBUTION_ADMIN_TOKEN is not set, "
            f"so its admin endpoint can't be used. Set it, or call POST {settings.attribution_api_url}"
            "/v1/admin/sync/stripe yourself, or stop the API and run this again.[/red]"
        )
        raise typer.Exit(1)
    console.print(f"database in use by the API; syncing through {settings.attribution_api_url}")
    try:
        response = httpx.post(
            settings.attribution_api_url.rstrip("/") + "/v1/admin/sync/stripe",
            json={"since": since.isoformat() if since else None},
            headers={"Authorization": f"Bearer {token.get_secret_value()}"},
            timeout=API_TIMEOUT_SECONDS,
        )
    except httpx.HTTPError as exc:
        console.print(f"[red]could not reach the API at {settings.attribution_api_url}: {exc}[/red]")
        raise typer.Exit(1) from None
    if response.status_code != 200:
        console.print(f"[red]the API answered {response.status_code}: {response.text[:500]}[/red]")
        raise typer.Exit(1)
    return SyncReport.model_validate(response.json())


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
    try:
        settings = load_settings()
    except SettingsError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    configure_logging(settings.attribution_log_level)
    try:
        client = stripe_client(settings)
        try:
            database = Database.open(settings.attribution_db_path)
        except DatabaseLocked:
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
        f"invalid {report.invalid}; window from {report.since.isoformat(timespec='seconds')} UTC)"
    )
    if report.failed:
        raise typer.Exit(1)
