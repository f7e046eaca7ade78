"""The public swarmgate SDK: call operations through a gateway, and serve them as an agent.

Callers use ``Client``::

    from gateway.sdk import Client, OperationFailedError

    async with Client("http://127.0.0.1:8080", token=jwt) as gw:
        result = await gw.call("flights", "search", {"to": "LIS"}, request_id="trip-42")

Agents use ``AgentApp`` and serve its ``.app`` (an aiohttp application)::

    from gateway.sdk import AgentApp, OpContext

    agent = AgentApp("flights")

    @agent.operation("search")
    async def search(ctx: OpContext, payload: dict) -> dict:
        return {"flights": []}

Errors a caller catches: ``GatewayError`` (the gateway refused the request; ``TransientError``
is the retryable kind, retried by the client itself) and ``OperationFailedError`` (the
operation ended failed or canceled). A handler raises ``OperationFailed`` to fail an operation
for good and ``RetryLater`` to have it dispatched again.

The SDK depends on the domain only (``lint-imports`` checks it), never on the server side.
"""

from gateway.domain.specs import AgentSpec, OperationSpec, RetryPolicy
from gateway.sdk.agent import AgentApp, Handler, OpContext, OperationFailed, RetryLater
from gateway.sdk.client import (
    Client,
    GatewayError,
    OperationFailedError,
    Started,
    TransientError,
)

__all__ = [
    "AgentApp",
    "AgentSpec",
    "Client",
    "GatewayError",
    "Handler",
    "OpContext",
    "OperationFailed",
    "OperationFailedError",
    "OperationSpec",
    "RetryLater",
    "RetryPolicy",
    "Started",
    "TransientError",
]
