"""The `attribution` command line."""

from __future__ import annotations

import importlib
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from cli.common import console, settings_or_exit
from ingest.core.settings import Settings
from ingest.store.database import DatabaseLocked, connect, migrate
from ingest.store.writer import StoreUnavailable

# Commands defined in modules of their own, imported only when the command runs (or a help page lists it): each
# pulls in what it needs (the sandbox's servers, the scenario, the Stripe SDK, Arrow), and `attribution report`
# should not wait for all of that. Values: "module:attribute", a command function or a Typer group.
LAZY_COMMANDS = {
    "report": "cli.report:report",
    "replay": "cli.outbox:replay",
    "sandbox": "cli.outbox:sandbox",
    "mailerlite": "cli.outbox:mailerlite_app",
    "sync": "cli.stripe:sync_app",
    "reconcile": "cli.reconcile:reconcile_app",
    "warehouse": "cli.warehouse:warehouse",
    "dashboard": "cli.demo:dashboard",
    "demo": "cli.demo:demo",
}


class _LazyGroup(TyperGroup):
    """The top-level group: its own commands, plus LAZY_COMMANDS loaded by name.

    The context and command types are those of the click Typer vendors privately, hence `Any` here.
    """

    def list_commands(self, ctx: Any) -> list[str]:
        return [*super().list_commands(ctx), *LAZY_COMMANDS]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name not in LAZY_COMMANDS:
            return super().get_command(ctx, cmd_name)
        module, attribute = LAZY_COMMANDS[cmd_name].split(":")
        target: Any = getattr(importlib.import_module(module), attribute)
        if isinstance(target, typer.Typer):
            group = typer.main.get_group(target)
            group.name = cmd_name
            return group
        single = typer.Typer()  # one command: Typer makes it the click command itself
        single.command(cmd_name)(target)
        return typer.main.get_command(single)


app = typer.Typer(help="Attribution ingest and reconciliation toolkit.", no_args_is_help=True, cls=_LazyGroup)
db_app = typer.Typer(help="Database maintenance.", no_args_is_help=True)
app.add_typer(db_app, name="db")


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    workers: Annotated[
        int,
        typer.Option(
            min=1, max=64, help="API processes sharing the port (PostgreSQL only: DuckDB has one writer)."
        ),
    ] = 1,
) -> None:
    """Run the API (with its database writer and delivery worker) in this process, or in `--workers` processes."""
    import uvicorn

    settings = settings_or_exit(with_logging=True)
    location = _check_store(settings, workers)
    if workers > 1:
        _share_metrics_between_processes()
    console.print(
        f"API on http://{host}:{port}  ·  docs http://{host}:{port}/docs  ·  database {location}"
        + (f"  ·  {workers} processes" if workers > 1 else "")
    )
    uvicorn.run(
        "api.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers if workers > 1 else None,
        log_config=None,
        access_log=False,
        proxy_headers=False,
    )


def _check_store(settings: Settings, workers: int) -> str:
    """Say in one line why the store can't be used, before uvicorn would print a traceback for it; return where it
    is, as it may be shown."""
    if settings.attribution_database_url is None:
        if workers > 1:
            console.print(
                "[red]--workers needs PostgreSQL (ATTRIBUTION_DATABASE_URL): the embedded DuckDB file admits one "
                "writing process. Run one worker, or move to PostgreSQL with `attribution db copy`.[/red]"
            )
            raise typer.Exit(2)
        try:
            connect(settings.attribution_db_path).close()
        except (DatabaseLocked, StoreUnavailable) as exc:
            console.print(f"[red]{exc}[/red]")
            raise typer.Exit(1) from None
        return str(settings.attribution_db_path)
    from ingest.store.postgres import check_store

    try:
        return check_store(settings.attribution_database_url.get_secret_value())
    except StoreUnavailable as exc:
        console.print(f"[red]ATTRIBUTION_DATABASE_URL: {exc}[/red]")
        raise typer.Exit(1) from None


def _share_metrics_between_processes() -> None:
    """Worker processes count requests apart: prometheus_client's multiprocess mode adds them up at /metrics. It
    needs a folder of its own, cleared of a previous run's counts before the processes start
    (PROMETHEUS_MULTIPROC_DIR; a fresh temporary one when unset)."""
    import os
    import tempfile
    from pathlib import Path

    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not folder:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="attribution-metrics-")
        return
    Path(folder).mkdir(parents=True, exist_ok=True)
    for stale in Path(folder).glob("*.db"):  # only prometheus_client's own files: the folder may hold others
        stale.unlink(missing_ok=True)


@db_app.command("migrate")
def db_migrate() -> None:
    """Apply the database migrations not yet applied (the DuckDB file, or PostgreSQL with ATTRIBUTION_DATABASE_URL)."""
    settings = settings_or_exit()
    if settings.attribution_database_url is not None:
        from ingest.store import postgres

        url = settings.attribution_database_url.get_secret_value()
        try:
            applied = postgres.migrate(url)
        except StoreUnavailable as exc:
            console.print(f"[red]{exc}[/red]")
            raise typer.Exit(1) from None
        _say_applied(applied, f"PostgreSQL at {postgres.describe(url)}")
        return
    try:
        conn = connect(settings.attribution_db_path)
    except (DatabaseLocked, StoreUnavailable) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    try:
        applied = migrate(conn)
    finally:
        conn.close()
    _say_applied(applied, str(settings.attribution_db_path))


def _say_applied(applied: list[str], where: str) -> None:
    if applied:
        console.print(f"applied {len(applied)} migration(s) to {where}: {', '.join(applied)}")
    else:
        console.print(f"{where} is up to date")


@db_app.command("backup")
def db_backup(
    directory: Annotated[str, typer.Argument(help="An empty folder for the backup.")],
) -> None:
    """A consistent copy of the embedded database into DIRECTORY, while the API runs or not."""
    from pathlib import Path

    from cli.backup import backup

    backup(Path(directory))


@db_app.command("restore")
def db_restore(
    directory: Annotated[str, typer.Argument(help="The folder of a backup made by `attribution db backup`.")],
) -> None:
    """Put a backup back as ATTRIBUTION_DB_PATH (refused while an API holds the file)."""
    from pathlib import Path

    from cli.backup import restore

    restore(Path(directory))


@db_app.command("copy")
def db_copy(
    to: Annotated[
        str, typer.Option("--to", help="The empty PostgreSQL database: postgresql://user@host:port/db.")
    ],
) -> None:
    """Move the embedded database's whole history (ATTRIBUTION_DB_PATH) into an empty PostgreSQL database."""
    from cli.warehouse import copy_database

    copy_database(to)
