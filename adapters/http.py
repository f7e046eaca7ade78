"""Outbound adapter for agents that speak Nexus-style HTTP (plain webhooks work too).

Start: ``POST {endpoint}/{operation}?callback=<gateway completion URL>`` with the operation id
as ``Nexus-Request-Id`` and ``Idempotency-Key`` (stable across every attempt and restart).
  200 -> result; 201/202 -> accepted (completes later via the callback); 424 -> operation failed;
  other statuses -> HandlerError semantics (body wins over status).
Cancel: ``POST {endpoint}/{operation}/cancel`` with ``Nexus-Operation-Token``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, quote_plus

from gateway.domain import jsonio
from gateway.domain import links as nexus_links
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
    return endpoint.rstrip("/") + "/" + _quoted_segment(operation)


@functools.lru_cache(maxsize=1024)
def _quoted_segment(name: str) -> str:
    return quote(name, safe="")


def query_value(url: str) -> str:
    """``url`` as one query value, encoded as ``urlencode`` encodes it (``quote_plus``).

    Percent-encoding maps each character on its own, so the part up to the last ``/`` (the
    same for every operation: the gateway's completion base) is encoded once and remembered.
    """
    cut = url.rfind("/") + 1
    return _quoted_prefix(url[:cut]) + quote_plus(url[cut:], safe="")


@functools.lru_cache(maxsize=256)
def _quoted_prefix(prefix: str) -> str:
    return quote_plus(prefix, safe="")


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


def header_values(headers: Mapping[str, str], name: str) -> list[str]:
    """Every value of a header (a response's headers are a multidict)."""
    getall = getattr(headers, "getall", None)
    if getall is not None:
        return list(getall(name, []))
    value = headers.get(name)
    return [value] if value is not None else []


def returned_links(headers: Mapping[str, str]) -> tuple[str, ...]:
    """The well-formed ``Nexus-Link``s of an agent's answer, in header form."""
    parsed = nexus_links.lenient(header_values(headers, "Nexus-Link"))
    return tuple(nexus_links.format_link(link) for link in parsed)


def merge_headers(*layers: Mapping[str, str]) -> dict[str, str]:
    """Header layers merged case-insensitively: a later layer's header replaces an earlier
    one of the same name (the caller's headers < the gateway's < extra ones, e.g. credentials)."""
    out: dict[str, str] = {}
    names: dict[str, str] = {}
    for layer in layers:
        for name, value in layer.items():
            low = name.lower()
            old = names.get(low)
            if old is not None:
                del out[old]
            names[low] = name
            out[name] = value
    return out


def forwardable_links(values: list[str]) -> str | None:
    """The operation's links as one ``Nexus-Link`` value, well-formed ones only (links made
    inside the gateway, e.g. an A2A ``contextId``, may not be URLs)."""
    parsed = nexus_links.lenient(values)
    return nexus_links.header_value(parsed) if parsed else None


def retryable_header(headers: Mapping[str, str]) -> bool | None:
    """``Nexus-Request-Retryable: true|false`` (None when absent or neither)."""
    value = (headers.get("Nexus-Request-Retryable") or "").strip().lower()
    return True if value == "true" else False if value == "false" else None


def nexus_refusal(resp: HttpResponse) -> str | None:
    """When a non-2xx answer is a Nexus answer that says "do not retry": its message.

    A Nexus answer is one with ``Nexus-Request-Retryable`` or a Failure body; a plain
    webhook receiver's error (no Failure body) is not one and stays retryable."""
    header = retryable_header(resp.headers)
    if header is True:
        return None
    body = _json(resp.body)
    is_failure = isinstance(body, dict) and isinstance(body.get("message"), str)
    if header is None and not is_failure:
        return None
    outcome = classify_error(resp)
    if outcome.kind is OutcomeKind.RETRYABLE:
        return None
    return str(body["message"]) if is_failure and isinstance(body, dict) else "not retryable"


def classify_error(resp: HttpResponse) -> Outcome:
    """Map a non-success response to an outcome: HandlerError body wins over status, and
    ``Nexus-Request-Retryable`` wins over both."""
    body = _json(resp.body)
    retry_after = parse_retry_after(resp.headers.get("Retry-After"))
    etype = HandlerErrorType.from_status(resp.status)
    retryable: bool | None = retryable_header(resp.headers)
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
            if retryable is None and isinstance(details.get("retryableOverride"), bool):
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
        # the caller's headers for the handler < the gateway's < extra < credentials
        headers = merge_headers(
            op.handler_headers, start_headers(req), req.headers, req.auth_headers
        )
        url = (
            operation_url(req.agent.endpoint, op.operation)
            + "?callback="
            + query_value(req.completion_url)
        )
        try:
            resp = await self.transport.request(
                "POST", url, headers=headers, body=op.input, timeout_s=req.timeout_s
            )
        except TransportError as exc:
            kind = OutcomeKind.RETRYABLE if exc.retryable else OutcomeKind.PERMANENT
            return Outcome(kind=kind, error=str(exc))
        return start_outcome(resp)

    async def cancel(self, req: CancelRequest) -> Outcome:
        op = req.operation
        headers = {"Nexus-Request-Id": f"cancel-{op.id}"}
        return await send_cancel(self.transport, req, op.agent_token or op.id, headers)


def start_headers(req: DispatchRequest) -> dict[str, str]:
    """The Nexus start headers the gateway sets (``Content-Type`` only when the caller sent
    one: no content is no ``Content-Type`` and an empty body)."""
    op = req.operation
    headers = {
        "Nexus-Request-Id": op.id,
        "Idempotency-Key": op.id,
        "Nexus-Callback-Authorization": f"Bearer {req.completion_token}",
        "Request-Timeout": f"{int(req.timeout_s * 1000)}ms",
        "Swarmgate-Caller": op.caller,
        **req.journal_headers(),  # attempt, heartbeat and journal (issue 12)
    }
    if op.input_content_type:
        headers["Content-Type"] = op.input_content_type
    if req.deadline is not None:
        remaining = (req.deadline - datetime.now(UTC)).total_seconds()
        headers["Operation-Timeout"] = f"{max(0, int(remaining * 1000))}ms"
    if op.traceparent:
        headers["traceparent"] = op.traceparent
    links = forwardable_links(op.links)
    if links:  # every link, comma-separated in one header (the spec allows both forms)
        headers["Nexus-Link"] = links
    return headers


def start_outcome(resp: HttpResponse) -> Outcome:
    """What a Nexus(-style) handler's answer to a start means."""
    links = returned_links(resp.headers)
    if resp.status == 200:
        return Outcome(
            kind=OutcomeKind.SUCCEEDED,
            result=resp.body,
            content_type=resp.headers.get("Content-Type") if resp.body else None,
            status=200,
            links=links,
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
            links=links,
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
            links=links,
        )
    return classify_error(resp)


async def send_cancel(
    transport: Transport, req: CancelRequest, token: str, headers: Mapping[str, str] | None = None
) -> Outcome:
    """POST the Nexus cancel of ``req`` with the handler's ``token`` (the gateway's headers <
    extra < credentials) and read the answer."""
    op = req.operation
    sent = merge_headers(
        {**(headers or {}), "Nexus-Operation-Token": token}, req.extra, req.auth_headers
    )
    url = operation_url(req.agent.endpoint, op.operation) + "/cancel"
    try:
        resp = await transport.request("POST", url, headers=sent, body=b"", timeout_s=req.timeout_s)
    except TransportError as exc:
        kind = OutcomeKind.RETRYABLE if exc.retryable else OutcomeKind.PERMANENT
        return Outcome(kind=kind, error=str(exc))
    return cancel_outcome(resp)


def cancel_outcome(resp: HttpResponse) -> Outcome:
    """202: the handler took the cancel request (the operation ends later, in any state);
    another 2xx: the cancel is final (the operation is canceled now)."""
    if resp.status == 202:
        return Outcome(kind=OutcomeKind.ACCEPTED, status=202)
    if 200 <= resp.status < 300:
        return Outcome(kind=OutcomeKind.SUCCEEDED, status=resp.status)
    return classify_error(resp)
