"""`attribution report [--json] [--check]`: the success metrics against their targets."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import duckdb
import typer
from rich.console import Console
from rich.table import Table

from cli.common import console, settings_or_exit
from ingest.reconcile.replica import ReaderUnavailable, reading
from ingest.reconcile.report import Report, build_report, percent, provenance, render_json

MISSED_EXIT_CODE = 1
UNAVAILABLE_EXIT_CODE = 2


class ReadFrom(StrEnum):
    """Where the report reads: see `ingest.reconcile.replica.open_reader`."""

    AUTO = "auto"
    REPLICA = "replica"
    DATABASE = "database"


def report(
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    check: Annotated[
        bool, typer.Option("--check", help="Exit 1 when a metric misses its target (for deploy gates, cron).")
    ] = False,
    source: Annotated[
        ReadFrom,
        typer.Option(
            help="auto: the database when no API holds it, else the replica (on PostgreSQL: the replica when "
            "there is one); replica: the last published copy (fast: its heavy models are precomputed); database: "
            "compute everything from the file, or from a fresh copy of PostgreSQL."
        ),
    ] = ReadFrom.AUTO,
) -> None:
    """Success metrics vs targets, from the replica while the API runs, else from the database."""
    settings = settings_or_exit()
    try:
        with reading(settings, source.value) as reader:
            result = build_report(reader)
    except (ReaderUnavailable, duckdb.Error) as exc:
        console.print(f"[red]cannot read the metrics: {exc}[/red]")
        raise typer.Exit(UNAVAILABLE_EXIT_CODE) from None
    if json_output:
        typer.echo(render_json(result))
    else:
        Console().print(render_table(result))
    if check and not result.all_met:
        console.print(f"[red]target missed: {', '.join(result.missed)}[/red]")
        raise typer.Exit(MISSED_EXIT_CODE)


def render_table(report: Report) -> Table:
    """A readable table: metric, value, target, whether it is met, numerator / denominator."""
    table = Table(title="Success metrics", caption=provenance(report), caption_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("target", justify="right")
    table.add_column("met", justify="center")
    table.add_column("numerator / denominator", justify="right")
    for metric in report.metrics:
        table.add_row(
            metric.metric,
            percent(metric.value),
            f"{metric.comparator} {percent(metric.target)}",
            "[green]yes[/green]" if metric.met else "[red]NO[/red]",
            f"{metric.numerator:,} / {metric.denominator:,}",
        )
    return table
