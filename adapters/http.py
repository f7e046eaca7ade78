"""Outbound adapter for agents that speak Nexus-style HTTP (plain webhooks work too).

Start: ``POST {endpoint}/{operation}?callback=<gateway completion URL>`` with the operation id
as ``Nexus-Request-Id`` and ``Idempotency-Key`` (stable across every attempt and restart).
  200 -> result; 201/202 -> accepted (completes later via the callback); 424 -> operation failed;
  other statuses -> HandlerError semantics (body wins over status).
Cancel: ``POST {endpoint}/{operation}/cancel`` with ``Nexus-Operation-Token``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

from gateway.domain import jsonio
from gateway.domain.dispatch import (
    CancelRequest,
    DispatchRequest,
    HttpResponse,
    Outcome,
    OutcomeKind,
    Transport,
    TransportError,
)
from gateway.domain.errors import HandlerErrorType


def operation_url(endpoint: str, operation: str) -> str:
    return endpoint.rstrip("/") + "/" + quote(operation, safe="")


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        from email.utils import parsedate_to_datetime

        when = parsedate_to_datetime(value)
        return max(0.0, (when - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError):
        return None


def _json(body: bytes) -> Any:
    try:
        return jsonio.loads(body) if body else None
    except (ValueError, UnicodeDecodeError):
        return None


def classify_error(resp: HttpResponse) -> Outcome:
    """Map a non-success response to an outcome: HandlerError body wins over status."""
    body = _json(resp.body)
    retry_after = parse_retry_after(resp.headers.get("Retry-After"))
    etype = HandlerErrorType.from_status(resp.status)
    retryable: bool | None = None
    message = f"agent answered HTTP {resp.status}"
    failure: dict[str, Any] | None = None
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        failure = body
        message = f"{message}: {body['message']}"
        details = body.get("details")
        if isinstance(details, dict):
            named = HandlerErrorType.from_name(str(details.get("type", "")))
            if named is not None:
                etype = named
            if isinstance(details.get("retryableOverride"), bool):
                retryable = details["retryableOverride"]
    if retryable is None:
        retryable = etype.default_retryable
    return Outcome(
        kind=OutcomeKind.RETRYABLE if retryable else OutcomeKind.PERMANENT,
        error=message,
        status=resp.status,
        failure=failure,
        retry_after_s=retry_after,
    )


class HttpAgentAdapter:
    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    async def start(self, req: DispatchRequest) -> Outcome:
        op = req.operation
        headers = {
            "Content-Type": op.input_content_type or "application/json",
            "Nexus-Request-Id": op.id,
            "Idempotency-Key": op.id,
            "Nexus-Callback-Authorization": f"Bearer {req.completion_token}",
            "Request-Timeout": f"{int(req.timeout_s * 1000)}ms",
            "Swarmgate-Caller": op.caller,
            **req.journal_headers(),  # attempt, heartbeat and journal (issue 12)
        }
        if req.deadline is not None:
            remaining = (req.deadline - datetime.now(UTC)).total_seconds()
            headers["Operation-Timeout"] = f"{max(0, int(remaining * 1000))}ms"
        if op.traceparent:
            headers["traceparent"] = op.traceparent
        for link in op.links:
            headers.setdefault("Nexus-Link", link)
        headers.update(req.auth_headers)
        url = (
            operation_url(req.agent.endpoint, op.operation)
            + "?"
            + urlencode({"callback": req.completion_url})
        )
        try:
            resp = await self.transport.request(
                "POST", url, headers=headers, body=op.input, timeout_s=req.timeout_s
            )
        except TransportError as exc:
            kind = OutcomeKind.RETRYABLE if exc.retryable else OutcomeKind.PERMANENT
            return Outcome(kind=kind, error=str(exc))
        if resp.status == 200:
            return Outcome(
                kind=OutcomeKind.SUCCEEDED,
                result=resp.body,
                content_type=resp.headers.get("Content-Type"),
                status=200,
            )
        if resp.status in (201, 202):
            body = _json(resp.body)
            token = None
            if isinstance(body, dict):
                token = body.get("token") or body.get("id")
            return Outcome(
                kind=OutcomeKind.ACCEPTED,
                agent_token=str(token) if token else None,
                status=resp.status,
            )
        if resp.status == 424:
            body = _json(resp.body)
            failure = (
                body if isinstance(body, dict) else {"message": resp.body.decode(errors="replace")}
            )
            state = resp.headers.get("Nexus-Operation-State")
            details = failure.get("details")
            if isinstance(details, dict) and details.get("state") in ("failed", "canceled"):
                state = details["state"]
            return Outcome(
                kind=OutcomeKind.OPERATION_FAILED,
                state="canceled" if state == "canceled" else "failed",
                failure=failure,
                status=424,
            )
        return classify_error(resp)

    async def cancel(self, req: CancelRequest) -> Outcome:
        op = req.operation
        headers = {
            "Nexus-Request-Id": f"cancel-{op.id}",
            "Nexus-Operation-Token": op.agent_token or op.id,
            **req.auth_headers,
        }
        url = operation_url(req.agent.endpoint, op.operation) + "/cancel"
        try:
            resp = await self.transport.request(
                "POST", url, headers=headers, body=b"", timeout_s=req.timeout_s
            )
        except TransportError as exc:
            kind = OutcomeKind.RETRYABLE if exc.retryable else OutcomeKind.PERMANENT
            return Outcome(kind=kind, error=str(exc))
        if 200 <= resp.status < 300:
            return Outcome(kind=OutcomeKind.SUCCEEDED, status=resp.status)
        return classify_error(resp)
