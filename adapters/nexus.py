"""Outbound adapter for agents that are themselves Nexus HTTP handlers (``"adapter": "nexus"``).

The agent's registered ``endpoint`` is the handler's service URL: the Nexus endpoint prefix
followed by the URL-encoded service name (for Temporal,
``https://<host>/nexus/endpoints/<endpoint>/services/<service>``). Calls follow the Nexus
RPC HTTP spec and nothing else:

- Start: ``POST {endpoint}/{operation}?callback=<the gateway's completion URL for this
  operation>`` with ``Nexus-Request-Id`` (the operation id: stable across every attempt, so
  the handler dedupes retries), ``Nexus-Callback-Token`` (the per-operation completion token;
  the handler copies it onto its callback as ``Token``), ``Request-Timeout`` and
  ``Operation-Timeout``, every caller link as ``Nexus-Link``, the caller's headers for the
  handler, and ``Content-Type`` only when there is content. 200: the result; 201: running,
  the body's ``token`` is kept for cancel; 424: failed or canceled; other statuses are
  handler errors (Failure body and ``Nexus-Request-Retryable`` win over the status).
- Completion: the handler POSTs its Nexus callback (``Nexus-Operation-State``, the result or
  a Failure, ``Nexus-Link``s) to ``/api/completions/{id}`` with the ``Token`` header.
- Cancel: ``POST {endpoint}/{operation}/cancel`` with ``Nexus-Operation-Token`` = the
  handler's token. 202 means the request was taken: the operation ends with the handler's
  completion (any state), or as canceled when the gateway's cancel grace runs out.

Extra request headers (``DispatchRequest.headers``, ``CancelRequest.extra``: e.g. the agent's
credentials) are applied last, so credentials plug in without changes here.
"""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import urlencode

from adapters.http import (
    forwardable_links,
    merge_headers,
    operation_url,
    send_cancel,
    start_outcome,
)
from gateway.domain.dispatch import (
    CancelRequest,
    DispatchRequest,
    Outcome,
    OutcomeKind,
    Transport,
    TransportError,
)


def nexus_start_headers(req: DispatchRequest) -> dict[str, str]:
    """The headers of a Nexus start request for this attempt."""
    op = req.operation
    headers = {
        "Nexus-Request-Id": op.id,
        "Nexus-Callback-Token": req.completion_token,
        "Request-Timeout": f"{max(1, int(req.timeout_s * 1000))}ms",
    }
    if op.input_content_type and op.input:
        headers["Content-Type"] = op.input_content_type
    if req.deadline is not None:
        remaining = (req.deadline - datetime.now(UTC)).total_seconds()
        headers["Operation-Timeout"] = f"{max(0, int(remaining * 1000))}ms"
    links = forwardable_links(op.links)
    if links:
        headers["Nexus-Link"] = links
    if op.traceparent:
        headers["traceparent"] = op.traceparent
    # the caller's headers for the handler < the gateway's < extra < credentials
    return merge_headers(op.handler_headers, headers, req.headers, req.auth_headers)


class NexusAgentAdapter:
    """Calls a Nexus HTTP handler per the spec (see the module docstring)."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    async def start(self, req: DispatchRequest) -> Outcome:
        op = req.operation
        url = (
            operation_url(req.agent.endpoint, op.operation)
            + "?"
            + urlencode({"callback": req.completion_url})
        )
        try:
            resp = await self.transport.request(
                "POST",
                url,
                headers=nexus_start_headers(req),
                body=op.input,
                timeout_s=req.timeout_s,
            )
        except TransportError as exc:
            kind = OutcomeKind.RETRYABLE if exc.retryable else OutcomeKind.PERMANENT
            return Outcome(kind=kind, error=str(exc))
        outcome = start_outcome(resp)
        if outcome.kind is OutcomeKind.ACCEPTED and resp.status != 201:
            return Outcome(
                kind=OutcomeKind.PERMANENT,
                error=f"Nexus handler answered a start with HTTP {resp.status} (not 200/201)",
                status=resp.status,
            )
        return outcome

    async def cancel(self, req: CancelRequest) -> Outcome:
        op = req.operation
        if not op.agent_token:
            return Outcome(
                kind=OutcomeKind.PERMANENT, error="the handler gave no operation token to cancel"
            )
        return await send_cancel(self.transport, req, op.agent_token)
