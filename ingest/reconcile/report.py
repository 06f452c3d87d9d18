"""The success report: the five metrics against their targets, where they were read from, and its JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from ingest.reconcile.models import Metric, success_metrics
from ingest.reconcile.replica import Reader


@dataclass(frozen=True)
class Report:
    """The metrics and where they were read from: the replica (with when it was taken) or the database itself."""

    metrics: list[Metric]
    source: str
    location: str  # the file read, or the PostgreSQL database (never its password) a fresh copy was made of
    taken_at: datetime | None
    staleness_seconds: float

    @property
    def all_met(self) -> bool:
        """Whether every metric meets its target."""
        return all(metric.met for metric in self.metrics)

    @property
    def missed(self) -> list[str]:
        """Names of the metrics that miss their target."""
        return [metric.metric for metric in self.metrics if not metric.met]


def build_report(reader: Reader) -> Report:
    """Compute the metrics through a reader."""
    return Report(
        metrics=success_metrics(reader.conn),
        source=reader.source,
        location=reader.location,
        taken_at=reader.taken_at,
        staleness_seconds=reader.staleness_seconds(),
    )


def percent(fraction: float) -> str:
    """A fraction as a percentage with two decimals, never rounded up to 100% (or down to 0%) when it isn't."""
    value = fraction * 100
    text = f"{value:.2f}"
    if text == "100.00" and fraction < 1:
        text = "99.99"
    elif text == "0.00" and fraction > 0:
        text = "0.01"
    return text.rstrip("0").rstrip(".") + "%"


def provenance(report: Report) -> str:
    """One line saying what the numbers were read from and how old they are."""
    if report.taken_at is None and report.location.startswith("postgresql://"):
        return f"computed from {report.location} (copied into a temporary DuckDB file for the models)"
    if report.taken_at is None:
        return f"read from the database {report.location} (no API running)"
    taken = report.taken_at.isoformat(sep=" ", timespec="seconds")
    return (
        f"read from the replica {report.location}, taken {taken} UTC ({report.staleness_seconds:.0f} s ago)"
    )


def render_json(report: Report) -> str:
    """The report as one JSON document."""
    return json.dumps(
        {
            "source": report.source,
            "path": report.location,
            "taken_at": report.taken_at.isoformat() if report.taken_at else None,
            "staleness_seconds": round(report.staleness_seconds, 3),
            "all_met": report.all_met,
            "metrics": [metric.model_dump() for metric in report.metrics],
        },
        indent=2,
    )
