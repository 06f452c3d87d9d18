"""localstripe as a child process: the official SDK talks to it and its webhooks carry real signatures."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
import stripe

from sandbox import LocalStripe

WEBHOOK_SECRET = "whsec_test_sandbox_receiver"


class WebhookReceiver:
    """A tiny loopback HTTP server that keeps (body, Stripe-Signature) of every POST."""

    def __init__(self) -> None:
        self.deliveries: queue.Queue[tuple[bytes, str]] = queue.Queue()
        deliveries = self.deliveries

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                deliveries.put((body, self.headers.get("Stripe-Signature", "")))
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/stripe/webhook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def next_event(self, event_type: str, timeout: float = 5.0) -> tuple[bytes, str]:
        """Wait for the next delivery of one event type."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            body, signature = self.deliveries.get(timeout=left)
            if json.loads(body)["type"] == event_type:
                return body, signature
        raise TimeoutError(f"no {event_type} webhook within {timeout} s")


@pytest.fixture(scope="module")
def localstripe() -> Iterator[LocalStripe]:
    with LocalStripe() as running:
        yield running


@pytest.fixture(scope="module")
def receiver(localstripe: LocalStripe) -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    receiver.thread.start()
    localstripe.register_webhook("test-receiver", receiver.url, WEBHOOK_SECRET)
    yield receiver
    receiver.server.shutdown()
    receiver.server.server_close()


@pytest.fixture
def client(localstripe: LocalStripe) -> stripe.StripeClient:
    return stripe.StripeClient("sk_test_sandbox", base_addresses={"api": localstripe.url})


def test_sdk_creates_a_payment_intent(localstripe: LocalStripe, client: stripe.StripeClient) -> None:
    intent = client.v1.payment_intents.create(
        params={"amount": 4700, "currency": "eur", "metadata": {"event_id": "evt-local-1"}}
    )
    fetched = localstripe.client().v1.payment_intents.retrieve(intent.id)

    assert localstripe.url.startswith("http://127.0.0.1:")
    assert intent.id.startswith("pi_")
    assert (intent.client_secret or "").startswith(intent.id + "_secret_")
    assert (fetched.amount, fetched.currency, fetched.status) == (4700, "eur", "requires_payment_method")
    assert fetched.metadata["event_id"] == "evt-local-1"


def test_confirmed_payment_intent_sends_a_signed_succeeded_webhook(
    client: stripe.StripeClient, receiver: WebhookReceiver
) -> None:
    intent = client.v1.payment_intents.create(
        params={"amount": 4700, "currency": "eur", "metadata": {"event_id": "evt-local-2"}}
    )
    client.v1.payment_intents.update(intent.id, params={"payment_method": "pm_card_visa"})
    confirmed = client.v1.payment_intents.confirm(intent.id)

    body, signature = receiver.next_event("payment_intent.succeeded")
    event = stripe.Webhook.construct_event(body, signature, WEBHOOK_SECRET)

    assert confirmed.status == "succeeded"
    assert event.type == "payment_intent.succeeded"
    assert event.data.object["id"] == intent.id
    assert event.data.object["metadata"]["event_id"] == "evt-local-2"
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(body.replace(b"4700", b"4701"), signature, WEBHOOK_SECRET)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(body, signature, "whsec_someone_else")


def test_card_payment_method_created_from_4242_can_be_confirmed(client: stripe.StripeClient) -> None:
    method = client.v1.payment_methods.create(
        params={
            "type": "card",
            "card": {"number": "4242424242424242", "exp_month": 12, "exp_year": 2030, "cvc": "123"},
        }
    )
    intent = client.v1.payment_intents.create(
        params={"amount": 4700, "currency": "eur", "payment_method": method.id}
    )

    assert client.v1.payment_intents.confirm(intent.id).status == "succeeded"


def test_quirk_idempotency_key_is_ignored(client: stripe.StripeClient) -> None:
    first = client.v1.payment_intents.create(
        params={"amount": 4700, "currency": "eur"}, options={"idempotency_key": "same-key"}
    )
    second = client.v1.payment_intents.create(
        params={"amount": 4700, "currency": "eur"}, options={"idempotency_key": "same-key"}
    )

    assert first.id != second.id


def test_quirk_confirm_with_a_payment_method_is_not_implemented(client: stripe.StripeClient) -> None:
    intent = client.v1.payment_intents.create(params={"amount": 4700, "currency": "eur"})

    with pytest.raises(stripe.APIError) as raised:
        client.v1.payment_intents.confirm(intent.id, params={"payment_method": "pm_card_visa"})
    assert raised.value.http_status == 500
    assert "Not implemented" in str(raised.value)


def test_register_webhook_refuses_a_non_http_url(localstripe: LocalStripe) -> None:
    with pytest.raises(RuntimeError, match="registering webhook"):
        localstripe.register_webhook("bad", "ftp://127.0.0.1/hook", WEBHOOK_SECRET)


def test_child_stops_when_its_parent_disappears() -> None:
    code = (
        "import sys, time; from sandbox import LocalStripe; "
        "ls = LocalStripe().start(); print(ls.url, flush=True); time.sleep(60)"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        url = parent.stdout.readline().strip()
        assert httpx.get(url + "/js.stripe.com/v3/").status_code == 200
    finally:
        parent.kill()
        parent.wait()

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            httpx.get(url + "/js.stripe.com/v3/", timeout=1)
        except httpx.TransportError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("localstripe outlived its killed parent")


def test_stop_ends_the_child_process() -> None:
    running = LocalStripe().start()
    url = running.url
    assert httpx.get(url + "/js.stripe.com/v3/").status_code == 200

    running.stop()
    running.stop()

    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/js.stripe.com/v3/")
