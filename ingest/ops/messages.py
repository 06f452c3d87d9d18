"""What each alert says: a Slack-compatible `text` plus the machine fields CONTRACT.md names.

Only destinations, metric names and counts go in: never an email, a phone or a name.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from ingest.core.vocabulary import Destination
from ingest.reconcile.models import Metric
from ingest.reconcile.report import percent

_NAMES = {Destination.MAILERLITE: "MailerLite", Destination.CRM: "The CRM", Destination.SGTM: "sGTM"}


def _base(alert: str, text: str, at: datetime, **fields: Any) -> dict[str, Any]:
    # alert_id lets a receiver drop a repeat: a POST whose answer was lost is sent again with the same id.
    return {"text": text, "alert": alert, "alert_id": str(uuid.uuid4()), "at": at.isoformat() + "Z", **fields}


def circuit_alert(destination: Destination, opened: bool, at: datetime) -> dict[str, Any]:
    """The circuit of `destination` opened (it is down) or closed (it answers again)."""
    name = _NAMES[destination]
    if opened:
        text = (
            f":rotating_light: {name} is down: its circuit opened, so nothing is sent to it (and no retry spent) "
            "until a probe gets an answer. Deliveries wait in the outbox."
        )
        return _base("circuit_open", text, at, destination=destination.value)
    text = f":white_check_mark: {name} answers again: its circuit closed and waiting deliveries go out now."
    return _base("circuit_closed", text, at, destination=destination.value)


def target_alert(metric: Metric, at: datetime) -> dict[str, Any]:
    """A success metric missed its target, or meets it again."""
    fields = {
        "metric": metric.metric,
        "value": metric.value,
        "target": metric.target,
        "comparator": metric.comparator,
        "numerator": metric.numerator,
        "denominator": metric.denominator,
    }
    figures = (
        f"{percent(metric.value)} ({metric.numerator:,} / {metric.denominator:,}; "
        f"target {metric.comparator} {percent(metric.target)})"
    )
    if metric.met:
        return _base(
            "target_met",
            f":white_check_mark: {metric.metric} meets its target again: {figures}.",
            at,
            **fields,
        )
    return _base("target_missed", f":warning: {metric.metric} misses its target: {figures}.", at, **fields)


def dead_alert(counts: dict[str, int], since: datetime, at: datetime) -> dict[str, Any]:
    """One summary of the deliveries that went dead since the last one."""
    total = sum(counts.values())
    parts = ", ".join(f"{destination} {count}" for destination, count in sorted(counts.items()))
    text = (
        f":skull: {total} deliver{'y' if total == 1 else 'ies'} went dead since "
        f"{since.isoformat(sep=' ', timespec='seconds')} UTC ({parts}). Replay them once the cause is fixed: "
        "`attribution replay --status dead`."
    )
    return _base(
        "deliveries_dead",
        text,
        at,
        count=total,
        by_destination=dict(sorted(counts.items())),
        since=since.isoformat() + "Z",
    )
