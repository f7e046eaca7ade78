"""Typed access to the objects the composition root puts on the aiohttp app."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

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


def services(request: web.Request) -> Services:
    return request.app[SERVICES]


async def principal(request: web.Request) -> Principal:
    return await services(request).verifier.verify(request.headers.get("Authorization"))


async def check_outbound_url(request: web.Request, url: str, what: str) -> None:
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
