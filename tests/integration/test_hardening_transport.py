"""Hardening (issue 13, items 8, 9, 15): what outbound requests connect to, how much of an
answer's head they accept, and what refusals tell the caller."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from adapters.transport import MAX_HEADER_BYTES, MAX_HEADER_LINE_BYTES, HttpTransport
from gateway.domain.dispatch import TransportError
from gateway.security.netguard import (
    BlockedDestination,
    OutboundPolicy,
    ScreeningResolver,
    screen_url,
)

DEFAULT = OutboundPolicy()
LOOPBACK = OutboundPolicy.loopback_allowed()


class StaticResolver(AbstractResolver):
    """Answers every name with fixed addresses and counts the questions."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = addresses
        self.asked: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.asked.append(host)
        return [
            ResolveResult(
                hostname=host,
                host=a,
                port=port,
                family=socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for a in self.addresses
        ]

    async def close(self) -> None:
        pass


async def _get(policy: OutboundPolicy, url: str, resolver: AbstractResolver) -> int:
    transport = HttpTransport(policy, resolver=ScreeningResolver(policy, resolver))
    try:
        resp = await transport.request("GET", url, headers={}, body=None, timeout_s=5.0)
        return resp.status
    finally:
        await transport.close()


@pytest.mark.parametrize("host", ["9.9.9.9.9", "1.2.3.4.5", "8.8.8.8.", "0.0.0.0.0.1"])
async def test_an_all_digit_and_dot_name_is_resolved_and_screened_not_taken_for_an_address(
    host: str,
) -> None:
    dns = StaticResolver("127.0.0.1")  # the rebinding answer: an internal address
    with pytest.raises(TransportError, match="non-public address") as info:
        await _get(DEFAULT, f"http://{host}:8080/x", dns)
    assert not info.value.retryable
    assert len(dns.asked) == 1  # the name went through the screening resolver


# -- response heads ---------------------------------------------------------------------------


class RawServer:
    """A loopback TCP server that answers every request with fixed bytes, then keeps sending
    ``tail`` chunks until the client goes away."""

    def __init__(self, head: bytes, tail: bytes = b"", repeat: int = 0) -> None:
        self.head, self.tail, self.repeat = head, tail, repeat
        self.server: asyncio.Server | None = None
        self.sent = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        try:
            writer.write(self.head)
            self.sent += len(self.head)
            for _ in range(self.repeat):
                writer.write(self.tail)
                self.sent += len(self.tail)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/"


@pytest.fixture
async def raw() -> AsyncIterator[list[RawServer]]:
    made: list[RawServer] = []
    yield made
    for s in made:
        if s.server is not None:
            s.server.close()
            await s.server.wait_closed()


async def _start(made: list[RawServer], server: RawServer) -> RawServer:
    server.server = await asyncio.start_server(server._serve, "127.0.0.1", 0)
    made.append(server)
    return server


async def test_one_endless_header_line_fails_the_exchange_without_buffering_it(
    raw: list[RawServer],
) -> None:
    # 48 MiB of one header value, sent in 64 KiB pieces
    server = await _start(
        raw, RawServer(b"HTTP/1.1 200 OK\r\nX-Big: ", b"a" * 65536, repeat=48 * 16)
    )
    started = time.monotonic()
    with pytest.raises(TransportError, match="response headers larger than") as info:
        await _get(LOOPBACK, server.url, StaticResolver())
    assert not info.value.retryable
    assert time.monotonic() - started < 2.0
    assert server.sent < 48 * 1024 * 1024  # we stopped reading long before the end


async def test_many_header_lines_count_against_one_total(raw: list[RawServer]) -> None:
    line = b"X-Pad: " + b"b" * 1000 + b"\r\n"
    many = b"HTTP/1.1 200 OK\r\n" + line * (MAX_HEADER_BYTES // len(line) + 2)
    server = await _start(raw, RawServer(many + b"Content-Length: 0\r\n\r\n"))
    with pytest.raises(TransportError, match="response headers larger than"):
        await _get(LOOPBACK, server.url, StaticResolver())


async def test_a_single_header_line_over_its_own_limit_is_refused(raw: list[RawServer]) -> None:
    head = b"HTTP/1.1 200 OK\r\nX-Long: " + b"c" * (MAX_HEADER_LINE_BYTES + 1) + b"\r\n"
    server = await _start(raw, RawServer(head + b"Content-Length: 0\r\n\r\n"))
    with pytest.raises(TransportError, match="header line longer than"):
        await _get(LOOPBACK, server.url, StaticResolver())


async def test_an_ordinary_head_with_a_body_still_passes(raw: list[RawServer]) -> None:
    head = b"HTTP/1.1 200 OK\r\nX-Fine: " + b"d" * 8000 + b"\r\nContent-Length: 2\r\n\r\nok"
    server = await _start(raw, RawServer(head))
    assert await _get(LOOPBACK, server.url, StaticResolver()) == 200


# -- refusals do not reveal internal DNS ------------------------------------------------------


async def test_a_refusal_says_non_public_and_logs_the_resolved_address(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="swarmgate.netguard"):
        with pytest.raises(BlockedDestination) as info:
            await screen_url("https://db.internal.example/", DEFAULT, StaticResolver("10.1.2.3"))
    assert str(info.value) == "db.internal.example: resolves to a non-public address"
    assert "10.1.2.3" not in str(info.value)
    assert info.value.address == "10.1.2.3"
    assert "10.1.2.3" in caplog.text
