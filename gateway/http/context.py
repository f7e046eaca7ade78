"""Typed access to the objects the composition root puts on the aiohttp app."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web
from multidict import CIMultiDictProxy, MultiMapping

from gateway.domain.errors import HandlerError, HandlerErrorType
from gateway.engine.engine import Engine
from gateway.security.netguard import BlockedDestination, OutboundPolicy, screen_url
from registry.auth import Principal, Verifier
from registry.service import Registry


@dataclass(frozen=True, kw_only=True)
class Services:
    engine: Engine
    registry: Registry
    verifier: Verifier
    outbound: OutboundPolicy
    screen_callbacks: bool = True
    public_cards: bool = True  # SWARMGATE_PUBLIC_CARDS
    body_timeout_s: float = 10.0  # SWARMGATE_BODY_TIMEOUT_S: a start's body, before admission


SERVICES = web.AppKey("swarmgate.services", Services)


class BodyStream(Protocol):
    """What handlers use of a request's body stream (aiohttp's ``StreamReader``)."""

    def is_eof(self) -> bool: ...

    def iter_chunked(self, n: int) -> AsyncIterator[bytes]: ...


class InboundRequest(Protocol):
    """What a handler may use of a request: aiohttp's ``web.Request`` has it, and so has the
    hot path's request (``gateway.http.hotpath``), so the hot routes' handlers serve both."""

    @property
    def app(self) -> web.Application: ...

    @property
    def method(self) -> str: ...

    @property
    def path(self) -> str: ...

    @property
    def headers(self) -> CIMultiDictProxy[str]: ...

    @property
    def query(self) -> MultiMapping[str]: ...

    @property
    def match_info(self) -> Mapping[str, str]: ...

    @property
    def content_length(self) -> int | None: ...

    @property
    def content(self) -> BodyStream: ...

    async def read(self) -> bytes: ...


def services(request: InboundRequest) -> Services:
    return request.app[SERVICES]


async def principal(request: InboundRequest) -> Principal:
    return await services(request).verifier.verify(request.headers.get("Authorization"))


async def check_outbound_url(request: InboundRequest, url: str, what: str) -> None:
    svc = services(request)
    try:
        await screen_url(url, svc.outbound)
    except BlockedDestination as exc:
        raise HandlerError(
            HandlerErrorType.BAD_REQUEST,
            f"{what} refused: {exc}; private, loopback and other non-public addresses must be "
            "allowed on the gateway with SWARMGATE_ALLOW_CIDRS",
        ) from exc
    except (OSError, ValueError) as exc:
        raise HandlerError(HandlerErrorType.BAD_REQUEST, f"{what} refused: {exc}") from exc
