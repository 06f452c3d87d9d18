"""What every `attribution` command shares: the console for messages (stderr) and loading the settings."""

from __future__ import annotations

import typer
from rich.console import Console

from ingest.core.logs import configure_logging
from ingest.core.settings import Settings, SettingsError, load_settings
from ingest.store.database import Database, DatabaseLocked, open_database
from ingest.store.writer import StoreUnavailable

console = Console(stderr=True)
BAD_SETTINGS_EXIT_CODE = 2


def settings_or_exit(*, with_logging: bool = False) -> Settings:
    """The settings; a bad value is printed (naming the variable) and the command exits 2.

    `with_logging` also sets up logging at ATTRIBUTION_LOG_LEVEL, for commands that run the service's code.
    """
    try:
        settings = load_settings()
    except SettingsError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(BAD_SETTINGS_EXIT_CODE) from None
    if with_logging:
        configure_logging(settings.attribution_log_level)
    return settings


def open_store_or_exit(settings: Settings) -> Database | None:
    """The store opened for writing, or None when the running API holds the embedded file (then go through the
    API). A store that cannot be opened is one line, naming ATTRIBUTION_DATABASE_URL when it is PostgreSQL, and
    exit 1."""
    try:
        return open_database(settings)
    except DatabaseLocked:
        return None
    except StoreUnavailable as exc:
        named = "ATTRIBUTION_DATABASE_URL: " if settings.attribution_database_url is not None else ""
        console.print(f"[red]{named}{exc}[/red]")
        raise typer.Exit(1) from None
