"""Exports of what the CRM and sGTM fakes keep, shaped as a CRM contacts export and a GA4 purchase export.

`attribution reconcile import` reads such files. The CRM export has one line per contact (`contact_id, email,
event_id, lead_status, name`; event_id is the journey the contact's last accepted write named). The GA4 export is
one row per purchase event, as GA4's BigQuery export has it: CSV with `event_date, event_timestamp, event_name,
ecommerce.transaction_id, event_id`, or Parquet with an `ecommerce` struct and an `event_params` list.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

CRM_COLUMNS = ("contact_id", "email", "event_id", "lead_status", "name")
GA4_CSV_COLUMNS = ("event_date", "event_timestamp", "event_name", "ecommerce.transaction_id", "event_id")


def crm_export_rows(state: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per contact the CRM fake keeps (its `state()`, or `GET /_sandbox/state`)."""
    rows = []
    for email, contact in sorted(state["contacts"].items()):
        event_ids = contact.get("event_ids") or [None]
        rows.append(
            {
                "contact_id": contact["contact_id"],
                "email": email,
                "event_id": event_ids[-1],
                "lead_status": contact.get("lead_status"),
                "name": contact.get("name"),
            }
        )
    return rows


def write_crm_export(path: Path, state: Mapping[str, Any]) -> Path:
    """Write the CRM fake's contacts as a CSV export; return the path."""
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CRM_COLUMNS)
        writer.writeheader()
        writer.writerows(crm_export_rows(state))
    return path


def ga4_export_rows(state: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per event the sGTM fake keeps (its `state()`), with the export's columns."""
    rows = []
    for payload in state["accepted"]:
        micros = payload.get("timestamp_micros") or int(time.time() * 1_000_000)
        day = datetime.fromtimestamp(micros / 1_000_000, UTC).strftime("%Y%m%d")
        for event in payload["events"]:
            params = event.get("params") or {}
            rows.append(
                {
                    "event_date": day,
                    "event_timestamp": micros,
                    "event_name": event["name"],
                    "transaction_id": params.get("transaction_id"),
                    "value": params.get("value"),
                    "event_id": params.get("event_id"),
                }
            )
    return rows


def write_ga4_export(path: Path, state: Mapping[str, Any], *, parquet: bool = False) -> Path:
    """Write the sGTM fake's events as a GA4 export (CSV, or Parquet as from BigQuery); return the path."""
    rows = ga4_export_rows(state)
    if not parquet:
        with path.open("w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(GA4_CSV_COLUMNS)
            for row in rows:
                writer.writerow(
                    [
                        row["event_date"],
                        row["event_timestamp"],
                        row["event_name"],
                        row["transaction_id"],
                        row["event_id"],
                    ]
                )
        return path
    table = pa.table(
        {
            "event_date": [row["event_date"] for row in rows],
            "event_timestamp": pa.array([row["event_timestamp"] for row in rows], pa.int64()),
            "event_name": [row["event_name"] for row in rows],
            "ecommerce": pa.array(
                [{"transaction_id": row["transaction_id"], "purchase_revenue": row["value"]} for row in rows],
                pa.struct([("transaction_id", pa.string()), ("purchase_revenue", pa.float64())]),
            ),
            "event_params": pa.array(
                [[{"key": "event_id", "value": {"string_value": row["event_id"]}}] for row in rows],
                pa.list_(
                    pa.struct([("key", pa.string()), ("value", pa.struct([("string_value", pa.string())]))])
                ),
            ),
        }
    )
    pq.write_table(table, path)
    return path
