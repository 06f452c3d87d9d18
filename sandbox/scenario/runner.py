"""One scenario run: the HTTP calls in order, each recorded in the model as the service must have taken it."""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import httpx
import stripe

from ingest.outbox.destinations.mailerlite import MAILERLITE_CUSTOM_FIELDS
from sandbox.crm import sign_crm_body
from sandbox.fakes import (
    CRM_API_TOKEN,
    CRM_SIGNING_SECRET,
    MAILERLITE_API_KEY,
    SGTM_API_SECRET,
    SGTM_MEASUREMENT_ID,
)
from sandbox.scenario.model import Lead, Payment, ServiceModel
from sandbox.scenario.spec import (
    CONSENT_MIX,
    SCENARIO_API_SETTINGS,
    UTM_MIX,
    WEBHOOK_EVENTS,
    WEBHOOK_ID,
    ScenarioEnvironment,
    ScenarioError,
    ScenarioSpec,
)
from sandbox.scenario.stripe_objects import build_charge, build_event, build_payment_intent
from sandbox.scenario.truth import GroundTruth

PRICE_CENTS = SCENARIO_API_SETTINGS["product_price_cents"]
WEBHOOK_DELAY_SECONDS = 1.5  # localstripe sends an event's webhooks about a second after the event
OVERFLOWING_CENTS = 2**64  # no BIGINT holds it: such an event can never be processed, and is kept as rejected
SETTLE_TIMEOUT_SECONDS = 90.0
POLL_SECONDS = 0.05
# Visitors served at once where their order cannot matter (leads of distinct sessions, payments of distinct
# leads): every random draw is made first, in order, and the model is updated in that order afterwards, so a
# seed gives the same run whatever the timing.
VISITORS = 8
T = TypeVar("T")
U = TypeVar("U")


class _Scenario:
    """One run: the HTTP calls in order, each recorded in the model as the service must have taken it."""

    def __init__(self, env: ScenarioEnvironment, spec: ScenarioSpec, client: httpx.Client) -> None:
        self.env = env
        self.spec = spec
        self.rng = random.Random(spec.seed)
        self.http = client
        self.admin = {"Authorization": f"Bearer {env.admin_token}"}
        self.truth = ServiceModel(env.params)
        self.started = int(time.time()) - 60  # localstripe's events of this run are created after this
        # PaymentIntents confirmed on localstripe, their events not yet looked up.
        self.confirmed: list[str] = []
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

    def lose(self, destination: str) -> None:
        """The destination answers 2xx and keeps nothing (a silent loss) until the faults are cleared."""
        self.faults(destination, silent_loss=True)
        self.truth.losing.add(destination)
        self.truth.count(f"{destination}_silent_loss_phases")

    def clear_faults(self) -> None:
        for destination in self.env.fakes:
            self.faults(destination, clear=True)
        self.truth.rejecting.clear()
        self.truth.losing.clear()

    def fresh_systems(self) -> None:
        """Empty fakes and localstripe, so the systems' records are this run's alone; MailerLite's custom fields."""
        for url in self.env.fakes.values():
            response = httpx.post(f"{url}/_sandbox/reset", timeout=5)
            if response.status_code != 204:
                raise ScenarioError(f"resetting the fake at {url} failed: {response.status_code}")
        response = httpx.delete(f"{self.env.stripe_api_base}/_config/data", timeout=5)
        if response.status_code != 200:
            raise ScenarioError(f"flushing localstripe failed: {response.status_code}")
        mailerlite = self.env.fakes.get("mailerlite")
        if mailerlite is not None:
            for name in MAILERLITE_CUSTOM_FIELDS:  # as `attribution mailerlite setup-fields` would
                httpx.post(
                    f"{mailerlite}/api/fields",
                    json={"name": name, "type": "text"},
                    headers={"Authorization": f"Bearer {MAILERLITE_API_KEY}"},
                    timeout=5,
                )

    def send_event(self, event: dict[str, Any], *, body: str | None = None) -> httpx.Response:
        text = body if body is not None else json.dumps(event)
        header = stripe.WebhookSignature.generate_signature_header(text, self.env.stripe_webhook_secret)
        return self.http.post(
            "/v1/webhooks/stripe",
            content=text,
            headers={"Stripe-Signature": header, "Content-Type": "application/json"},
        )

    # --- leads and consent ---------------------------------------------------------------------------------

    def new_lead(self, index: int, *, session: uuid.UUID | None = None) -> tuple[Lead, bool, bool]:
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
        lead = Lead(index, event_id, session, body)
        return lead, marketing, analytics

    def capture(self, count: int, *, sessions: list[uuid.UUID] | None = None) -> list[Lead]:
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

    def _post_lead(self, draft: tuple[Lead, bool, bool, bool]) -> None:
        lead, _, _, retried = draft
        answer = self._expect(self.http.post("/v1/leads", json=lead.body), 200)
        if answer["duplicate"] or answer["event_id"] != str(lead.event_id):
            raise ScenarioError(f"lead {lead.event_id} was not captured as new: {answer}")
        if retried:
            again = self._expect(self.http.post("/v1/leads", json=lead.body), 200)
            if not again["duplicate"]:
                raise ScenarioError(f"a repeated lead {lead.event_id} was not answered as a duplicate")

    def change_consent(self, leads: list[Lead]) -> None:
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

    def checkout(self, lead: Lead) -> Payment:
        payment = Payment(self._create_intent(lead), lead)
        self.truth.payments[payment.payment_intent_id] = payment
        return payment

    def _create_intent(self, lead: Lead) -> str:
        answer = self._expect(
            self.http.post("/v1/payment-intents", json={"event_id": str(lead.event_id)}), 200
        )
        return str(answer["payment_intent_id"])

    def pay_each(self, orders: list[tuple[Lead, str | None]]) -> list[Payment]:
        """Each lead checks out through the API and, given a card, pays on localstripe (whose webhook tells the
        API); without one, the checkout is abandoned. Visitors at once; the model is updated in order after."""
        outcomes = self._each(self._pay, orders)
        payments = []
        for (lead, card), (payment_intent_id, status) in zip(orders, outcomes, strict=True):
            payment = Payment(payment_intent_id, lead)
            self.truth.payments[payment_intent_id] = payment
            payments.append(payment)
            if card is None:
                self.truth.count("abandoned_checkouts")
                continue
            # The event localstripe sends is looked up with the others of this phase (collect_emitted).
            self.confirmed.append(payment_intent_id)
            payment.in_stripe = status == "succeeded"
            self.truth.move(payment, status)
            self.truth.count(f"payments_{status}")
        return payments

    def _pay(self, order: tuple[Lead, str | None]) -> tuple[str, str]:
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

    def refund(self, payment: Payment, *, partial: bool = False) -> dict[str, Any]:
        refunded = PRICE_CENTS // 2 if partial else PRICE_CENTS
        charge = build_charge(
            self._stripe_id("ch"), payment.payment_intent_id, amount=PRICE_CENTS, refunded_cents=refunded
        )
        event = build_event(self._stripe_id("evt"), "charge.refunded", charge)
        self.deliver(event)
        if not partial:
            self.truth.move(payment, "refunded")
        self.truth.count("partial_refunds" if partial else "refunds")
        return event

    def stripe_chaos(self, paid: list[Payment], unpaid: list[Lead]) -> None:
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
            intent = build_payment_intent(
                payment.payment_intent_id, amount=PRICE_CENTS, metadata={"event_id": str(lead.event_id)}
            )
            self.deliver(build_event(self._stripe_id("evt"), "payment_intent.succeeded", intent))
            self.truth.move(payment, "succeeded")
            self.truth.count("out_of_order_payments")
        for position in range(max(1, self.spec.leads // 20) + 1):
            metadata = {"event_id": str(self._uuid())} if position else {}  # an unknown lead, or none at all
            payment = Payment(self._stripe_id("pi"), None)
            self.truth.payments[payment.payment_intent_id] = payment
            intent = build_payment_intent(payment.payment_intent_id, amount=PRICE_CENTS, metadata=metadata)
            self.deliver(build_event(self._stripe_id("evt"), "payment_intent.succeeded", intent))
            self.truth.move(payment, "succeeded")
            self.truth.count("orphan_payments")
        for retried in (False, True, False):
            poison = build_event(
                self._stripe_id("evt"),
                "payment_intent.succeeded",
                build_payment_intent(self._stripe_id("pi"), amount=OVERFLOWING_CENTS, metadata={}),
            )
            # Acknowledged as rejected, so that Stripe stops retrying; a retry that comes anyway changes nothing.
            for _ in range(2 if retried else 1):
                if self._expect(self.send_event(poison), 200).get("status") != "rejected":
                    raise ScenarioError(f"event {poison['id']} with an overflowing amount was not rejected")
            self.truth.events.add(poison["id"])
            self.truth.failed_events.add(poison["id"])
            self.truth.count("events_failed_for_good")

    # --- records the systems hold that we never issued ------------------------------------------------------

    def foreign_records(self, leads: list[Lead]) -> None:
        """Records unknown to us in each system: subscribers, a CRM contact and a GA4 purchase naming event_ids we
        never issued, and a payment on Stripe for one of our leads that no webhook told us of."""
        fakes = self.env.fakes
        for position in range(2):
            event_id = str(self._uuid())
            body = {
                "email": f"foreign.{self.spec.seed}.{position}@example.com",
                "fields": {"event_id": event_id},
            }
            answer = httpx.post(
                f"{fakes['mailerlite']}/api/subscribers",
                json=body,
                headers={"Authorization": f"Bearer {MAILERLITE_API_KEY}"},
                timeout=5,
            )
            self._expect(answer, 200, 201)
            self.truth.foreign.setdefault("mailerlite", set()).add(event_id)
        self._expect(  # a subscriber naming no event_id at all: someone else's, not judged
            httpx.post(
                f"{fakes['mailerlite']}/api/subscribers",
                json={"email": f"newsletter.{self.spec.seed}@example.com"},
                headers={"Authorization": f"Bearer {MAILERLITE_API_KEY}"},
                timeout=5,
            ),
            200,
            201,
        )
        event_id = str(self._uuid())
        contact = json.dumps(
            {"event_id": event_id, "email": f"foreign.{self.spec.seed}@example.com", "lead_status": "lead"}
        ).encode()
        headers = {
            "Authorization": f"Bearer {CRM_API_TOKEN}",
            "Idempotency-Key": f"foreign-{event_id}",
            "X-Attribution-Signature": sign_crm_body(CRM_SIGNING_SECRET, contact, int(time.time())),
            "Content-Type": "application/json",
        }
        self._expect(
            httpx.post(f"{fakes['crm']}/webhooks/attribution", content=contact, headers=headers), 200
        )
        self.truth.foreign.setdefault("crm", set()).add(event_id)
        event_id = str(self._uuid())
        purchase = {
            "client_id": "555.666",
            "events": [
                {
                    "name": "purchase",
                    "params": {"transaction_id": self._stripe_id("pi"), "value": 47, "currency": "EUR",
                               "event_id": event_id},
                }
            ],
        }  # fmt: skip
        response = httpx.post(
            f"{fakes['sgtm']}/mp/collect",
            params={"measurement_id": SGTM_MEASUREMENT_ID, "api_secret": SGTM_API_SECRET},
            json=purchase,
            timeout=5,
        )
        if response.status_code != 204:
            raise ScenarioError(f"the sGTM fake refused a foreign purchase: {response.status_code}")
        self.truth.foreign.setdefault("ga4", set()).add(event_id)
        self.unseen_payment(leads)

    def unseen_payment(self, leads: list[Lead]) -> None:
        """A lead pays on Stripe while no webhook reaches us: Stripe holds a payment we never recorded."""
        paying = [lead for lead in leads if not any(p.lead is lead for p in self.truth.payments.values())]
        lead = (paying or leads)[0]
        register = f"{self.env.stripe_api_base}/_config/webhooks/{WEBHOOK_ID}"
        webhook = {"url": f"{self.env.api_url}/v1/webhooks/stripe", "secret": self.env.stripe_webhook_secret}
        self._expect_ok(httpx.post(register, data={**webhook, "events[]": ["customer.created"]}, timeout=5))
        try:
            intent = self.stripe.v1.payment_intents.create(
                params={
                    "amount": PRICE_CENTS,
                    "currency": "eur",
                    "metadata": {"event_id": str(lead.event_id)},
                }
            )
            self.stripe.v1.payment_intents.update(intent.id, params={"payment_method": "pm_card_visa"})
            self.stripe.v1.payment_intents.confirm(intent.id)
            time.sleep(
                WEBHOOK_DELAY_SECONDS
            )  # its webhook is sent (to nobody) before ours is registered again
        finally:
            self._expect_ok(
                httpx.post(register, data={**webhook, "events[]": list(WEBHOOK_EVENTS)}, timeout=5)
            )
        self.truth.foreign.setdefault("stripe", set()).add(str(lead.event_id))
        self.truth.count("payments_webhooks_never_saw")

    def _expect_ok(self, response: httpx.Response) -> None:
        if response.status_code != 200:
            raise ScenarioError(f"localstripe answered {response.status_code}: {response.text[:200]}")

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
        self.fresh_systems()
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
        self.lose("mailerlite")  # meanwhile MailerLite answers 2xx and keeps nothing
        leads += self.capture(crm_outage)
        self.settle()
        self.clear_faults()
        # Second leads in the sessions of earlier ones: their consent becomes the session's. The CRM loses them.
        self.lose("crm")
        leads += self.capture(partners, sessions=[lead.session for lead in self.rng.sample(leads, partners)])
        self.settle()
        self.clear_faults()
        self.change_consent(leads)
        self.settle()

        buyers = [lead for lead in leads if self.rng.random() < 0.5]
        # Some buyers with analytics consent pay while sGTM and Meta reject everything: their purchases die.
        tracked = [lead for lead in buyers if self.truth.consent(lead)[1]]
        late = tracked[: max(1, len(tracked) // 4)]
        orders: list[tuple[Lead, str | None]] = []
        for lead in buyers:
            if lead in late:
                continue
            draw = self.rng.random()
            card = "pm_card_visa" if draw < 0.75 else "pm_card_chargeCustomerFail" if draw < 0.88 else None
            orders.append((lead, card))
        # The first half pay while MailerLite and sGTM keep nothing they accept (subscribers stale, purchases lost).
        cut = len(orders) // 2
        self.lose("mailerlite")
        self.lose("sgtm")
        payments = self.pay_each(orders[:cut])
        self.collect_emitted()
        self.settle()
        self.clear_faults()
        payments += self.pay_each(orders[cut:])
        paid = [
            payment for (_, card), payment in zip(orders, payments, strict=True) if card == "pm_card_visa"
        ]
        self.collect_emitted()
        self.settle()
        self.reject("sgtm")
        self.reject("meta")
        paid += self.pay_each([(lead, "pm_card_visa") for lead in late])
        self.collect_emitted()
        self.settle()
        self.clear_faults()
        unpaid = [lead for lead in leads if not any(p.lead is lead for p in self.truth.payments.values())]
        self.lose("mailerlite")  # the refunds' upserts are lost: MailerLite keeps the earlier payment status
        self.stripe_chaos(paid, self.rng.sample(unpaid, min(len(unpaid), max(1, n // 15))))
        self.settle()
        self.clear_faults()
        self.foreign_records(leads)

        truth = GroundTruth(
            kind="scenario",
            seed=self.spec.seed,
            params=self.env.params,
            metrics=self.truth.metrics(),
            injected=dict(sorted(self.truth.injected.items())),
            systems=self.truth.systems(),
        )
        truth.save(self.env.database_path)
        return truth


def run_scenario(env: ScenarioEnvironment, spec: ScenarioSpec) -> GroundTruth:
    """Drive the scenario through the running API; write and return the ground truth it injected."""
    with httpx.Client(base_url=env.api_url, timeout=30) as client:
        return _Scenario(env, spec, client).run()
