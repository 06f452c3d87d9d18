"""The destinations' own HTTP/1.1 client against a raw loopback server: framing, keep-alive, failures."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from ingest.core.vocabulary import Destination
from ingest.outbox.destinations import DestinationClient
from ingest.outbox.destinations.transport import OutgoingRequest, TransportError
from tests.conftest import make_settings

Answer = Callable[[bytes], bytes | None]  # the request's bytes -> what to write back (None: hang up)


@asynccontextmanager
async def raw_server(answer: Answer, *, close_after: bool = False) -> AsyncIterator[tuple[str, list[bytes]]]:
    """A loopback server that reads one request at a time and writes `answer(request)` back."""
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                request = head + await reader.readexactly(length)
                seen.append(request)
                reply = answer(request)
                if reply is None:
                    break
                writer.write(reply)
                await writer.drain()
                if close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/crm?x=1", seen
    finally:
        server.close()


def _client(tmp_path: Path, timeout: float = 5.0) -> DestinationClient:
    settings = make_settings(
        tmp_path, crm_webhook_url="http://127.0.0.1:1/crm", attribution_delivery_timeout_seconds=timeout
    )
    return DestinationClient(Destination.CRM, settings)


def _ok(body: bytes) -> Answer:
    return lambda _: b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


async def test_keep_alive_carries_many_requests_over_one_connection(tmp_path: Path) -> None:
    async with raw_server(_ok(b'{"contact_id":"c1"}')) as (url, seen):
        client = _client(tmp_path)
        for n in range(5):
            got = await client.send(OutgoingRequest(url, b'{"n":%d}' % n, {"Idempotency-Key": f"k{n}"}))
            assert got.status == 200 and got.body == b'{"contact_id":"c1"}'
        connections = len(client._open)
        await client.aclose()
    assert connections == 1 and len(seen) == 5
    head, _, body = seen[4].partition(b"\r\n\r\n")
    assert head.startswith(b"POST /crm?x=1 HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"\r\nIdempotency-Key: k4\r\n" in head and b"\r\nContent-Type: application/json" in head
    assert body == b'{"n":4}'


async def test_chunked_and_until_close_answers_and_headers_are_read_whole(tmp_path: Path) -> None:
    chunked = (
        b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 7\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )
    async with raw_server(lambda _: chunked) as (url, _):
        client = _client(tmp_path)
        got = await client.send(OutgoingRequest(url, b"{}"))
        await client.aclose()
    assert (got.status, got.headers["retry-after"], got.body) == (429, "7", b"hello world")

    until_close = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n\r\ndown for a bit"
    async with raw_server(lambda _: until_close, close_after=True) as (url, _):
        client = _client(tmp_path)
        first = await client.send(OutgoingRequest(url, b"{}"))
        second = await client.send(OutgoingRequest(url, b"{}"))  # the closed connection is not reused
        await client.aclose()
    assert first.status == second.status == 503 and first.body == b"down for a bit"


async def test_a_server_that_hangs_up_or_stalls_or_is_absent_fails_the_attempt(tmp_path: Path) -> None:
    async with raw_server(lambda _: None) as (url, _):
        client = _client(tmp_path)
        with pytest.raises(TransportError, match="closed the connection"):
            await client.send(OutgoingRequest(url, b"{}"))
        await client.aclose()

    def never(_: bytes) -> bytes:
        return b""  # writes nothing: the answer never comes

    async with raw_server(never) as (url, _):
        client = _client(tmp_path, timeout=0.3)
        with pytest.raises(TimeoutError):
            await client.send(OutgoingRequest(url, b"{}"))
        assert not client._open  # the cut-off connection is dropped, not pooled
        await client.aclose()

    async with raw_server(_ok(b"{}")) as (url, _):
        closed_url = url
    client = _client(tmp_path)
    with pytest.raises(TransportError, match="cannot connect"):
        await client.send(OutgoingRequest(closed_url, b"{}"))
    with pytest.raises(TransportError, match="not an http"):
        await client.send(OutgoingRequest("ftp://127.0.0.1/x", b"{}"))
    with pytest.raises(TransportError, match="line break"):
        await client.send(OutgoingRequest(closed_url, b"{}", {"Idempotency-Key": "a\r\nX-Evil: 1"}))
    await client.aclose()


async def test_a_pooled_connection_the_server_closed_is_not_reused(tmp_path: Path) -> None:
    async with raw_server(_ok(b"{}"), close_after=True) as (url, seen):
        # The answer says keep-alive, but the server hangs up right after it, while the connection is idle.
        client = _client(tmp_path)
        assert (await client.send(OutgoingRequest(url, b"{}"))).status == 200
        await asyncio.sleep(0.1)
        assert (await client.send(OutgoingRequest(url, b"{}"))).status == 200
        assert len(client._open) == 1  # the dead one was dropped, not kept
        await client.aclose()
    assert len(seen) == 2


async def test_a_garbled_answer_is_a_transport_error(tmp_path: Path) -> None:
    async with raw_server(lambda _: b"NOT HTTP AT ALL\r\n\r\n") as (url, _):
        client = _client(tmp_path)
        with pytest.raises(TransportError, match="invalid HTTP answer"):
            await client.send(OutgoingRequest(url, b"{}"))
        await client.aclose()
