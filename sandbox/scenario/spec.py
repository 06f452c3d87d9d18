"""What a scenario run is given: its spec, where the running pieces are, and the settings the API must run with."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ingest.reconcile.models import ModelParams

# What the API under a scenario should run with: production logic on fast schedules, so an outage is ridden out
# in about a second and a phase settles quickly (see ScenarioEnvironment).
SCENARIO_API_SETTINGS: dict[str, Any] = {
    "dlq_backoff_base_seconds": 0.05,
    "dlq_backoff_multiplier": 2.0,
    "dlq_max_retries": 10,
    "attribution_delivery_poll_seconds": 0.05,
    "attribution_circuit_breaker_threshold": 3,
    "attribution_circuit_breaker_cooldown_seconds": 0.3,
    "attribution_inline_delivery_ms": 0,
    "attribution_rate_limit_per_minute": 0,
    "mailerlite_requests_per_minute": 0,
    "product_price_cents": 4700,
}
WEBHOOK_ID = "attribution-scenario"
WEBHOOK_EVENTS = ("payment_intent.succeeded", "payment_intent.payment_failed")
# Share of the traffic from each (utm_source, utm_medium, utm_campaign); the bulk mode draws from it too.
UTM_MIX: tuple[tuple[str | None, str | None, str | None, float], ...] = (
    ("instagram", "social", "lisbon-launch", 0.22),
    ("instagram", "social", "retargeting", 0.08),
    ("facebook", "cpc", "lisbon-launch", 0.14),
    ("facebook", "cpc", "lookalike", 0.06),
    ("google", "cpc", "brand", 0.10),
    ("google", "cpc", "generic", 0.07),
    ("google", "organic", None, 0.08),
    ("newsletter", "email", "early-bird", 0.09),
    ("newsletter", "email", "last-call", 0.04),
    ("partner", "referral", "cafe-network", 0.04),
    (None, None, None, 0.08),
)
# Share of the leads giving each (marketing, analytics) consent at capture.
CONSENT_MIX = ((True, True, 0.55), (True, False, 0.10), (False, True, 0.20), (False, False, 0.15))


class ScenarioError(Exception):
    """The service did not behave as the scenario needs (an unexpected answer, or a phase that never settled)."""


@dataclass(frozen=True)
class ScenarioSpec:
    """How many leads, over how many days, from which seed."""

    seed: int = 0
    leads: int = 40
    days: int = 30


@dataclass(frozen=True)
class ScenarioEnvironment:
    """Where the running pieces are. The API must run with SCENARIO_API_SETTINGS, Stripe pointed at localstripe
    (same secret key and webhook secret as here), and the destinations at the sandbox fakes; `params` is the
    configuration it runs under. The scenario registers localstripe's webhook to the API itself."""

    api_url: str
    admin_token: str
    stripe_api_base: str
    stripe_secret_key: str
    stripe_webhook_secret: str
    fakes: Mapping[str, str]  # destination -> base URL of its sandbox fake (for the /_sandbox/ controls)
    params: ModelParams
    database_path: Path  # the API's database: the ground truth is written beside it
