"""The HTTP/1.1 transport every destination sends over: a request out, an answer back, and a small pool of
keep-alive connections on asyncio and httptools."""

from __future__ import annotations

import asyncio
import functools
import re
import ssl
from dataclasses import dataclass, field
from typing import cast
from urllib.parse import urlsplit

import httptools

USER_AGENT = "attribution-ingest/0.1"


@dataclass(frozen=True)
class OutgoingRequest:
    """One HTTP POST, ready to send."""

    url: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class HttpAnswer:
    """What a destination answered: status, lower-cased headers and the raw body."""

    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def is_success(self) -> bool:
        """A 2xx status."""
        return 200 <= self.status < 300


@dataclass(frozen=True)
class AnswerFault:
    """What a destination's answer body says went wrong where its status alone does not tell (a throttling
    code in a 400, a 2xx that took none of the events)."""

    retryable: bool
    error: str


_BREAKS = re.compile(r"[\r\n]")


class TransportError(Exception):
    """The request got no complete HTTP answer: refused, reset or closed connection, or an unparsable answer."""


@functools.lru_cache(maxsize=64)
def _target(url: str) -> tuple[str, str, int, bytes]:
    """(scheme, host, port, the request line's head up to the Host header) of a URL, worked out once."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TransportError(f"not an http(s) URL: {parts.scheme}://{parts.hostname or ''}")
    default = 443 if parts.scheme == "https" else 80
    port = parts.port or default
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    host_header = host if port == default else f"{host}:{port}"
    head = f"POST {path} HTTP/1.1\r\nHost: {host_header}\r\n".encode("latin-1")
    return parts.scheme, parts.hostname, port, head


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection carrying one request at a time; httptools parses the answers."""

    def __init__(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[HttpAnswer] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._header_name = ""
        self._headers_done = False
        self.reusable = False
        self.closed = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio's classes

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(TransportError(f"invalid HTTP answer: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        framed = "content-length" in self._headers or "chunked" in self._headers.get("transfer-encoding", "")
        if self._headers_done and not framed:
            self._complete()  # an answer without a length ends when the server closes the connection
        elif exc is not None:
            self._fail(TransportError(f"{type(exc).__name__}: {exc}".rstrip(": ")))
        else:
            self._fail(TransportError("the server closed the connection before answering"))

    # httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        if name:
            self._header_name = name.decode("latin-1").lower()
            self._headers[self._header_name] = value.decode("latin-1")
        else:  # a header value split across reads
            self._headers[self._header_name] += value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self._headers_done = True

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.reusable = self._parser.should_keep_alive()
        self._complete()

    # the pool's side

    def request(self, data: bytes, deadline: float) -> asyncio.Future[HttpAnswer]:
        """Write one request; the future is answered with the whole response, or TimeoutError at `deadline`."""
        assert self._transport is not None
        loop = asyncio.get_running_loop()
        self._waiter = loop.create_future()
        # One timer handle per request: asyncio.timeout() costs several times more on this hot path.
        self._timer = loop.call_at(deadline, self._time_out)
        self._headers, self._body, self._headers_done, self.reusable = {}, [], False, False
        self._transport.write(data)
        return self._waiter

    def _time_out(self) -> None:
        self._fail(TimeoutError("no complete answer within the delivery timeout"))
        self.close()

    def close(self) -> None:
        """Drop the connection (after a timeout or a bad answer it cannot carry another request)."""
        self.closed = True
        self.reusable = False
        self._stop_timer()
        if self._transport is not None:
            self._transport.close()

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _complete(self) -> None:
        self._headers_done = False
        self._stop_timer()
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            status = self._parser.get_status_code()
            waiter.set_result(HttpAnswer(status=status, headers=self._headers, body=b"".join(self._body)))

    def _fail(self, exc: Exception) -> None:
        self._stop_timer()
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)


class ConnectionPool:
    """POSTs over a pool of keep-alive connections, at most `concurrency` requests in flight.

    A small HTTP/1.1 client on asyncio and httptools rather than aiohttp's or httpx's: with a few dozen
    requests in flight aiohttp spends ~0.3 ms of CPU per request (httpx several times more) against ~0.06 ms
    here, and on two cores that CPU is what caps the worker (bench/deliveries.py measures it). It sends one
    kind of request (a POST with a JSON body, no redirects, no proxy, no cookies, no compression).
    """

    def __init__(self, *, concurrency: int, timeout: float) -> None:
        self.concurrency = concurrency
        self._timeout = timeout
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._open: set[_Connection] = set()
        self._slots: asyncio.Semaphore | None = None
        self._tls: ssl.SSLContext | None = None
        self._fixed = (
            f"User-Agent: {USER_AGENT}\r\nContent-Type: application/json\r\nAccept: application/json\r\n"
        ).encode("latin-1")

    async def send(self, request: OutgoingRequest) -> HttpAnswer:
        """POST it; raises TransportError on connection failures and TimeoutError after the delivery timeout."""
        scheme, host, port, head = _target(request.url)
        if any(_BREAKS.search(f"{name}{value}") for name, value in request.headers.items()):
            raise TransportError("a header contains a line break")
        extra = "".join(f"{name}: {value}\r\n" for name, value in request.headers.items())
        data = (
            b"".join(
                (
                    head,
                    self._fixed,
                    extra.encode("latin-1"),
                    b"Content-Length: %d\r\n\r\n" % len(request.body),
                )
            )
            + request.body
        )
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.concurrency)  # made in the loop that uses it
        async with self._slots:
            connection: _Connection | None = None
            deadline = asyncio.get_running_loop().time() + self._timeout
            try:
                connection = await self._connection(scheme, host, port, deadline)
                answer = await connection.request(data, deadline)
            except BaseException:
                if connection is not None:
                    connection.close()  # cut off mid-answer, it cannot carry another request
                raise
            finally:
                if connection is not None:
                    self._release(connection, (host, port))
        return answer

    async def _connection(self, scheme: str, host: str, port: int, deadline: float) -> _Connection:
        idle = self._idle.get((host, port))
        while idle:
            connection = idle.pop()
            if not connection.closed:
                return connection
            self._open.discard(connection)  # the server hung up while it was idle
        loop = asyncio.get_running_loop()
        tls = None
        if scheme == "https":
            if self._tls is None:
                self._tls = ssl.create_default_context()
            tls = self._tls
        try:
            async with asyncio.timeout_at(deadline):
                _, connection = await loop.create_connection(
                    _Connection, host, port, ssl=tls, server_hostname=host if tls else None
                )
        except OSError as exc:  # refused, unreachable, DNS, TLS handshake
            raise TransportError(f"cannot connect to {host}:{port}: {type(exc).__name__}: {exc}") from exc
        self._open.add(connection)
        return connection

    def _release(self, connection: _Connection, key: tuple[str, int]) -> None:
        if connection.reusable and not connection.closed:
            self._idle.setdefault(key, []).append(connection)
            return
        connection.close()
        self._open.discard(connection)

    async def aclose(self) -> None:
        """Close every pooled connection."""
        for connection in self._open:
            connection.close()
        self._open.clear()
        self._idle.clear()
