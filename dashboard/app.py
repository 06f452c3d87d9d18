"""Streamlit entry of the marketer dashboard: `attribution dashboard` runs `streamlit run dashboard/app.py`."""

from __future__ import annotations

import streamlit as st

from dashboard import ui

st.set_page_config(page_title="Attribution dashboard", page_icon=":material/insights:", layout="wide")

navigation = st.navigation(
    [
        st.Page("pages/overview.py", title="Overview", icon=":material/dashboard:", default=True),
        st.Page("pages/funnel.py", title="Funnel & attribution", icon=":material/filter_alt:"),
        st.Page("pages/coverage.py", title="event_id coverage", icon=":material/hub:"),
        st.Page("pages/consent.py", title="Consent", icon=":material/verified_user:"),
        st.Page("pages/deliveries.py", title="Deliveries", icon=":material/outbox:"),
        st.Page("pages/records.py", title="Systems' records", icon=":material/fact_check:"),
    ]
)
ui.sidebar()
navigation.run()
