"""The `attribution` command line."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from ingest.cli_demo import register_demo_commands
from ingest.cli_outbox import register_outbox_commands
from ingest.cli_report import report
from ingest.cli_stripe import sync_app
from ingest.db import DatabaseLocked, connect, migrate
from ingest.logs import configure_logging
from ingest.settings import Settings, SettingsError, load_settings

app = typer.Typer(help="Attribution ingest and reconciliation toolkit.", no_args_is_help=True)
db_app = typer.Typer(help="Database maintenance.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(sync_app, name="sync")
app.command("report")(report)
register_outbox_commands(app)
register_demo_commands(app)
console = Console(stderr=True)


def _settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
) -> None:
    """Run the API (with its database writer) in this process."""
    import uvicorn

    settings = _settings()
    configure_logging(settings.attribution_log_level)
    console.print(
        f"API on http://{host}:{port}  ·  docs http://{host}:{port}/docs  ·  database {settings.attribution_db_path}"
    )
    uvicorn.run(
        "api.app:create_app",
        factory=True,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        proxy_headers=False,
    )


@db_app.command("migrate")
def db_migrate() -> None:
    """Apply the database migrations not yet applied."""
    settings = _settings()
    try:
        conn = connect(settings.attribution_db_path)
    except DatabaseLocked as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    try:
        applied = migrate(conn)
    finally:
        conn.close()
    if applied:
        console.print(f"applied {len(applied)} migration(s): {', '.join(applied)}")
    else:
        console.print("database is up to date")


if __name__ == "__main__":
    app()
