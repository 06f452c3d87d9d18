"""The MailerLite, CRM, sGTM and Meta fakes served on loopback, and the controller tests and the CLI use.

`Sandbox` binds one socket per fake (port 0 lets the OS choose), then serves the four ASGI apps with uvicorn
from one background thread and event loop. Each fake records what it receives and injects faults on demand
(see `sandbox.harness` for the fault JSON); the same controls are reachable over HTTP under `/_sandbox/`
on every fake's port, so another process (the demo, a notebook) can drive them.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import threading
import time
from collections.abc import Mapping
from types import FrameType, TracebackType
from typing import Any, Literal, get_args

import uvicorn

from sandbox.crm import CrmFake
from sandbox.harness import Clock, Faults, Harness, RecordedRequest, faults_from_kwargs
from sandbox.localstripe import LocalStripe
from sandbox.mailerlite import MailerLiteFake
from sandbox.meta import MetaFake
from sandbox.sgtm import SgtmFake

Destination = Literal["mailerlite", "crm", "sgtm", "meta"]
DESTINATIONS: tuple[Destination, ...] = get_args(Destination)

MAILERLITE_API_KEY = "sandbox-mailerlite-api-key"
MAILERLITE_GROUP_ID = "110000000000000001"
CRM_API_TOKEN = "sandbox-crm-api-token"  # noqa: S105 - synthetic sandbox value
CRM_SIGNING_SECRET = "sandbox-crm-signing-secret"  # noqa: S105 - synthetic sandbox value
SGTM_MEASUREMENT_ID = "G-SANDBOX0001"
SGTM_API_SECRET = "sandbox-sgtm-api-secret"  # noqa: S105 - synthetic sandbox value
META_PIXEL_ID = "100000000000001"
META_ACCESS_TOKEN = "sandbox-meta-access-token"  # noqa: S105 - synthetic sandbox value
META_API_VERSION = "v21.0"
CRM_PATH = "/webhooks/attribution"
SGTM_PATH = "/mp/collect"
_STARTUP_TIMEOUT_SECONDS = 10.0


class SandboxError(RuntimeError):
    """The sandbox could not start, or was used before it started."""


def _bind(host: str, port: int) -> socket.socket:
    # IPPROTO_TCP given explicitly: asyncio only sets TCP_NODELAY on accepted sockets whose proto says TCP, and
    # without it every JSON answer (headers and body written separately) waits ~40 ms on delayed ACKs.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(128)
    sock.setblocking(False)
    return sock


class Sandbox:
    """Starts, controls and stops the four fakes; use as a context manager or call start() / stop()."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        ports: Mapping[str, int] | None = None,
        *,
        seed: int = 0,
        clock: Clock = time.time,
        crm_api_token: str | None = CRM_API_TOKEN,
        crm_signing_secret: str | None = CRM_SIGNING_SECRET,
        sgtm_measurement_id: str | None = SGTM_MEASUREMENT_ID,
        sgtm_api_secret: str | None = SGTM_API_SECRET,
    ) -> None:
        unknown = set(ports or {}) - set(DESTINATIONS)
        if unknown:
            raise ValueError(f"unknown sandbox destinations in ports: {sorted(unknown)}")
        self.host = host
        self.ports: dict[Destination, int] = {d: (ports or {}).get(d, 0) for d in DESTINATIONS}
        self.mailerlite = MailerLiteFake(MAILERLITE_API_KEY, [MAILERLITE_GROUP_ID], clock)
        self.crm = CrmFake(crm_api_token, crm_signing_secret, clock)
        self.sgtm = SgtmFake(sgtm_measurement_id, sgtm_api_secret, clock)
        self.meta = MetaFake(META_PIXEL_ID, META_ACCESS_TOKEN, clock)
        self._harnesses: dict[Destination, Harness] = {
            "mailerlite": Harness("mailerlite", self.mailerlite, clock, seed),
            "crm": Harness("crm", self.crm, clock, seed),
            "sgtm": Harness("sgtm", self.sgtm, clock, seed),
            "meta": Harness("meta", self.meta, clock, seed),
        }
        self._base_urls: dict[Destination, str] = {}
        self._servers: list[uvicorn.Server] = []
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> Sandbox:
        """Bind the sockets, start serving in a background thread and wait until all four answer."""
        if self._thread is not None:
            raise SandboxError("sandbox already started")
        sockets: dict[Destination, socket.socket] = {}
        try:
            for dest in DESTINATIONS:
                sockets[dest] = _bind(self.host, self.ports[dest])
        except OSError as exc:
            for sock in sockets.values():
                sock.close()
            raise SandboxError(f"cannot bind the sandbox on {self.host}: {exc}") from exc
        url_host = f"[{self.host}]" if ":" in self.host else self.host
        for dest, sock in sockets.items():
            self.ports[dest] = sock.getsockname()[1]
            self._base_urls[dest] = f"http://{url_host}:{self.ports[dest]}"

        self._servers = [
            uvicorn.Server(
                uvicorn.Config(
                    self._harnesses[dest],
                    lifespan="off",
                    log_config=None,
                    log_level="warning",
                    access_log=False,
                    timeout_graceful_shutdown=2,
                )
            )
            for dest in DESTINATIONS
        ]
        self._ready.clear()
        self._error = None
        self._thread = threading.Thread(
            target=self._serve, args=(list(sockets.values()),), name="sandbox-fakes", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(_STARTUP_TIMEOUT_SECONDS) or self._error is not None:
            error = self._error
            self._error = None
            self.stop()
            raise SandboxError("the sandbox fakes did not start") from error
        return self

    def _serve(self, sockets: list[socket.socket]) -> None:
        try:
            asyncio.run(self._serve_all(sockets))
        except BaseException as exc:  # re-raised in the caller's thread by start() or stop()
            self._error = exc
            self._ready.set()
        finally:
            for sock in sockets:
                sock.close()

    async def _serve_all(self, sockets: list[socket.socket]) -> None:
        tasks = [
            asyncio.create_task(server.serve(sockets=[sock]))
            for server, sock in zip(self._servers, sockets, strict=True)
        ]
        while not all(server.started for server in self._servers):
            if any(task.done() for task in tasks):
                break
            await asyncio.sleep(0.005)
        if all(server.started for server in self._servers):
            self._ready.set()
        else:
            self._error = SandboxError("a sandbox server stopped during start-up")
            for server in self._servers:
                server.should_exit = True
            self._ready.set()
        await asyncio.gather(*tasks)

    def stop(self) -> None:
        """Stop serving and wait for the thread to end; safe to call twice."""
        for server in self._servers:
            server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=_STARTUP_TIMEOUT_SECONDS)
            if self._thread.is_alive():
                for server in self._servers:
                    server.force_exit = True
                self._thread.join(timeout=_STARTUP_TIMEOUT_SECONDS)
        self._thread = None
        self._servers = []
        error, self._error = self._error, None
        if error is not None:
            raise SandboxError("the sandbox fakes failed while serving") from error

    def base_url(self, dest: Destination) -> str:
        """Return http://host:port of one fake."""
        try:
            return self._base_urls[dest]
        except KeyError:
            raise SandboxError("sandbox not started") from None

    @property
    def mailerlite_url(self) -> str:
        """Base URL of the MailerLite fake (what MAILERLITE_BASE_URL holds)."""
        return self.base_url("mailerlite")

    @property
    def crm_url(self) -> str:
        """Full webhook URL of the CRM fake."""
        return self.base_url("crm") + CRM_PATH

    @property
    def sgtm_url(self) -> str:
        """Full collect URL of the sGTM fake (without the query string)."""
        return self.base_url("sgtm") + SGTM_PATH

    @property
    def meta_url(self) -> str:
        """Base URL of the Meta fake (what META_BASE_URL holds)."""
        return self.base_url("meta")

    def env(self) -> dict[str, str]:
        """Return the environment variables that point the service at these fakes."""
        values: dict[str, str | None] = {
            "MAILERLITE_BASE_URL": self.mailerlite_url,
            "MAILERLITE_API_KEY": MAILERLITE_API_KEY,
            "MAILERLITE_GROUP_ID": MAILERLITE_GROUP_ID,
            "CRM_WEBHOOK_URL": self.crm_url,
            "CRM_API_TOKEN": self.crm.api_token,
            "CRM_SIGNING_SECRET": self.crm.signing_secret,
            "SGTM_ENDPOINT": self.sgtm_url,
            "SGTM_MEASUREMENT_ID": self.sgtm.measurement_id,
            "SGTM_API_SECRET": self.sgtm.api_secret,
            "META_BASE_URL": self.meta_url,
            "META_PIXEL_ID": self.meta.pixel_id,
            "META_ACCESS_TOKEN": self.meta.access_token,
            "META_API_VERSION": META_API_VERSION,
        }
        return {name: value for name, value in values.items() if value is not None}

    def requests(self, dest: Destination) -> list[RecordedRequest]:
        """Return what one fake received, oldest first (control calls under /_sandbox/ excluded)."""
        return self._harnesses[dest].log.all()

    def arrived(self, dest: Destination) -> int:
        """How many requests reached one fake (body read), including those a latency fault still holds."""
        return self._harnesses[dest].log.arrived()

    def clear(self, dest: Destination) -> None:
        """Forget the requests one fake recorded."""
        self._harnesses[dest].log.clear()

    def state(self, dest: Destination) -> dict[str, Any]:
        """Return one fake's stored data (subscribers, contacts and counters, accepted payloads)."""
        return self._harnesses[dest].fake.state()

    def faults(self, dest: Destination) -> Faults:
        """Return the faults currently set for one fake."""
        return self._harnesses[dest].faults.current()

    def set_faults(
        self,
        dest: Destination,
        *,
        clear: bool = False,
        error_rate: float | None = None,
        seed: int | None = None,
        fail_5xx_until: float | None = None,
        status_429_retry_after: int | None = None,
        count_429: int | None = None,
        latency_ms: int | None = None,
        reset_connection: bool | None = None,
        reject_status: int | None = None,
        silent_loss: bool | None = None,
    ) -> Faults:
        """Change one fake's faults (arguments left as None keep their value; clear=True resets first)."""
        update = faults_from_kwargs(
            {
                "clear": clear,
                "error_rate": error_rate,
                "seed": seed,
                "fail_5xx_until": fail_5xx_until,
                "status_429_retry_after": status_429_retry_after,
                "count_429": count_429,
                "latency_ms": latency_ms,
                "reset_connection": reset_connection,
                "reject_status": reject_status,
                "silent_loss": silent_loss,
            }
        )
        return self._harnesses[dest].set_faults(update)

    def reset(self, dest: Destination | None = None) -> None:
        """Clear requests, faults and stored data of one fake, or of all four."""
        for name in DESTINATIONS if dest is None else (dest,):
            self._harnesses[name].reset()


def run_sandbox_forever(
    host: str = "127.0.0.1",
    ports: Mapping[str, int] | None = None,
    with_stripe: bool = True,
    stripe_webhook_url: str | None = None,
) -> None:
    """Serve the fakes (and localstripe) in this process, print URLs and env lines, block until Ctrl-C."""
    fake_ports = {k: v for k, v in (ports or {}).items() if k != "stripe"}
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with Sandbox(host, fake_ports) as sandbox:
            env = sandbox.env()
            print(f"MailerLite fake: {sandbox.mailerlite_url}")
            print(f"CRM fake:        {sandbox.crm_url}")
            print(f"sGTM fake:       {sandbox.sgtm_url}")
            print(f"Meta fake:       {sandbox.meta_url}")
            print(
                "Controls: GET|DELETE <fake>/_sandbox/requests, GET|POST <fake>/_sandbox/faults, "
                "GET <fake>/_sandbox/state, POST <fake>/_sandbox/reset"
            )
            if with_stripe:
                stripe = LocalStripe(host=host, port=(ports or {}).get("stripe", 0)).start()
                try:
                    if stripe_webhook_url is not None:
                        stripe.register_webhook("sandbox", stripe_webhook_url, stripe.webhook_secret)
                        print(f"localstripe sends webhooks to {stripe_webhook_url}")
                    print(f"localstripe:     {stripe.url}")
                    env.update(stripe.env())
                    _print_env_and_wait(env, stop)
                finally:
                    stripe.stop()
            else:
                _print_env_and_wait(env, stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("sandbox stopped")


def _print_env_and_wait(env: Mapping[str, str], stop: threading.Event) -> None:
    print("\n# environment for the service:")
    for name, value in env.items():
        print(f"{name}={value}")
    print("\nCtrl-C stops the sandbox.", flush=True)
    stop.wait()
