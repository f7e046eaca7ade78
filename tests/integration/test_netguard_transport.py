"""Outbound URL screening (SSRF) through the real transport and resolver. Traffic only ever goes
to servers on 127.0.0.1; every other address below is only checked, never contacted."""

from __future__ import annotations

import re
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.test_utils import BaseTestServer, TestServer

from adapters.transport import HttpTransport
from gateway.domain.dispatch import TransportError
from gateway.security.netguard import (
    BlockedDestination,
    OutboundPolicy,
    ScreeningResolver,
    UnresolvableDestination,
    screen_url,
)
from tests.addresses import DEFAULT, LOOPBACK, UNRESOLVABLE


@dataclass
class Upstream:
    """A loopback server that counts what reaches it."""

    server: BaseTestServer
    hits: list[str] = field(default_factory=list)

    @property
    def port(self) -> int:
        assert self.server.port is not None
        return self.server.port

    def url(self, path: str = "/", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    hits: list[str] = []

    async def ok(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(text="ok")

    async def to_metadata(request: web.Request) -> web.Response:
        hits.append(request.path)
        raise web.HTTPFound("http://169.254.169.254/latest/meta-data/")

    async def to_self(request: web.Request) -> web.Response:
        hits.append(request.path)
        raise web.HTTPFound("/ok")

    app = web.Application()
    app.router.add_get("/ok", ok)
    app.router.add_get("/redirect-to-metadata", to_metadata)
    app.router.add_get("/redirect-to-self", to_self)
    async with TestServer(app, host="127.0.0.1") as server:
        yield Upstream(server=server, hits=hits)


class FailingResolver(AbstractResolver):
    """A DNS that knows no names (so no query ever leaves the machine)."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        raise OSError(socket.EAI_NONAME, f"{host}: name or service not known")

    async def close(self) -> None:
        pass


class StaticResolver(AbstractResolver):
    """Answers every name with fixed addresses (stands in for a DNS zone we control)."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = addresses
        self.calls = 0

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.calls += 1
        return [
            ResolveResult(
                hostname=host,
                host=a,
                port=port,
                family=socket.AF_INET6 if ":" in a else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for a in self.addresses
        ]

    async def close(self) -> None:
        pass


# -- real requests on loopback, through the gateway's transport ---------------------------------


def transport(policy: OutboundPolicy, resolver: AbstractResolver | None = None) -> HttpTransport:
    return HttpTransport(policy, resolver=ScreeningResolver(policy, resolver) if resolver else None)


async def get(policy: OutboundPolicy, url: str, resolver: AbstractResolver | None = None) -> Any:
    http = transport(policy, resolver)
    try:
        return await http.request("GET", url, headers={}, body=None, timeout_s=5)
    finally:
        await http.close()


async def test_a_request_to_127_0_0_1_is_refused_by_default(upstream: Upstream) -> None:
    with pytest.raises(TransportError, match="destination refused") as info:
        await get(DEFAULT, upstream.url("/ok"))
    assert info.value.retryable is False
    assert upstream.hits == []


async def test_a_request_to_127_0_0_1_goes_through_when_loopback_is_allowed(
    upstream: Upstream,
) -> None:
    resp = await get(LOOPBACK, upstream.url("/ok"))
    assert (resp.status, resp.body) == (200, b"ok")
    assert upstream.hits == ["/ok"]


async def test_localhost_is_refused_by_the_resolver_by_default(upstream: Upstream) -> None:
    with pytest.raises(TransportError, match=r"destination refused.*localhost") as info:
        await get(DEFAULT, upstream.url("/ok", host="localhost"))
    assert info.value.retryable is False
    assert upstream.hits == []


async def test_localhost_is_reachable_through_the_resolver_when_loopback_is_allowed(
    upstream: Upstream,
) -> None:
    resp = await get(LOOPBACK, upstream.url("/ok", host="localhost"))
    assert resp.status == 200
    assert upstream.hits == ["/ok"]


async def test_a_name_is_connected_to_at_the_address_that_was_screened(upstream: Upstream) -> None:
    # The name resolves to a refused address and to the allowed upstream: refused as a whole.
    with pytest.raises(TransportError, match=r"rebind\.test: resolves to a non-public address"):
        await get(
            LOOPBACK,
            upstream.url("/ok", host="rebind.test"),
            StaticResolver("127.0.0.1", "10.0.0.7"),
        )
    resp = await get(LOOPBACK, upstream.url("/ok", host="pinned.test"), StaticResolver("127.0.0.1"))
    assert resp.status == 200
    assert upstream.hits == ["/ok"]


async def test_a_redirect_to_the_metadata_address_is_not_followed(upstream: Upstream) -> None:
    resp = await get(LOOPBACK, upstream.url("/redirect-to-metadata"))
    assert resp.status == 302
    assert resp.headers["location"] == "http://169.254.169.254/latest/meta-data/"
    assert upstream.hits == ["/redirect-to-metadata"]


async def test_no_redirect_is_followed_even_to_an_allowed_address(upstream: Upstream) -> None:
    resp = await get(LOOPBACK, upstream.url("/redirect-to-self"))
    assert resp.status == 302
    assert upstream.hits == ["/redirect-to-self"]


async def test_a_dns_failure_fails_closed_at_connect_time() -> None:
    refused = f"connection failed.*{re.escape(UNRESOLVABLE)}"
    with pytest.raises(TransportError, match=refused) as info:
        await get(LOOPBACK, f"http://{UNRESOLVABLE}/", FailingResolver())
    assert info.value.retryable  # DNS may come back; the destination was not refused


# -- early screening --------------------------------------------------------------------------


async def test_screen_url_refuses_a_name_that_resolves_to_loopback_unless_allowed() -> None:
    with pytest.raises(BlockedDestination, match="non-public address") as info:
        await screen_url("http://localhost:8080/hook", DEFAULT)
    assert info.value.address == "127.0.0.1"
    await screen_url("http://localhost:8080/hook", LOOPBACK)


async def test_screen_url_fails_closed_when_the_name_does_not_resolve() -> None:
    with pytest.raises(UnresolvableDestination, match=UNRESOLVABLE):
        await screen_url(f"https://{UNRESOLVABLE}/hook", LOOPBACK, FailingResolver())


async def test_screen_url_checks_literals_without_resolving() -> None:
    resolver = StaticResolver("127.0.0.1")
    await screen_url("https://8.8.8.8/hook", DEFAULT, resolver)
    with pytest.raises(BlockedDestination):
        await screen_url("http://[::ffff:127.0.0.1]/", DEFAULT, resolver)
    with pytest.raises(ValueError):
        await screen_url("ftp://example.com/", DEFAULT, resolver)
    assert resolver.calls == 0


async def test_a_name_is_refused_when_any_of_its_addresses_is_not_allowed() -> None:
    mixed = StaticResolver("8.8.8.8", "10.0.0.7")
    with pytest.raises(BlockedDestination, match="non-public address") as info:
        await screen_url("https://rebind.example/", DEFAULT, mixed)
    assert info.value.address == "10.0.0.7"
    screening = ScreeningResolver(DEFAULT, StaticResolver("8.8.8.8", "2001:4860:4860::8888"))
    results = await screening.resolve("dns.example", 443)
    assert [r["host"] for r in results] == ["8.8.8.8", "2001:4860:4860::8888"]
    with pytest.raises(UnresolvableDestination):
        await ScreeningResolver(DEFAULT, StaticResolver()).resolve("empty.example", 443)
