"""What every `attribution` command shares: the console for messages (stderr) and loading the settings."""

from __future__ import annotations

import typer
from rich.console import Console

from ingest.core.logs import configure_logging
from ingest.core.settings import Settings, SettingsError, load_settings

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
