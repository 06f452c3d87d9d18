"""Deliveries: status by destination, dead letters with their attempts, and replay through the admin API."""

from __future__ import annotations

from datetime import date
from typing import Any
from uuid import UUID

import pandas as pd
import streamlit as st

from dashboard import charts, data, ui
from ingest.admin_client import ApiError
from ingest.core.vocabulary import DeliveryStatus, Destination
from ingest.outbox.replay import ReplayIn

LIVE_STATE_LIMIT = 20  # deliveries whose state after a replay is fetched from the API one by one
PENDING_KEY = "replay-pending"
RESULT_KEY = "replay-result"

st.title("Deliveries")
snapshot = ui.require_snapshot()
ui.freshness(snapshot)
ui.stop_if_empty(snapshot, "delivery")

status = data.delivery_status(snapshot.key)
st.subheader("Status by destination")
if status.empty:
    st.caption("No delivery queued yet.")
else:
    chart_column, table_column = st.columns([3, 2])
    with chart_column:
        st.plotly_chart(charts.status_by_destination(status), key="status-chart")
    with table_column:
        matrix = status.pivot_table(
            index="destination", columns="status", values="deliveries", aggfunc="sum", fill_value=0
        ).reset_index()
        st.dataframe(matrix, hide_index=True, key="status-table")
        ui.csv_download(matrix, "delivery_status")
if snapshot.disabled_destinations:
    st.caption(f"Disabled (not configured): {', '.join(snapshot.disabled_destinations)}.")

st.subheader("Dead letters")
filter_columns = st.columns(4)
destination_choice = filter_columns[0].selectbox("Destination", ["all", *Destination], key="dead-destination")
error_text = filter_columns[1].text_input("Error contains", key="dead-error", max_chars=200).strip()
since = filter_columns[2].date_input("Created from", value=None, key="dead-since")
until = filter_columns[3].date_input("Created until", value=None, key="dead-until")
destination = None if destination_choice == "all" else Destination(destination_choice)
since_day = since if isinstance(since, date) else None
until_day = until if isinstance(until, date) else None
if since_day and until_day and since_day > until_day:
    st.error("'Created from' must be on or before 'Created until'.")
    st.stop()

dead = data.dead_letters(snapshot.key, destination, error_text or None, since_day, until_day)
if dead.empty:
    st.success("No dead delivery matches these filters.", icon=":material/check_circle:")
else:
    st.caption(
        f"The {len(dead):,} newest dead deliveries matching the filters"
        + (f" (at most {data.DEAD_LETTER_LIMIT})." if len(dead) >= data.DEAD_LETTER_LIMIT else ".")
    )
    st.dataframe(dead, hide_index=True, key="dead-table")
    ui.csv_download(dead, "dead_letters")

labels = {
    str(row.delivery_id): f"{row.destination} · {row.kind} · {str(row.delivery_id)[:8]} · "
    f"{str(row.last_error or row.reason or '')[:60]}"
    for row in dead.itertuples(index=False)
}


def label_of(delivery_id: str) -> str:
    """How a delivery is named in the pickers."""
    return labels.get(delivery_id, delivery_id)


if labels:
    with st.expander("Attempt history and payload", icon=":material/history:"):
        inspected = st.selectbox("Delivery", list(labels), format_func=label_of, key="dead-inspect")
        detail = data.delivery_detail(snapshot.key, str(inspected)) if inspected else None
        if detail is not None:
            st.caption(
                f"{detail.destination} {detail.kind} for event_id {detail.event_id}: {detail.status}, "
                f"{detail.attempt_count} attempt(s); last error: {detail.last_error or '-'}"
            )
            attempts = pd.DataFrame([attempt.model_dump() for attempt in detail.attempts])
            st.dataframe(attempts, hide_index=True, key="attempts-table")
            st.caption("Payload (names, emails and phone numbers masked):")
            st.json(ui.mask_pii(detail.payload), expanded=False)

st.subheader("Stripe events not processed")
unprocessed = data.failed_stripe_events(snapshot.key)
if unprocessed.empty:
    st.success("Every Stripe event stored was processed.", icon=":material/check_circle:")
else:
    st.caption(
        "failed: processing broke and Stripe's next delivery of the event retries it; rejected: a signed event we "
        "can never process (its reason is kept), acknowledged so Stripe stops retrying. Both count against "
        "system_resilience."
    )
    st.dataframe(unprocessed, hide_index=True, key="stripe-failures")
    ui.csv_download(unprocessed, "stripe_events_not_processed")

st.subheader("Replay")
api = ui.admin_api()
api_status = ui.current_api_status()
can_replay = api_status.reachable and api_status.admin_token_set
if not api_status.reachable:
    st.warning(f"Replay goes through the API, and {api_status.detail}", icon=":material/cloud_off:")
elif not api_status.admin_token_set:
    st.warning(
        "Replay needs ATTRIBUTION_ADMIN_TOKEN in the dashboard's environment (the API's admin token).",
        icon=":material/key_off:",
    )

mode = st.radio(
    "Replay",
    ["the deliveries selected below", "every dead delivery matching the filters above"],
    key="replay-mode",
    horizontal=True,
)
by_filter = mode.startswith("every")
chosen_ids: list[str] = []
if not by_filter:
    chosen_ids = st.multiselect(
        "Deliveries to replay", list(labels), format_func=label_of, key="replay-ids", placeholder="Choose"
    )


def replay_request() -> tuple[ReplayIn, str]:
    """The replay the controls describe, and how to say it."""
    if by_filter:
        wanted = data.dead_letter_filter(destination, error_text or None, since_day, until_day)
        described = ", ".join(
            f"{name} {value}"
            for name, value in (
                ("destination", destination),
                ("error contains", repr(error_text) if error_text else None),
                ("created from", since_day),
                ("until", until_day),
            )
            if value
        )
        return ReplayIn(
            **wanted.model_dump()
        ), f"every dead delivery{' with ' + described if described else ''}"
    # Only dead ones: a delivery delivered since the replica was taken is left alone.
    request = ReplayIn(ids=[UUID(item) for item in chosen_ids], status=DeliveryStatus.DEAD)
    return request, f"{len(chosen_ids)} selected deliver{'y' if len(chosen_ids) == 1 else 'ies'}"


if st.button(
    "Preview replay",
    key="replay-preview",
    disabled=not can_replay or (not by_filter and not chosen_ids),
    icon=":material/preview:",
):
    request, described = replay_request()
    try:
        preview = api.replay(request.model_copy(update={"dry_run": True}))
    except ApiError as exc:
        st.error(str(exc))
    else:
        st.session_state[PENDING_KEY] = {
            "request": request.model_dump(mode="json", exclude_none=True),
            "count": preview.replayed,
            "described": described,
        }
        st.session_state.pop(RESULT_KEY, None)

pending: dict[str, Any] | None = st.session_state.get(PENDING_KEY)
if pending is not None:
    if pending["count"] == 0:
        st.info(f"Nothing to replay: {pending['described']} matches no dead delivery now.")
        st.session_state.pop(PENDING_KEY)
    else:
        st.warning(
            f"Replay **{pending['count']:,}** dead deliver{'y' if pending['count'] == 1 else 'ies'} "
            f"({pending['described']})? Each is queued again with a fresh retry budget; its attempt history "
            "is kept.",
            icon=":material/replay:",
        )
        confirm_column, cancel_column = st.columns([1, 6])
        confirmed = confirm_column.button("Confirm replay", type="primary", key="replay-confirm")
        cancelled = cancel_column.button("Cancel", key="replay-cancel")
        if cancelled:
            st.session_state.pop(PENDING_KEY)
            st.rerun()
        if confirmed:
            request = ReplayIn.model_validate(pending["request"])
            try:
                result = api.replay(request)
            except ApiError as exc:
                st.error(str(exc))
            else:
                st.session_state[RESULT_KEY] = {
                    "replayed": result.replayed,
                    "described": pending["described"],
                    "ids": [str(item) for item in (request.ids or [])][:LIVE_STATE_LIMIT],
                }
                st.session_state.pop(PENDING_KEY)
                st.rerun()

outcome: dict[str, Any] | None = st.session_state.get(RESULT_KEY)
if outcome is not None:
    st.success(
        f"Replayed {outcome['replayed']:,} deliver{'y' if outcome['replayed'] == 1 else 'ies'} "
        f"({outcome['described']}). The worker sends them now; this page shows their new state once the next "
        "replica is published.",
        icon=":material/task_alt:",
    )
    if outcome["ids"]:
        live = []
        try:
            for delivery_id in outcome["ids"]:
                found = api.delivery(UUID(delivery_id))
                live.append(
                    {
                        "delivery_id": delivery_id,
                        "destination": found.destination,
                        "status": found.status,
                        "attempt_count": found.attempt_count,
                        "last_error": found.last_error,
                    }
                )
        except ApiError as exc:
            st.error(str(exc))
        st.caption("Their state in the API right now:")
        st.dataframe(pd.DataFrame(live), hide_index=True, key="replay-live")
        st.button("Check again", key="replay-refresh", icon=":material/refresh:")
