"""Scenario generator: a realistic funnel driven through the real HTTP API, and the ground truth it injected.

`run_scenario` plays, from a seed, what a launch week looks like to the service: leads captured over N days with a
UTM and consent mix (some twice, some a second lead in one session), consent withdrawn and given later, checkouts
that pay, fail or are abandoned, refunds (full and partial), Stripe events delivered twice, reported twice, out of
order or never processable, payments that name no lead, a MailerLite and an sGTM that reject everything for a
while, and a CRM outage the retries ride out. Everything goes through the API over HTTP: the browser endpoints,
PaymentIntents confirmed on localstripe (whose webhooks reach the API), synthetic events signed like Stripe's, and
the sandbox fakes' fault controls. Phases are separated by waiting until the outbox has settled, so which delivery
meets which fault is decided by the scenario, not by timing.

Alongside, it keeps its own model of what must be true (which deliveries were sent with which consent in force,
which payments succeeded and reached sGTM, which events failed for good) and writes the expected numerator and
denominator of every metric beside the database: `<database>.truth.json`. The SQL models must reproduce them.
"""

from sandbox.scenario.runner import VISITORS, run_scenario
from sandbox.scenario.spec import (
    SCENARIO_API_SETTINGS,
    UTM_MIX,
    WEBHOOK_EVENTS,
    WEBHOOK_ID,
    ScenarioEnvironment,
    ScenarioError,
    ScenarioSpec,
)
from sandbox.scenario.truth import TRUTH_SUFFIX, GroundTruth, truth_path

__all__ = [
    "SCENARIO_API_SETTINGS",
    "TRUTH_SUFFIX",
    "UTM_MIX",
    "VISITORS",
    "WEBHOOK_EVENTS",
    "WEBHOOK_ID",
    "GroundTruth",
    "ScenarioEnvironment",
    "ScenarioError",
    "ScenarioSpec",
    "run_scenario",
    "truth_path",
]
