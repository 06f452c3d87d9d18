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

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import stripe

from ingest.reconcile.models import METRIC_NAMES, ModelParams

TRUTH_SUFFIX = ".truth.json"
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


def truth_path(database_path: Path) -> Path:
    """Where the ground truth of a generated database is kept: beside it, `<name>.truth.json`."""
    return database_path.with_name(database_path.name + TRUTH_SUFFIX)


@dataclass(frozen=True)
class GroundTruth:
    """What a generator injected: the expected numerator and denominator of every metric, and what it did."""

    kind: str  # "scenario" (through the API) | "bulk" (straight into the tables)
    seed: int
    params: ModelParams
    metrics: dict[str, tuple[int, int]]
    rows: dict[str, int] = field(default_factory=dict)
    injected: dict[str, Any] = field(default_factory=dict)

    def save(self, database_path: Path) -> Path:
        """Write the ground truth beside the database; return its path."""
        path = truth_path(database_path)
        document = {
            "kind": self.kind,
            "seed": self.seed,
            "params": asdict(self.params),
            "metrics": {
                name: {"numerator": numerator, "denominator": denominator}
                for name, (numerator, denominator) in self.metrics.items()
            },
            "rows": self.rows,
            "injected": self.injected,
        }
        path.write_text(json.dumps(document, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, database_path: Path) -> GroundTruth:
        """Read the ground truth saved beside a database."""
        document = json.loads(truth_path(database_path).read_text(encoding="utf-8"))
        return cls(
            kind=document["kind"],
            seed=document["seed"],
            params=ModelParams(**document["params"]),
            metrics={
                name: (int(value["numerator"]), int(value["denominator"]))
                for name, value in document["metrics"].items()
            },
            rows=document["rows"],
            injected=document["injected"],
        )

    def expected(self) -> dict[str, tuple[int, int]]:
        """(numerator, denominator) of each metric, in DESIGN.md order."""
        return {name: self.metrics[name] for name in METRIC_NAMES}


# --- the scenario, through the API ----------------------------------------------------------------------------

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
PRICE_CENTS = SCENARIO_API_SETTINGS["product_price_cents"]
OVERFLOWING_CENTS = 2**64  # no BIGINT holds it: processing such an event fails, and the failure is kept
CONSENT_MIX = ((True, True, 0.55), (True, False, 0.10), (False, True, 0.20), (False, False, 0.15))
SETTLE_TIMEOUT_SECONDS = 90.0
POLL_SECONDS = 0.05
# Visitors served at once where their order cannot matter (leads of distinct sessions, payments of distinct
# leads): every random draw is made first, in order, and the model is updated in that order afterwards, so a
# seed gives the same run whatever the timing.
VISITORS = 8
T = TypeVar("T")
U = TypeVar("U")


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


@dataclass
class _Lead:
    index: int
    event_id: uuid.UUID
    session: uuid.UUID
    body: dict[str, Any]
    delivered: set[str] = field(default_factory=set)  # "<destination>:<kind>" delivered at least once
    planned: set[str] = field(default_factory=set)  # idempotency keys the service planned


@dataclass
class _Payment:
    payment_intent_id: str
    lead: _Lead | None
    status: str = "open"  # open | failed | succeeded | refunded (only forward)
    analytics_at_success: bool = False  # the analytics consent in force when it was first known to succeed
    purchase_delivered: bool = False


_RANK = {"open": 0, "failed": 1, "canceled": 2, "succeeded": 3, "refunded": 4}


class _Truth:
    """The scenario's model of the service: decisions, deliveries, payments and events, as they must be."""

    def __init__(self, params: ModelParams) -> None:
        self.params = params
        self.decisions: list[tuple[uuid.UUID, uuid.UUID | None, bool, bool]] = []  # in the order recorded
        self.leads: list[_Lead] = []
        self.payments: dict[str, _Payment] = {}
        self.events: set[str] = set()  # Stripe event ids the service stores
        self.failed_events: set[str] = set()  # ... of which processing failed and never later succeeded
        self.needing_consent = 0  # delivered MailerLite (not unsubscribe) and sGTM deliveries
        self.with_consent = 0
        self.rejecting: set[str] = set()  # destinations answering every request with a permanent 4xx
        self.injected: dict[str, int] = {}

    def count(self, what: str, n: int = 1) -> None:
        self.injected[what] = self.injected.get(what, 0) + n

    def consent(self, lead: _Lead) -> tuple[bool, bool]:
        """The consent in force now: the latest decision for the lead's session or naming its event_id."""
        for session, event_id, marketing, analytics in reversed(self.decisions):
            if session == lead.session or event_id == lead.event_id:
                return marketing, analytics
        return False, False

    def enabled(self, destination: str) -> bool:
        return bool(getattr(self.params, f"{destination}_enabled"))

    def plan(self, lead: _Lead, destination: str, kind: str, suffix: str | None = None) -> bool:
        """One delivery the service plans now; whether it ends delivered (not suppressed, disabled or rejected)."""
        key = f"{destination}:{kind}" + (f":{suffix}" if suffix else "")
        if key in lead.planned:
            return False  # the outbox's idempotency key: planned once
        lead.planned.add(key)
        marketing, analytics = self.consent(lead)
        needs = {"mailerlite": marketing, "sgtm": analytics}.get(destination)
        if self.params.require_consent and needs is False:
            return False  # suppressed
        if not self.enabled(destination) or destination in self.rejecting:
            return False  # disabled, or sent and rejected for good (dead)
        lead.delivered.add(f"{destination}:{kind}")
        if needs is not None:
            self.needing_consent += 1
            self.with_consent += int(needs)
        return True

    def capture(self, lead: _Lead, marketing: bool, analytics: bool) -> None:
        self.leads.append(lead)
        self.decisions.append((lead.session, lead.event_id, marketing, analytics))
        self.plan(lead, "mailerlite", "subscriber_upsert")
        self.plan(lead, "sgtm", "generate_lead")
        if self.params.crm_enable_lead_capture:
            self.plan(lead, "crm", "contact_upsert")

    def decide(self, lead: _Lead, marketing: bool, analytics: bool, *, name_event: bool) -> None:
        self.decisions.append((lead.session, lead.event_id if name_event else None, marketing, analytics))

    def move(self, payment: _Payment, status: str) -> None:
        """A processed event moves a payment forward and plans what its new state implies."""
        known_before = payment.status in ("succeeded", "refunded")
        if _RANK[status] > _RANK[payment.status]:
            payment.status = status
        lead = payment.lead
        if lead is None or payment.status not in ("succeeded", "refunded"):
            return
        if not known_before:
            payment.analytics_at_success = self.consent(lead)[1]
        state = "paid" if payment.status == "succeeded" else "refunded"
        self.plan(lead, "crm", "contact_upsert", state)
        self.plan(lead, "mailerlite", "subscriber_upsert", state)
        if self.plan(lead, "sgtm", "purchase", payment.payment_intent_id):
            payment.purchase_delivered = True
        if payment.status == "refunded":
            self.plan(lead, "sgtm", "refund", payment.payment_intent_id)

    def metrics(self) -> dict[str, tuple[int, int]]:
        params = self.params
        consistent = 0
        for lead in self.leads:
            paid = [
                p for p in self.payments.values() if p.lead is lead and p.status in ("succeeded", "refunded")
            ]
            marketing, _ = self.consent(lead)
            expected = {
                "crm:contact_upsert": params.crm_enabled and params.crm_enable_lead_capture,
                "mailerlite:subscriber_upsert": params.mailerlite_enabled
                and (marketing or not params.require_consent),
                "sgtm:purchase": params.sgtm_enabled
                and any(p.analytics_at_success or not params.require_consent for p in paid),
            }
            consistent += all(key in lead.delivered or not due for key, due in expected.items())
        in_scope = [
            p
            for p in self.payments.values()
            if p.lead is not None
            and p.status in ("succeeded", "refunded")
            and (p.analytics_at_success or not params.require_consent)
        ]
        orphans = [
            p for p in self.payments.values() if p.lead is None and p.status in ("succeeded", "refunded")
        ]
        return {
            "attribution_accuracy": (sum(p.purchase_delivered for p in in_scope), len(in_scope)),
            "data_consistency": (consistent, len(self.leads) + len(orphans)),
            "consent_compliance": (self.with_consent, self.needing_consent),
            "system_resilience": (len(self.failed_events), len(self.events)),
            "crm_coverage": (
                sum("crm:contact_upsert" in lead.delivered for lead in self.leads),
                len(self.leads),
            ),
        }


def _payment_intent(payment_intent_id: str, *, amount: int, metadata: dict[str, str]) -> dict[str, Any]:
    return {
        "id": payment_intent_id,
        "object": "payment_intent",
        "amount": amount,
        "amount_received": amount,
        "currency": "eur",
        "status": "succeeded",
        "capture_method": "automatic",
        "latest_charge": None,
        "last_payment_error": None,
        "livemode": False,
        "metadata": metadata,
        "payment_method_types": ["card"],
    }


def _charge(charge_id: str, payment_intent_id: str, *, amount: int, refunded_cents: int) -> dict[str, Any]:
    return {
        "id": charge_id,
        "object": "charge",
        "amount": amount,
        "amount_refunded": refunded_cents,
        "currency": "eur",
        "paid": True,
        "payment_intent": payment_intent_id,
        "refunded": refunded_cents >= amount,
        "status": "succeeded",
        "metadata": {},
    }


def _event(event_id: str, event_type: str, data_object: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": event_id,
        "object": "event",
        "api_version": "2024-06-20",
        "created": int(time.time()),
        "data": {"object": data_object},
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": event_type,
    }


class _Scenario:
    """One run: the HTTP calls in order, each recorded in the model as the service must have taken it."""

    def __init__(self, env: ScenarioEnvironment, spec: ScenarioSpec, client: httpx.Client) -> None:
        self.env = env
        self.spec = spec
        self.rng = random.Random(spec.seed)
        self.http = client
        self.admin = {"Authorization": f"Bearer {env.admin_token}"}
        self.truth = _Truth(env.params)
        self.started = int(time.time()) - 60  # localstripe's events of this run are created after this
        self.confirmed: list[
            str
        ] = []  # PaymentIntents confirmed on localstripe, their events not yet looked up
        self.stripe = stripe.StripeClient(
            env.stripe_secret_key,
            base_addresses={"api": env.stripe_api_base},
            http_client=stripe.RequestsClient(timeout=10),
        )

    # --- plumbing ------------------------------------------------------------------------------------------

    def _uuid(self) -> uuid.UUID:
        return uuid.UUID(int=self.rng.getrandbits(128), version=4)

    def _stripe_id(self, prefix: str) -> str:
        return f"{prefix}_scn{self.spec.seed}_{self.rng.getrandbits(64):016x}"

    def _expect(self, response: httpx.Response, *codes: int) -> dict[str, Any]:
        if response.status_code not in codes:
            raise ScenarioError(
                f"{response.request.method} {response.request.url.path} answered {response.status_code}, "
                f"expected {codes}: {response.text[:300]}"
            )
        body: dict[str, Any] = response.json()
        return body

    def _each(self, work: Callable[[T], U], items: Iterable[T]) -> list[U]:
        """work(item) for every item, VISITORS at a time; the results in the items' order."""
        with ThreadPoolExecutor(VISITORS, thread_name_prefix="scenario-visitor") as pool:
            return list(pool.map(work, items))

    def _wait(self, condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + SETTLE_TIMEOUT_SECONDS
        while not condition():
            if time.monotonic() > deadline:
                raise ScenarioError(f"timed out waiting for {what}")
            time.sleep(POLL_SECONDS)

    def _waiting_deliveries(self) -> int:
        waiting = 0
        for status in ("pending", "retrying"):
            response = self.http.get(
                "/v1/admin/deliveries", params={"status": status, "limit": 1}, headers=self.admin
            )
            waiting += len(self._expect(response, 200)["deliveries"])
        return waiting

    def _tables(self) -> dict[str, int]:
        tables: dict[str, int] = self._expect(self.http.get("/v1/admin/status", headers=self.admin), 200)[
            "tables"
        ]
        return tables

    def _stored_events(self) -> int:
        return int(self._tables()["stripe_events"])

    def settle(self) -> None:
        """Wait until every Stripe event sent has been stored and no delivery is waiting to be sent."""
        self._wait(lambda: self._stored_events() == len(self.truth.events), "Stripe events to be stored")
        self._wait(lambda: self._waiting_deliveries() == 0, "the outbox to settle")

    def faults(self, destination: str, **update: Any) -> None:
        url = self.env.fakes.get(destination)
        if url is not None:
            self._expect(httpx.post(f"{url}/_sandbox/faults", json=update, timeout=5), 200)

    def reject(self, destination: str) -> None:
        self.faults(destination, clear=True, reject_status=400)
        self.truth.rejecting.add(destination)
        self.truth.count(f"{destination}_rejection_phases")

    def clear_faults(self) -> None:
        for destination in self.env.fakes:
            self.faults(destination, clear=True)
        self.truth.rejecting.clear()

    def send_event(self, event: dict[str, Any], *, body: str | None = None) -> httpx.Response:
        text = body if body is not None else json.dumps(event)
        header = stripe.WebhookSignature.generate_signature_header(text, self.env.stripe_webhook_secret)
        return self.http.post(
            "/v1/webhooks/stripe",
            content=text,
            headers={"Stripe-Signature": header, "Content-Type": "application/json"},
        )

    # --- leads and consent ---------------------------------------------------------------------------------

    def new_lead(self, index: int, *, session: uuid.UUID | None = None) -> tuple[_Lead, bool, bool]:
        marketing, analytics = self.rng.choices(
            [(m, a) for m, a, _ in CONSENT_MIX], weights=[w for _, _, w in CONSENT_MIX]
        )[0]
        source, medium, campaign, _ = self.rng.choices(UTM_MIX, weights=[w for *_, w in UTM_MIX])[0]
        created = datetime.now(UTC) - timedelta(days=self.rng.uniform(0, self.spec.days))
        event_id, session = self._uuid(), session or self._uuid()
        body = {
            "event_id": str(event_id),
            "user_session_id": str(session),
            "full_name": f"Scenario Lead {self.spec.seed}-{index}",
            "email": f"scenario.{self.spec.seed}.{index}@example.com",
            "phone": f"+35191{self.rng.randrange(10**7):07d}",
            "utm_source": source,
            "utm_medium": medium,
            "utm_campaign": campaign,
            "landing_page": "https://cafecomvendas.example/lisbon",
            "lead_created_at": created.isoformat().replace("+00:00", "Z"),
            "marketing_consent": marketing,
            "analytics_consent": analytics,
            "consent_method": self.rng.choice(["modal", "checkbox", "implied"]),
            "consent_version": "1.0",
        }
        lead = _Lead(index, event_id, session, body)
        return lead, marketing, analytics

    def capture(self, count: int, *, sessions: list[uuid.UUID] | None = None) -> list[_Lead]:
        drafts = []
        for position in range(count):
            index = len(self.truth.leads) + position
            lead, marketing, analytics = self.new_lead(
                index, session=sessions[position] if sessions else None
            )
            retried = self.rng.random() < 0.1  # the browser retried: same lead again, nothing new
            drafts.append((lead, marketing, analytics, retried))
        self._each(self._post_lead, drafts)
        for lead, marketing, analytics, retried in drafts:
            self.truth.capture(lead, marketing, analytics)
            if retried:
                self.truth.count("duplicate_leads")
        self.truth.count("leads", count)
        return [lead for lead, *_ in drafts]

    def _post_lead(self, draft: tuple[_Lead, bool, bool, bool]) -> None:
        lead, _, _, retried = draft
        answer = self._expect(self.http.post("/v1/leads", json=lead.body), 200)
        if answer["duplicate"] or answer["event_id"] != str(lead.event_id):
            raise ScenarioError(f"lead {lead.event_id} was not captured as new: {answer}")
        if retried:
            again = self._expect(self.http.post("/v1/leads", json=lead.body), 200)
            if not again["duplicate"]:
                raise ScenarioError(f"a repeated lead {lead.event_id} was not answered as a duplicate")

    def change_consent(self, leads: list[_Lead]) -> None:
        for lead in leads:
            marketing, analytics = self.truth.consent(lead)
            draw = self.rng.random()
            if draw < 0.12 and marketing:
                change, name_event, what = (False, analytics), True, "marketing_withdrawals"
            elif draw < 0.20 and analytics:
                change, name_event, what = (marketing, False), False, "analytics_withdrawals_by_session"
            elif draw < 0.26 and not marketing:
                change, name_event, what = (True, analytics), True, "late_marketing_grants"
            else:
                continue
            body: dict[str, Any] = {
                "user_session_id": str(lead.session),
                "marketing_consent": change[0],
                "analytics_consent": change[1],
                "consent_method": "modal",
                "consent_version": "1.0",
            }
            if name_event:
                body["event_id"] = str(lead.event_id)
            self._expect(self.http.post("/v1/consent", json=body), 200)
            self.truth.decide(lead, *change, name_event=name_event)
            self.truth.count(what)

    # --- payments ------------------------------------------------------------------------------------------

    def checkout(self, lead: _Lead) -> _Payment:
        payment = _Payment(self._create_intent(lead), lead)
        self.truth.payments[payment.payment_intent_id] = payment
        return payment

    def _create_intent(self, lead: _Lead) -> str:
        answer = self._expect(
            self.http.post("/v1/payment-intents", json={"event_id": str(lead.event_id)}), 200
        )
        return str(answer["payment_intent_id"])

    def pay_each(self, orders: list[tuple[_Lead, str | None]]) -> list[_Payment]:
        """Each lead checks out through the API and, given a card, pays on localstripe (whose webhook tells the
        API); without one, the checkout is abandoned. Visitors at once; the model is updated in order after."""
        outcomes = self._each(self._pay, orders)
        payments = []
        for (lead, card), (payment_intent_id, status) in zip(orders, outcomes, strict=True):
            payment = _Payment(payment_intent_id, lead)
            self.truth.payments[payment_intent_id] = payment
            payments.append(payment)
            if card is None:
                self.truth.count("abandoned_checkouts")
                continue
            # The event localstripe sends is looked up with the others of this phase (collect_emitted).
            self.confirmed.append(payment_intent_id)
            self.truth.move(payment, status)
            self.truth.count(f"payments_{status}")
        return payments

    def _pay(self, order: tuple[_Lead, str | None]) -> tuple[str, str]:
        lead, card = order
        payment_intent_id = self._create_intent(lead)
        if card is None:
            return payment_intent_id, "open"
        self.stripe.v1.payment_intents.update(payment_intent_id, params={"payment_method": card})
        try:
            self.stripe.v1.payment_intents.confirm(payment_intent_id)
        except stripe.CardError:
            return payment_intent_id, "failed"
        return payment_intent_id, "succeeded"

    def collect_emitted(self) -> None:
        """Record the event localstripe emitted for each payment confirmed since the last call: exactly one each.

        One listing for the whole phase: listing per payment re-reads every event so far, which made a run's
        time grow with the square of its payments.
        """
        wanted = set(self.confirmed)
        emitted: dict[str, list[str]] = {payment_intent_id: [] for payment_intent_id in wanted}
        for event_type in WEBHOOK_EVENTS:
            listed = self.stripe.v1.events.list(
                params={"type": event_type, "created": {"gte": self.started}, "limit": 100}
            )
            for event in listed.auto_paging_iter():
                if event.data.object.id in wanted:
                    emitted[event.data.object.id].append(event.id)
        for payment_intent_id in self.confirmed:
            if len(emitted[payment_intent_id]) != 1:
                raise ScenarioError(
                    f"localstripe emitted {len(emitted[payment_intent_id])} events for {payment_intent_id}"
                )
            self.truth.events.add(emitted[payment_intent_id][0])
        self.confirmed.clear()

    def deliver(self, event: dict[str, Any], *, expect_duplicate: bool = False) -> None:
        answer = self._expect(self.send_event(event), 200)
        if answer["duplicate"] != expect_duplicate:
            raise ScenarioError(
                f"event {event['id']}: duplicate={answer['duplicate']}, expected {expect_duplicate}"
            )
        self.truth.events.add(event["id"])

    def refund(self, payment: _Payment, *, partial: bool = False) -> dict[str, Any]:
        refunded = PRICE_CENTS // 2 if partial else PRICE_CENTS
        charge = _charge(
            self._stripe_id("ch"), payment.payment_intent_id, amount=PRICE_CENTS, refunded_cents=refunded
        )
        event = _event(self._stripe_id("evt"), "charge.refunded", charge)
        self.deliver(event)
        if not partial:
            self.truth.move(payment, "refunded")
        self.truth.count("partial_refunds" if partial else "refunds")
        return event

    def stripe_chaos(self, paid: list[_Payment], unpaid: list[_Lead]) -> None:
        """Refunds, duplicates, out-of-order events, orphans and events that cannot be processed."""
        for payment in paid:
            draw = self.rng.random()
            if draw < 0.25:
                event = self.refund(payment)
                if self.rng.random() < 0.5:  # Stripe delivered it twice
                    self.deliver(event, expect_duplicate=True)
                    self.truth.count("redelivered_events")
                else:  # Stripe reported the same change in a second Event object: stored, as a duplicate
                    twin = dict(event, id=self._stripe_id("evt"))
                    self.deliver(twin, expect_duplicate=True)
                    self.truth.count("twin_events")
            elif draw < 0.35:
                self.refund(payment, partial=True)
        for lead in unpaid:  # the refund arrives before the payment it refunds
            payment = self.checkout(lead)
            self.refund(payment)
            intent = _payment_intent(
                payment.payment_intent_id, amount=PRICE_CENTS, metadata={"event_id": str(lead.event_id)}
            )
            self.deliver(_event(self._stripe_id("evt"), "payment_intent.succeeded", intent))
            self.truth.move(payment, "succeeded")
            self.truth.count("out_of_order_payments")
        for position in range(max(1, self.spec.leads // 20) + 1):
            metadata = {"event_id": str(self._uuid())} if position else {}  # an unknown lead, or none at all
            payment = _Payment(self._stripe_id("pi"), None)
            self.truth.payments[payment.payment_intent_id] = payment
            intent = _payment_intent(payment.payment_intent_id, amount=PRICE_CENTS, metadata=metadata)
            self.deliver(_event(self._stripe_id("evt"), "payment_intent.succeeded", intent))
            self.truth.move(payment, "succeeded")
            self.truth.count("orphan_payments")
        for fixed in (False, True, False):
            payment_intent_id = self._stripe_id("pi")
            poison = _event(
                self._stripe_id("evt"),
                "payment_intent.succeeded",
                _payment_intent(payment_intent_id, amount=OVERFLOWING_CENTS, metadata={}),
            )
            self._expect(self.send_event(poison), 500)
            self.truth.events.add(poison["id"])
            if (
                fixed
            ):  # the next delivery of that event id can be processed: it settles, failure kept as history
                poison["data"]["object"] = _payment_intent(payment_intent_id, amount=PRICE_CENTS, metadata={})
                self.deliver(poison)
                payment = _Payment(payment_intent_id, None)
                self.truth.payments[payment_intent_id] = payment
                self.truth.move(payment, "succeeded")
                self.truth.count("events_failed_then_processed")
            else:
                self.truth.failed_events.add(poison["id"])
                self.truth.count("events_failed_for_good")

    # --- the whole run -------------------------------------------------------------------------------------

    def run(self) -> GroundTruth:
        if any(self._tables().values()):
            raise ScenarioError(
                "the ground truth covers the whole database: run the scenario on an empty one"
            )
        localstripe_webhook = {
            "url": f"{self.env.api_url}/v1/webhooks/stripe",
            "secret": self.env.stripe_webhook_secret,
        }
        response = httpx.post(
            f"{self.env.stripe_api_base}/_config/webhooks/{WEBHOOK_ID}",
            data={**localstripe_webhook, "events[]": list(WEBHOOK_EVENTS)},
            timeout=5,
        )
        if response.status_code != 200:
            raise ScenarioError(f"registering localstripe's webhook failed: {response.status_code}")
        self.clear_faults()
        n = self.spec.leads
        sizes = [max(1, n * share // 100) for share in (35, 15, 10, 15)]
        first, ml_rejected, crm_rejected, crm_outage = sizes
        partners = max(1, n - sum(sizes))

        leads = self.capture(first)
        self.settle()
        self.reject("mailerlite")
        leads += self.capture(ml_rejected)
        self.settle()
        self.clear_faults()
        self.reject("crm")
        leads += self.capture(crm_rejected)
        self.settle()
        self.clear_faults()
        self.faults("crm", fail_5xx_until=time.time() + 0.5)  # an outage the retries ride out
        self.truth.count("crm_outages")
        leads += self.capture(crm_outage)
        self.settle()
        self.clear_faults()
        # Second leads in the sessions of earlier ones: their consent becomes the session's.
        leads += self.capture(partners, sessions=[lead.session for lead in self.rng.sample(leads, partners)])
        self.settle()
        self.change_consent(leads)
        self.settle()

        buyers = [lead for lead in leads if self.rng.random() < 0.5]
        # Some buyers with analytics consent pay while sGTM rejects everything: their purchases die.
        tracked = [lead for lead in buyers if self.truth.consent(lead)[1]]
        late = tracked[: max(1, len(tracked) // 4)]
        orders: list[tuple[_Lead, str | None]] = []
        for lead in buyers:
            if lead in late:
                continue
            draw = self.rng.random()
            card = "pm_card_visa" if draw < 0.75 else "pm_card_chargeCustomerFail" if draw < 0.88 else None
            orders.append((lead, card))
        payments = self.pay_each(orders)
        paid = [
            payment for (_, card), payment in zip(orders, payments, strict=True) if card == "pm_card_visa"
        ]
        self.collect_emitted()
        self.settle()
        self.reject("sgtm")
        paid += self.pay_each([(lead, "pm_card_visa") for lead in late])
        self.collect_emitted()
        self.settle()
        self.clear_faults()
        unpaid = [lead for lead in leads if not any(p.lead is lead for p in self.truth.payments.values())]
        self.stripe_chaos(paid, self.rng.sample(unpaid, min(len(unpaid), max(1, n // 15))))
        self.settle()

        truth = GroundTruth(
            kind="scenario",
            seed=self.spec.seed,
            params=self.env.params,
            metrics=self.truth.metrics(),
            injected=dict(sorted(self.truth.injected.items())),
        )
        truth.save(self.env.database_path)
        return truth


def run_scenario(env: ScenarioEnvironment, spec: ScenarioSpec) -> GroundTruth:
    """Drive the scenario through the running API; write and return the ground truth it injected."""
    with httpx.Client(base_url=env.api_url, timeout=30) as client:
        return _Scenario(env, spec, client).run()
