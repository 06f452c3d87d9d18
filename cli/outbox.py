"""`attribution replay`, `attribution mailerlite setup-fields` and `attribution sandbox`."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Annotated
from uuid import UUID

import httpx
import typer
from pydantic import ValidationError

from cli.admin import through_api
from cli.common import console, open_store_or_exit, settings_or_exit
from ingest.core.clock import utcnow
from ingest.core.settings import Settings
from ingest.core.vocabulary import Destination
from ingest.outbox.destinations.mailerlite import MailerLiteSetupError, setup_mailerlite_fields
from ingest.outbox.replay import ReplayIn, ReplayOut, ReplayRequest, count_replayable, replay_deliveries
from ingest.store.database import Database
from sandbox import run_sandbox_forever

mailerlite_app = typer.Typer(help="MailerLite account set-up.", no_args_is_help=True)
SANDBOX_PORTS = {"mailerlite": 8101, "crm": 8102, "sgtm": 8103, "meta": 8104, "stripe": 8420}


def _replay_through_api(settings: Settings, request: ReplayIn) -> ReplayOut:
    """Ask the running API (the database's one writer) to replay."""
    return through_api(settings, "replaying", lambda api: api.replay(request))


def _replay_on_file(settings: Settings, database: Database, request: ReplayIn) -> ReplayOut:
    if request.dry_run:
        return ReplayOut(replayed=database.read(lambda conn: count_replayable(conn, request)), dry_run=True)
    replayed = database.writer.submit_sync(replay_deliveries, ReplayRequest(request, utcnow()))
    return ReplayOut(replayed=replayed, dry_run=False)


def replay(
    ids: Annotated[
        list[UUID] | None, typer.Option("--id", help="A delivery_id to replay (repeatable).")
    ] = None,
    destination: Annotated[Destination | None, typer.Option(help="Only this destination.")] = None,
    status: Annotated[
        str | None, typer.Option(help="Only this status (default: dead, unless --id is given).")
    ] = None,
    event_id: Annotated[UUID | None, typer.Option(help="Only this journey.")] = None,
    since: Annotated[datetime | None, typer.Option(help="Created at or after (UTC).")] = None,
    until: Annotated[datetime | None, typer.Option(help="Created before (UTC).")] = None,
    error: Annotated[str | None, typer.Option(help="Text in the last error or reason.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only count what would be replayed.")] = False,
) -> None:
    """Re-queue deliveries with a fresh retry budget (dead ones by default); their attempt history is kept."""
    settings = settings_or_exit(with_logging=True)
    try:
        request = ReplayIn(
            ids=ids or None,
            destination=destination,
            status=status,  # validated by ReplayIn
            event_id=event_id,
            since=since,
            until=until,
            error=error,
            dry_run=dry_run,
        )
    except ValidationError as exc:
        for problem in exc.errors():
            field = ".".join(str(part) for part in problem["loc"]) or "filter"
            console.print(f"[red]{field}: {problem['msg']}[/red]")
        raise typer.Exit(2) from None
    database = open_store_or_exit(settings)
    if database is None:
        result = _replay_through_api(settings, request)
    else:
        try:
            result = _replay_on_file(settings, database, request)
        finally:
            database.close()
    verb = "would replay" if result.dry_run else "replayed"
    console.print(f"{verb} {result.replayed} deliver{'y' if result.replayed == 1 else 'ies'}")
    print(result.model_dump_json())


@mailerlite_app.command("setup-fields")
def mailerlite_setup_fields() -> None:
    """Create the MailerLite custom fields the subscriber upsert fills; safe to run again."""
    settings = settings_or_exit(with_logging=True)
    if settings.mailerlite_api_key is None:
        console.print("[red]MAILERLITE_API_KEY is not set, so MailerLite is not configured[/red]")
        raise typer.Exit(2)
    try:
        with httpx.Client(timeout=settings.attribution_delivery_timeout_seconds) as http:
            created, present = setup_mailerlite_fields(settings, http)
    except (MailerLiteSetupError, httpx.HTTPError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    console.print(f"created {len(created)} field(s): {', '.join(created) or '-'}")
    console.print(f"already there: {', '.join(present) or '-'}")


def sandbox(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    mailerlite_port: Annotated[int, typer.Option(help="MailerLite fake port (0: any).")] = SANDBOX_PORTS[
        "mailerlite"
    ],
    crm_port: Annotated[int, typer.Option(help="CRM fake port (0: any).")] = SANDBOX_PORTS["crm"],
    sgtm_port: Annotated[int, typer.Option(help="sGTM fake port (0: any).")] = SANDBOX_PORTS["sgtm"],
    meta_port: Annotated[int, typer.Option(help="Meta fake port (0: any).")] = SANDBOX_PORTS["meta"],
    stripe_port: Annotated[int, typer.Option(help="localstripe port (0: any).")] = SANDBOX_PORTS["stripe"],
    stripe: Annotated[bool, typer.Option(help="Also start localstripe.")] = True,
    stripe_webhook_url: Annotated[
        str | None,
        typer.Option(help="Where localstripe sends webhooks (default: the API's /v1/webhooks/stripe)."),
    ] = None,
) -> None:
    """Run the MailerLite / CRM / sGTM / Meta fakes (and localstripe) on loopback until Ctrl-C; prints the env."""
    settings = settings_or_exit(with_logging=True)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # the launcher's readiness polls are noise here
    webhook_url = stripe_webhook_url or settings.attribution_api_url.rstrip("/") + "/v1/webhooks/stripe"
    ports = {
        "mailerlite": mailerlite_port,
        "crm": crm_port,
        "sgtm": sgtm_port,
        "meta": meta_port,
        "stripe": stripe_port,
    }
    run_sandbox_forever(host, ports, with_stripe=stripe, stripe_webhook_url=webhook_url if stripe else None)
