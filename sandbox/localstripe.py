"""Run localstripe (a stateful fake Stripe API) as a child process on a free loopback port.

How it is launched: localstripe's own CLI (`localstripe --port N [--from-scratch]`, i.e. `localstripe.server:start`)
has no host option and binds `[::]` on all interfaces, and without `--from-scratch` it reloads the state a previous
run left in /tmp/localstripe.pickle. So `LocalStripe` binds a listening socket on 127.0.0.1 itself (port 0 = the OS
picks) and hands it to a child running `sandbox/localstripe_server.py`, which serves localstripe's own aiohttp
app (`localstripe.server.app`, same routes and middlewares as the CLI) on it, always from an empty store and
without the pickle file. Readiness is `GET /js.stripe.com/v3/` answering 200; stop is SIGTERM, then SIGKILL after
5 s; the child also stops by itself when its stdin (a pipe from the parent) closes, so a killed parent leaves no
orphan holding the port.

Quirks, seen with stripe (Python SDK) 16.1.0 and localstripe 1.15.10, through `stripe.StripeClient(...,
base_addresses={"api": url})`:

* Idempotency-Key is ignored: two `payment_intents.create` with one `idempotency_key` give two PaymentIntents.
* `payment_intents.confirm(id, params={"payment_method": ...})` answers 500 "Not implemented" (SDK raises
  `stripe.APIError`). Set the method with `payment_intents.update(id, params={"payment_method": "pm_card_visa"})`
  and then `confirm(id)` with no params; or pass `payment_method` and `confirm=True` to `create` - both work.
* `payment_intents.create` answers 400 "Unexpected <name>" for any parameter it does not know, including
  `automatic_payment_methods`, `description`, `receipt_email` and `statement_descriptor_suffix`. Known ones:
  amount, currency, customer, payment_method, metadata, payment_method_types, capture_method,
  payment_method_options, confirm, off_session.
* The special test id `pm_card_visa` stays as is: the PaymentIntent's `payment_method` is "pm_card_visa", not a
  new `pm_...` id as on real Stripe. `payment_methods.create(type="card", card={number: "4242424242424242", ...})`
  gives a real `pm_...` id.
* Webhooks: each event is POSTed once, about 1 s after it is created (measured 1.0 s), to every registered
  webhook, with no retry when the receiver answers 5xx or is down. `Stripe-Signature` is `t=<event.created>,
  v1=<hmac>` (one v1) and verifies with `stripe.Webhook.construct_event`. Every event type goes to a webhook
  registered without `events` (e.g. `customer.created` too).
* The event JSON has `api_version` "2017-08-15" whatever the SDK asks for, and no `request` / `pending_webhooks`.
  The PaymentIntent inside it (and in API answers) has `latest_charge` as an expanded Charge object, not a
  `ch_...` string as on real Stripe, a deprecated `charges` list, and no `amount_received`.
* `pm_card_visa_chargeDeclined` (4000 0000 0000 0002) is only declined when attached to a customer: with
  `confirm=True` the PaymentIntent *succeeds*. `pm_card_chargeCustomerFail` (4000 0000 0000 0341) does fail:
  402 `stripe.CardError` and a `payment_intent.payment_failed` event.
* Refunds: `refunds.create(payment_intent=...)` or `(charge=...)` succeed, but emit no event (no
  `charge.refunded`), leave the PaymentIntent "succeeded", and the same charge can be fully refunded twice.
* Lists (`events.list`, `payment_intents.list`, ...) come oldest first (real Stripe: newest first);
  `starting_after` pages forward in time, so `auto_paging_iter()` works; `ending_before` and `types` answer 400.
  `events.list` filters `type` and `created[gt|gte|lt|lte]`. `payment_intents.search` answers 404.
* Any `sk_...` key is accepted (even `sk_live_...`); `pk_...` keys get 401 except on the few public endpoints.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

import httpx
import stripe

SECRET_KEY = "sk_test_sandbox_localstripe"  # noqa: S105 - synthetic sandbox value
WEBHOOK_SECRET = "whsec_sandbox_localstripe"  # noqa: S105 - synthetic sandbox value
_READY_PATH = "/js.stripe.com/v3/"
# Run as a script, not with -m: importing the `ingest` package in the child would double its start-up time.
# -P keeps this directory off sys.path, where our localstripe.py would shadow the real package.
_SERVER_SCRIPT = Path(__file__).with_name("localstripe_server.py")
_STOP_TIMEOUT_SECONDS = 5.0


class LocalStripeError(RuntimeError):
    """localstripe could not start, or answered a configuration call with an error."""


class LocalStripe:
    """A localstripe child process on 127.0.0.1; use as a context manager or call start() / stop()."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        secret_key: str = SECRET_KEY,
        webhook_secret: str = WEBHOOK_SECRET,
        startup_timeout: float = 15.0,
    ) -> None:
        self.host = host
        self.port = port
        self.secret_key = secret_key
        self.webhook_secret = webhook_secret
        self.startup_timeout = startup_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None

    def __enter__(self) -> LocalStripe:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Base URL of the fake Stripe API, e.g. http://127.0.0.1:PORT (what STRIPE_API_BASE holds)."""
        if self._process is None:
            raise LocalStripeError("localstripe not started")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def stripe_js_url(self) -> str:
        """URL of localstripe's stand-in for https://js.stripe.com/v3/."""
        return self.url + _READY_PATH

    def start(self) -> LocalStripe:
        """Start the child process and wait until it answers HTTP."""
        if self._process is not None:
            raise LocalStripeError("localstripe already started")
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            sock.listen(128)
            self.port = sock.getsockname()[1]
            self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the child process
            # The listening socket is handed to the child, so the port is never free for another process to
            # take between choosing it and serving on it.
            self._process = subprocess.Popen(  # noqa: S603 - fixed argv, our own interpreter and module
                [sys.executable, "-P", str(_SERVER_SCRIPT), "--fd", str(sock.fileno())],
                pass_fds=(sock.fileno(),),
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=self._stderr,
                # Its own session: a terminal's Ctrl-C reaches only our process, which stops it (stop(), or its
                # stdin closing when we die), so it never goes before what still talks to it.
                start_new_session=True,
            )
        finally:
            sock.close()
        try:
            self._wait_until_ready(self._process)
        except LocalStripeError:
            self.stop()
            raise
        return self

    def _wait_until_ready(self, process: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + self.startup_timeout
        with httpx.Client(timeout=1.0) as client:
            while time.monotonic() < deadline:
                if process.poll() is not None:
                    raise LocalStripeError(
                        f"localstripe exited with code {process.returncode}: {self._stderr_tail()}"
                    )
                try:
                    if client.get(self.url + _READY_PATH).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
        raise LocalStripeError(
            f"localstripe did not answer within {self.startup_timeout} s: {self._stderr_tail()}"
        )

    def _stderr_tail(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")[-2000:]

    def stop(self) -> None:
        """Terminate the child process (kill it if it does not stop in time); safe to call twice."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=_STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=_STOP_TIMEOUT_SECONDS)
        if process is not None and process.stdin is not None:
            process.stdin.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def register_webhook(
        self, webhook_id: str, url: str, secret: str, events: Sequence[str] | None = None
    ) -> None:
        """Make localstripe POST its events (optionally only these types) to url, signed with secret."""
        form: dict[str, str | list[str]] = {"url": url, "secret": secret}
        if events is not None:
            form["events[]"] = list(events)
        response = httpx.post(f"{self.url}/_config/webhooks/{webhook_id}", data=form, timeout=5.0)
        if response.status_code != 200:
            raise LocalStripeError(f"registering webhook {webhook_id!r} failed: {response.status_code}")

    def flush(self) -> None:
        """Delete every object localstripe holds (registered webhooks stay)."""
        response = httpx.delete(f"{self.url}/_config/data", timeout=5.0)
        if response.status_code != 200:
            raise LocalStripeError(f"flushing localstripe failed: {response.status_code}")

    def client(self, api_key: str | None = None) -> stripe.StripeClient:
        """Return an official Stripe SDK client pointed at this localstripe."""
        return stripe.StripeClient(api_key or self.secret_key, base_addresses={"api": self.url})

    def env(self) -> dict[str, str]:
        """Return the STRIPE_* environment variables that point the service at this localstripe."""
        return {
            "STRIPE_API_BASE": self.url,
            "STRIPE_SECRET_KEY": self.secret_key,
            "STRIPE_WEBHOOK_SECRET": self.webhook_secret,
        }
