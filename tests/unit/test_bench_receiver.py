"""bench.receiver: the lean callback server resolves each unit's callback, as aiohttp's did."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from bench import receiver as receiver_server
from bench.procs import free_port
from bench.scenarios import Receiver


async def _ask(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: bytes) -> bytes:
    writer.write(raw)
    await writer.drain()
    return await reader.readuntil(b"\r\n\r\n")


@contextlib.asynccontextmanager
async def _serving(receiver: Receiver) -> AsyncIterator[int]:
    port = free_port()
    server = await receiver_server.serve(receiver, "127.0.0.1", port)
    try:
        yield port
    finally:
        server.close()
        await server.wait_closed()


def _callback(rid: str, state: str, *, close: bool = False) -> bytes:
    body = b'{"result": 1}'
    head = f"POST /cb/{rid} HTTP/1.1\r\nHost: r\r\nNexus-Operation-State: {state}\r\n"
    head += "Connection: close\r\n" if close else ""
    return head.encode() + b"Content-Length: %d\r\n\r\n" % len(body) + body


@pytest.mark.asyncio
async def test_callbacks_on_one_kept_connection_resolve_their_units_with_the_state() -> None:
    receiver = Receiver()
    async with _serving(receiver) as port:
        first, second = receiver.expect("run-1"), receiver.expect("run-2")  # sent escaped
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        # two requests in one write (pipelined), then one the unit no longer waits for
        answer = await _ask(
            reader, writer, _callback("run-1", "succeeded") + _callback("run%2D2", "failed")
        )
        assert answer.startswith(b"HTTP/1.1 200 ")
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200 ")
        assert (await first)[1] == "succeeded" and (await second)[1] == "failed"
        assert (await _ask(reader, writer, _callback("run-1", "succeeded"))).startswith(
            b"HTTP/1.1 200"
        )
        assert receiver.received == 3 and receiver.unexpected == 1
        # another path is not a callback; a request that says close is answered, then closed
        answer = await _ask(reader, writer, b"GET /other HTTP/1.1\r\nHost: r\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 404 ")
        answer = await _ask(reader, writer, _callback("run-3", "succeeded", close=True))
        assert b"Connection: close" in answer and await reader.read() == b""
        writer.close()
        assert receiver.received == 4


@pytest.mark.asyncio
async def test_a_request_it_cannot_parse_is_answered_400_and_its_connection_closed() -> None:
    receiver = Receiver()
    async with _serving(receiver) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        answer = await _ask(reader, writer, b"NOT HTTP AT ALL\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 400 ") and await reader.read() == b""
        writer.close()
        assert receiver.received == 0
