"""Pieces every page shares: the snapshot or a clear "nothing yet" state, freshness, money, CSV downloads."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pandas as pd
import streamlit as st

from dashboard import data
from dashboard.snapshots import NoReplica, Snapshot
from ingest.admin_client import AdminApi, ApiStatus
from ingest.reconcile.report import percent

LAG_WARNING_SECONDS = 60  # a destination whose oldest due delivery waited longer than this is shown as behind
STALE_AFTER_INTERVALS = 6  # a replica older than this many publish intervals means the API stopped publishing
API_STATUS_SECONDS = 10
METRIC_LABELS = {
    "attribution_accuracy": "Attribution accuracy",
    "data_consistency": "Data consistency",
    "consent_compliance": "Consent compliance",
    "system_resilience": "Stripe events failed",
    "crm_coverage": "CRM coverage",
}
METRIC_HELP = {
    "attribution_accuracy": "Succeeded payments whose sGTM purchase was delivered / succeeded payments that "
    "should reach sGTM (analytics consent, or REQUIRE_CONSENT=false).",
    "data_consistency": "Journeys (event_ids, plus orphan payments) present in every system they should reach "
    "/ all journeys.",
    "consent_compliance": "Delivered MailerLite, sGTM and Meta deliveries made while the matching consent was "
    "in force / all of them.",
    "system_resilience": "Stripe events whose processing failed and never later succeeded / Stripe events "
    "stored (lower is better).",
    "crm_coverage": "Leads with a CRM contact_id / leads.",
}
_EMAIL = re.compile(r"^(.)[^@]*(@.*)$")


def require_snapshot() -> Snapshot:
    """The replica this rerun reads, with the health strip under the page title; without one, say what to
    start and stop the page."""
    try:
        current = data.snapshot()
    except NoReplica as exc:
        st.info(f"**No data yet.** {exc}", icon=":material/hourglass_empty:")
        st.stop()
    health_strip(current)
    return current


def freshness(snapshot: Snapshot) -> None:
    """One line: which replica, when it was taken, and a warning when the API seems to have stopped."""
    taken = snapshot.taken_at.isoformat(sep=" ", timespec="seconds") if snapshot.taken_at else "?"
    interval = data.settings().attribution_replica_seconds
    text = f"Replica `{snapshot.path}` taken {taken} UTC, {age_text(snapshot.age_seconds)} ago."
    if snapshot.age_seconds > STALE_AFTER_INTERVALS * interval:
        st.warning(
            f"{text} The API publishes every {interval:g} s, so it is probably not running: "
            "start it with `attribution serve` for fresh numbers.",
            icon=":material/schedule:",
        )
    else:
        st.caption(text)


def age_text(seconds: float) -> str:
    """A duration the way people say it: 42 s, 3 min, 2 h, 5 d."""
    seconds = max(seconds, 0.0)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 36 * 3600:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} d"


def stop_if_empty(snapshot: Snapshot, what: str) -> None:
    """On an empty replica, say that nothing was captured yet (and how to get data) and stop the page."""
    if snapshot.is_empty:
        st.info(
            f"**No data yet:** the replica holds no leads, payments or deliveries, so there is no {what} to show. "
            "Send a lead to POST /v1/leads (or run `attribution demo`), and this page fills in within "
            f"{data.settings().attribution_replica_seconds:g} s.",
            icon=":material/hourglass_empty:",
        )
        st.stop()


def money(cents: float, currency: str | None = None) -> str:
    """Cents as an amount with two decimals and the currency code."""
    code = (currency or data.settings().product_currency).upper()
    return f"{cents / 100:,.2f} {code}"


def metric_value(value: float, denominator: int) -> str:
    """A metric's value as shown on the Overview (what `attribution report` prints)."""
    return percent(value) if denominator else "no data"


def csv_download(frame: pd.DataFrame, name: str, label: str = "Download CSV") -> None:
    """A download button with the table as CSV."""
    st.download_button(
        label,
        frame.to_csv(index=False).encode("utf-8"),
        file_name=f"{name}.csv",
        mime="text/csv",
        key=f"csv-{name}",
        icon=":material/download:",
    )


@st.cache_data(ttl=API_STATUS_SECONDS, show_spinner=False)
def api_status(base_url: str, token_set: bool) -> ApiStatus:
    """Whether the API answers (cached a few seconds, so reruns do not probe it each time)."""
    return admin_api().status()


def admin_api() -> AdminApi:
    """The client of ATTRIBUTION_API_URL."""
    return AdminApi.from_settings(data.settings())


def current_api_status() -> ApiStatus:
    """api_status for the configured URL and token."""
    current = data.settings()
    return api_status(current.attribution_api_url, current.attribution_admin_token is not None)


def mask_pii(value: Any) -> Any:
    """A payload with names, emails and phone numbers masked, for showing on screen."""
    if isinstance(value, dict):
        return {key: _mask_field(key, item) for key, item in value.items()}
    if isinstance(value, list):
        return [mask_pii(item) for item in value]
    return value


def _mask_field(key: str, value: Any) -> Any:
    if not isinstance(value, str) or not value:
        return mask_pii(value)
    if key == "email":
        return _EMAIL.sub(r"\1***\2", value)
    if key == "phone":
        return "*" * max(len(value) - 3, 0) + value[-3:]
    if key in ("name", "full_name"):
        return " ".join(part[:1] + "." for part in value.split())
    return value


@dataclass(frozen=True)
class Health:
    """The health strip's three facts about a replica copy."""

    replica_age_seconds: float
    lag_seconds: dict[str, float]  # destination -> how long its oldest waiting delivery has been due
    open_circuits: list[str]

    @property
    def troubled(self) -> bool:
        """Whether anything needs a look: a circuit open or a destination behind by more than a minute."""
        return bool(self.open_circuits) or any(lag > LAG_WARNING_SECONDS for lag in self.lag_seconds.values())

    def line(self) -> str:
        """One line: replica age, lag per destination, open circuits."""
        lags = (
            ", ".join(f"{name} {age_text(lag)}" for name, lag in sorted(self.lag_seconds.items()))
            or "nothing queued"
        )
        circuits = ", ".join(f"**{name}**" for name in self.open_circuits) or "none"
        return f"Replica {age_text(self.replica_age_seconds)} old · Outbox lag: {lags} · Open circuits: {circuits}"


def health_of(snapshot: Snapshot, rows: pd.DataFrame) -> Health:
    """The health strip of a copy from its outbox_health rows (lag counted at the copy's moment)."""
    lags: dict[str, float] = {}
    for row in rows.itertuples(index=False):
        due = row.oldest_due_at
        lags[str(row.destination)] = (
            0.0 if pd.isna(due) else max((snapshot.taken_at - due.to_pydatetime()).total_seconds(), 0.0)
        )
    circuits = [str(row.destination) for row in rows.itertuples(index=False) if bool(row.is_circuit_open)]
    return Health(snapshot.age_seconds, lags, circuits)


def health_strip(current: Snapshot) -> None:
    """On every page: replica age, outbox lag per destination, open circuits (from the replica's models)."""
    health = health_of(current, data.outbox_health(current.key))
    if health.troubled:
        st.warning(health.line(), icon=":material/monitor_heart:")
    else:
        st.caption(f":material/monitor_heart: {health.line()}")


def sidebar() -> None:
    """Under the page list: how fresh the data is, and whether the API answers."""
    with st.sidebar:
        try:
            # Only the first visit after the server starts waits here (it opens the replica and counts its rows);
            # later copies are prepared in the background.
            with st.spinner("Opening the latest replica…"):
                current = data.snapshot()
        except NoReplica:
            st.caption("No replica yet: start the API (`attribution serve`).")
        else:
            taken = current.taken_at.isoformat(sep=" ", timespec="seconds")
            line = f"Data as of {taken} UTC ({age_text(current.age_seconds)} ago)."
            if current.newer_pending:
                line += " A newer copy is being prepared."
            st.caption(line)
        status = current_api_status()
        if status.reachable:
            st.caption(f"API up at {status.url}.")
        else:
            st.caption(f"API not reachable at {status.url}: replay needs `attribution serve`.")
