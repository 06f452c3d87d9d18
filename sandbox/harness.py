"""Recording and fault injection wrapped around each sandbox fake.

Every fake is a plain ASGI app; `Harness` sits in front of it and

* records each request (method, path, query, lower-cased headers, body, time, answered status, fault),
* injects the faults currently set for that destination before the request reaches the fake,
* serves the control endpoints under `/_sandbox/`:
  `GET|DELETE /_sandbox/requests`, `GET|POST /_sandbox/faults`, `GET /_sandbox/state`, `POST /_sandbox/reset`.

Fault JSON (`POST /_sandbox/faults`, every key optional; keys given replace the current value, `clear` first
resets everything to "no faults"):
`{"clear": bool, "error_rate": 0..1, "seed": int, "fail_5xx_until": unix_seconds | null,
"status_429_retry_after": seconds | null, "count_429": int, "latency_ms": int, "reset_connection": bool,
"reject_status": 400..499 | null, "silent_loss": bool}`.
Faults are checked in this order: latency, reset_connection, fail_5xx_until (503), the 429 budget,
reject_status, error_rate (500). `silent_loss` is the quiet one: the fake answers as usual, then forgets what the
request wrote (a 2xx for a record it does not keep), for fakes that can undo a write (`keep_out`).
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import struct
import threading
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qsl

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CONTROL_PREFIX = "/_sandbox/"
Clock = Callable[[], float]


class StatefulFake(Protocol):
    """What the harness needs from a fake: its ASGI app, a state snapshot and a reset."""

    @property
    def app(self) -> ASGIApp: ...

    def state(self) -> dict[str, Any]: ...

    def reset(self) -> None: ...


class ForgetfulFake(Protocol):
    """A fake that can lose a write silently: `keep_out(body)` returns what undoes the write `body` is about to make."""

    def keep_out(self, body: Any) -> Callable[[], None]: ...


@dataclass(frozen=True)
class RecordedRequest:
    """One request a fake received and how it answered (status None: connection dropped)."""

    destination: str
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    raw_body: str
    received_at: float
    status: int | None
    response: Any
    fault: str | None

    def to_json(self) -> dict[str, Any]:
        """Return the record as a JSON-ready dict."""
        return asdict(self)


class FaultUpdate(BaseModel):
    """A change to the faults of one destination; keys left out keep their current value."""

    model_config = ConfigDict(extra="forbid")

    clear: bool = False
    error_rate: float | None = Field(default=None, ge=0.0, le=1.0)
    seed: int | None = None
    fail_5xx_until: float | None = None
    status_429_retry_after: int | None = Field(default=None, ge=0)
    count_429: int | None = Field(default=None, ge=0)
    latency_ms: int | None = Field(default=None, ge=0, le=120_000)
    reset_connection: bool | None = None
    reject_status: int | None = Field(default=None, ge=400, le=499)
    silent_loss: bool | None = None


class Faults(BaseModel):
    """The faults currently active for one destination (`count_429` is what is left of the 429 budget)."""

    error_rate: float = 0.0
    seed: int = 0
    fail_5xx_until: float | None = None
    status_429_retry_after: int | None = None
    count_429: int = 0
    latency_ms: int = 0
    reset_connection: bool = False
    reject_status: int | None = None
    silent_loss: bool = False


_NOT_NULLABLE = frozenset(
    {"error_rate", "seed", "count_429", "latency_ms", "reset_connection", "silent_loss"}
)


@dataclass(frozen=True)
class InjectedFault:
    """A fault chosen for one request; status None means the connection is dropped."""

    name: str
    status: int | None
    headers: dict[str, str] = field(default_factory=dict)


class FaultPlan:
    """Thread-safe fault settings of one destination plus the seeded RNG behind `error_rate`."""

    def __init__(self, seed: int) -> None:
        self._lock = threading.Lock()
        self._default_seed = seed
        self._faults = Faults(seed=seed)
        self._rng = random.Random(seed)

    def current(self) -> Faults:
        """Return a copy of the active faults."""
        with self._lock:
            return self._faults.model_copy()

    def apply(self, update: FaultUpdate) -> Faults:
        """Apply an update (clear first when asked) and return the resulting faults."""
        given = update.model_fields_set - {"clear"}
        defaults = Faults(seed=self._default_seed)
        with self._lock:
            data = (defaults if update.clear else self._faults).model_dump()
            for name in given:
                value = getattr(update, name)
                data[name] = getattr(defaults, name) if value is None and name in _NOT_NULLABLE else value
            if "status_429_retry_after" in given and "count_429" not in given:
                data["count_429"] = 0 if update.status_429_retry_after is None else 1
            if update.clear or "seed" in given:
                self._rng = random.Random(data["seed"])
            self._faults = Faults.model_validate(data)
            return self._faults.model_copy()

    def draw(self, now: float) -> InjectedFault | None:
        """Decide the fault, if any, that answers the next request."""
        with self._lock:
            f = self._faults
            if f.reset_connection:
                return InjectedFault("reset_connection", None)
            if f.fail_5xx_until is not None and now < f.fail_5xx_until:
                return InjectedFault("fail_5xx_until", 503)
            if f.status_429_retry_after is not None and f.count_429 > 0:
                f.count_429 -= 1
                return InjectedFault(
                    "status_429_retry_after", 429, {"retry-after": str(f.status_429_retry_after)}
                )
            if f.reject_status is not None:
                return InjectedFault("reject_status", f.reject_status)
            if f.error_rate > 0 and self._rng.random() < f.error_rate:
                return InjectedFault("error_rate", 500)
            return None

    def loses_silently(self) -> bool:
        """Whether a request the fake accepts is to be forgotten once answered."""
        with self._lock:
            return self._faults.silent_loss

    def latency_seconds(self) -> float:
        """Return the delay to add before answering."""
        with self._lock:
            return self._faults.latency_ms / 1000.0


class RequestLog:
    """Thread-safe list of recorded requests, and a count of those that arrived (body read) but are not answered
    yet: a test can tell a request is on the wire before any fault (latency) lets it finish."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[RecordedRequest] = []
        self._arrived = 0

    def arrive(self) -> None:
        """Count one request whose body has been read."""
        with self._lock:
            self._arrived += 1

    def arrived(self) -> int:
        """How many requests arrived since the last clear (answered or not)."""
        with self._lock:
            return self._arrived

    def add(self, item: RecordedRequest) -> None:
        """Append one record."""
        with self._lock:
            self._items.append(item)

    def all(self) -> list[RecordedRequest]:
        """Return a copy of every record, oldest first."""
        with self._lock:
            return list(self._items)

    def clear(self) -> None:
        """Forget every record."""
        with self._lock:
            self._items.clear()
            self._arrived = 0


_FAULT_MESSAGES = {
    "fail_5xx_until": "Service Unavailable (sandbox outage window)",
    "status_429_retry_after": "Too Many Attempts.",
    "reject_status": "Rejected by sandbox reject_status fault",
    "error_rate": "Server Error (sandbox error_rate fault)",
}


def _parse_json(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _abort_connection(send: Send) -> None:
    """Reset the TCP connection under this request (RST, no HTTP response at all)."""
    # ASGI offers no way to drop a connection; uvicorn's `send` is a bound method of its request cycle,
    # which holds the asyncio transport. SO_LINGER 0 makes close() send RST instead of FIN.
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if not isinstance(transport, asyncio.Transport):
        raise RuntimeError("reset_connection needs uvicorn's HTTP transport, which was not reachable")
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class Harness:
    """ASGI wrapper adding recording, faults and `/_sandbox/` control endpoints to one fake."""

    def __init__(self, destination: str, fake: StatefulFake, clock: Clock, seed: int = 0) -> None:
        self.destination = destination
        self.fake = fake
        self.clock = clock
        self.faults = FaultPlan(seed)
        self.log = RequestLog()
        self._control = Starlette(
            routes=[
                Route("/_sandbox/requests", self._get_requests, methods=["GET"]),
                Route("/_sandbox/requests", self._delete_requests, methods=["DELETE"]),
                Route("/_sandbox/faults", self._get_faults, methods=["GET"]),
                Route("/_sandbox/faults", self._post_faults, methods=["POST"]),
                Route("/_sandbox/state", self._get_state, methods=["GET"]),
                Route("/_sandbox/reset", self._post_reset, methods=["POST"]),
            ]
        )

    def set_faults(self, update: FaultUpdate) -> Faults:
        """Apply a fault update and return the faults now active."""
        return self.faults.apply(update)

    def reset(self) -> None:
        """Clear recorded requests, faults and the fake's own state."""
        self.log.clear()
        self.faults.apply(FaultUpdate(clear=True))
        self.fake.reset()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.fake.app(scope, receive, send)
            return
        if scope["path"].startswith(CONTROL_PREFIX):
            await self._control(scope, receive, send)
            return
        await self._serve_faked(scope, receive, send)

    async def _serve_faked(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = await _read_body(receive)
        self.log.arrive()
        received_at = self.clock()
        latency = self.faults.latency_seconds()
        if latency > 0:
            await asyncio.sleep(latency)
        injected = self.faults.draw(self.clock())
        recorded = False
        lost = False
        undo: Callable[[], None] | None = None
        keep_out = getattr(self.fake, "keep_out", None)
        if (
            injected is None
            and scope["method"] == "POST"
            and keep_out is not None
            and self.faults.loses_silently()
        ):
            undo = keep_out(_parse_json(raw))

        # Recorded before the last byte of the answer goes out, so a client that has its answer also finds
        # the record.
        def record(status: int | None, response: bytes) -> None:
            nonlocal recorded
            recorded = True
            self.log.add(
                RecordedRequest(
                    destination=self.destination,
                    method=scope["method"],
                    path=scope["path"],
                    query=dict(parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)),
                    headers={k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]},
                    body=_parse_json(raw),
                    raw_body=raw.decode("utf-8", errors="replace"),
                    received_at=received_at,
                    status=status,
                    response=_parse_json(response),
                    fault=injected.name if injected is not None else "silent_loss" if lost else None,
                )
            )

        if injected is not None and injected.status is None:
            record(None, b"")
            _abort_connection(send)
            # Wait for uvicorn to notice the disconnect, so it does not try to answer 500 afterwards.
            while (await receive())["type"] != "http.disconnect":
                pass
            return
        if injected is not None and injected.status is not None:
            message = {"message": _FAULT_MESSAGES[injected.name]}
            record(injected.status, json.dumps(message).encode())
            await JSONResponse(message, status_code=injected.status, headers=injected.headers)(
                scope, receive, send
            )
            return

        replayed = False
        status: int | None = None
        chunks: list[bytes] = []

        async def replay_receive() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": raw, "more_body": False}
            return await receive()

        async def capture_send(message: Message) -> None:
            nonlocal status, lost
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    if undo is not None and status is not None and 200 <= status < 300:
                        undo()  # before the answer leaves: a client that has its 2xx finds nothing kept
                        lost = True
                    record(status, b"".join(chunks))
            await send(message)

        try:
            await self.fake.app(scope, replay_receive, capture_send)
        finally:
            if not recorded:
                record(status, b"".join(chunks))

    async def _get_requests(self, request: Request) -> Response:
        return JSONResponse([r.to_json() for r in self.log.all()])

    async def _delete_requests(self, request: Request) -> Response:
        self.log.clear()
        return Response(status_code=204)

    async def _get_faults(self, request: Request) -> Response:
        return JSONResponse(self.faults.current().model_dump())

    async def _post_faults(self, request: Request) -> Response:
        try:
            update = FaultUpdate.model_validate_json(await request.body())
        except ValidationError as exc:
            return JSONResponse({"errors": exc.errors(include_url=False, include_context=False)}, 422)
        return JSONResponse(self.faults.apply(update).model_dump())

    async def _get_state(self, request: Request) -> Response:
        return JSONResponse(self.fake.state())

    async def _post_reset(self, request: Request) -> Response:
        self.reset()
        return Response(status_code=204)


def faults_from_kwargs(values: Mapping[str, Any]) -> FaultUpdate:
    """Build a FaultUpdate from keyword arguments, leaving out those passed as None."""
    return FaultUpdate.model_validate({k: v for k, v in values.items() if v is not None})
