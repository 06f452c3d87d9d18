"""How CLI commands write while `attribution serve` holds the database: through its admin endpoints."""

from __future__ import annotations

from typing import Any

import httpx
import typer
from rich.console import Console

from ingest.core.settings import Settings


def post_admin(
    settings: Settings, console: Console, path: str, *, body: str, doing: str, timeout: float
) -> dict[str, Any]:
    """POST a JSON body to the running API's admin `path`; explain and exit 1 on any failure."""
    token = settings.attribution_admin_token
    if token is None:
        console.print(
            f"[red]{settings.attribution_db_path} is held by a running API, and ATTRIBUTION_ADMIN_TOKEN is not set, "
            f"so its admin endpoint {path} can't be used. Set it, or stop the API and run this again.[/red]"
        )
        raise typer.Exit(1)
    console.print(f"database in use by the API; {doing} through {settings.attribution_api_url}")
    try:
        response = httpx.post(
            settings.attribution_api_url.rstrip("/") + path,
            content=body,
            headers={
                "Authorization": f"Bearer {token.get_secret_value()}",
                "Content-Type": "application/json",
            },
            timeout=timeout,
        )
    except httpx.HTTPError as exc:
        console.print(f"[red]could not reach the API at {settings.attribution_api_url}: {exc}[/red]")
        raise typer.Exit(1) from None
    if response.status_code != 200:
        console.print(f"[red]the API answered {response.status_code}: {response.text[:500]}[/red]")
        raise typer.Exit(1)
    answer: dict[str, Any] = response.json()
    return answer
