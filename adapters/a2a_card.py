"""Outbound A2A discovery: read an agent's card and pick a binding and version the adapter
speaks (JSON-RPC or HTTP+JSON, A2A 1.x), in the agent's order of preference.

An agent is registered by its base URL (the card is at ``{url}/.well-known/agent-card.json``)
or by the card's URL itself. A registration whose URL serves no card (404, not a card) is
taken as a JSON-RPC endpoint, as before cards were read. Cards are cached per URL for
``CARD_TTL_S``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from gateway.domain import jsonio
from gateway.domain.dispatch import Outcome, OutcomeKind, Transport, TransportError

CARD_PATH = "/.well-known/agent-card.json"
CARD_TTL_S = 300.0
BINDINGS = ("JSONRPC", "HTTP+JSON")  # what the adapter speaks


# the A2A reasons of HTTP+JSON errors (google.rpc.ErrorInfo) as JSON-RPC codes
REASON_CODES = {
    "TASK_NOT_FOUND": -32001,
    "TASK_NOT_CANCELABLE": -32002,
    "PUSH_NOTIFICATION_NOT_SUPPORTED": -32003,
    "UNSUPPORTED_OPERATION": -32004,
    "CONTENT_TYPE_NOT_SUPPORTED": -32005,
    "INVALID_AGENT_RESPONSE": -32006,
    "VERSION_NOT_SUPPORTED": -32009,
    "INVALID_REQUEST": -32600,
    "METHOD_NOT_FOUND": -32601,
    "INVALID_PARAMS": -32602,
    "INTERNAL_ERROR": -32603,
}


def rest_error_code(body: Any) -> tuple[int, str] | None:
    """The JSON-RPC code and message of an HTTP+JSON error body (None if it is not one)."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return None
    message = str(error.get("message") or "error")
    for detail in error.get("details") or []:
        if isinstance(detail, dict) and detail.get("reason") in REASON_CODES:
            return REASON_CODES[str(detail["reason"])], message
    return None


class NoSupportedInterface(ValueError):
    """The card lists interfaces, none of which the adapter speaks."""


@dataclass(frozen=True)
class Interface:
    """Where and how to call an agent."""

    binding: str  # JSONRPC | HTTP+JSON
    url: str
    version: str = "1.0"


def _speaks(version: str) -> bool:
    return version.strip().split(".")[0] == "1"


def choose_interface(card: Any) -> Interface | None:
    """The first interface of ``card`` the adapter speaks; None if the card lists none at all
    (ValueError if it lists interfaces but none the adapter speaks)."""
    if not isinstance(card, dict):
        return None
    listed = card.get("supportedInterfaces")
    if not isinstance(listed, list) or not listed:
        return None
    offered = []
    for item in listed:
        if not isinstance(item, dict):
            continue
        binding = str(item.get("protocolBinding") or "")
        version = str(item.get("protocolVersion") or "")
        url = item.get("url")
        offered.append(f"{binding} {version or '?'}")
        if binding in BINDINGS and _speaks(version) and isinstance(url, str) and url:
            return Interface(binding=binding, url=url.rstrip("/"), version=version)
    raise NoSupportedInterface(
        "the agent card offers no binding and version this gateway speaks "
        f"(JSONRPC or HTTP+JSON, A2A 1.x); it offers {', '.join(offered) or 'nothing'}"
    )


def card_url(endpoint: str) -> str:
    if endpoint.endswith(".json"):
        return endpoint
    return endpoint.rstrip("/") + CARD_PATH


class CardCache:
    """Interfaces of agents by registered URL, read from their cards (kept ``CARD_TTL_S``)."""

    def __init__(self, transport: Transport, ttl_s: float = CARD_TTL_S) -> None:
        self.transport = transport
        self.ttl_s = ttl_s
        self._known: dict[str, tuple[Interface, float]] = {}

    def forget(self, endpoint: str) -> None:
        self._known.pop(endpoint, None)

    async def interface(self, endpoint: str, timeout_s: float) -> Interface | Outcome:
        """The interface to call ``endpoint`` at, or the Outcome that says why there is none."""
        known = self._known.get(endpoint)
        now = time.monotonic()
        if known is not None and now - known[1] < self.ttl_s:
            return known[0]
        try:
            resp = await self.transport.request(
                "GET",
                card_url(endpoint),
                headers={"Accept": "application/json"},
                body=None,
                timeout_s=timeout_s,
            )
        except TransportError as exc:
            kind = OutcomeKind.RETRYABLE if exc.retryable else OutcomeKind.PERMANENT
            return Outcome(kind=kind, error=f"agent card: {exc}")
        chosen: Interface | None = None
        if resp.status == 200:
            try:
                chosen = choose_interface(jsonio.loads(resp.body))
            except NoSupportedInterface as exc:
                return Outcome(kind=OutcomeKind.PERMANENT, error=str(exc))
            except (ValueError, UnicodeDecodeError):
                chosen = None  # not JSON: not a card
        elif resp.status >= 500 or resp.status == 429:
            return Outcome(
                kind=OutcomeKind.RETRYABLE,
                error=f"agent card: HTTP {resp.status}",
                status=resp.status,
            )
        if chosen is None:  # no card here: the registration is a JSON-RPC endpoint
            chosen = Interface(binding="JSONRPC", url=endpoint)
        self._known[endpoint] = (chosen, now)
        return chosen
