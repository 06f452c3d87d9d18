"""How CLI commands write while `attribution serve` holds the database: through its admin endpoints."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import typer

from cli.common import console
from ingest.admin_client import AdminApi, AdminTokenMissing, ApiError
from ingest.core.settings import Settings

T = TypeVar("T")


def through_api(settings: Settings, doing: str, call: Callable[[AdminApi], T]) -> T:
    """Run `call` against the running API's admin endpoints; print what went wrong and exit 1 on any failure."""
    console.print(f"database in use by the API; {doing} through {settings.attribution_api_url}")
    try:
        return call(AdminApi.from_settings(settings))
    except AdminTokenMissing as exc:
        console.print(
            f"[red]{exc} Or stop the API and run this again: it then writes to the file itself.[/red]"
        )
        raise typer.Exit(1) from None
    except ApiError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
