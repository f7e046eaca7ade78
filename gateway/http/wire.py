"""The JSON shapes the HTTP layer emits for operations, events, deliveries and secrets.

One place for the field names and time format of ``/api`` and ``/nexus`` bodies (the SSE
stream sends ``event_json`` too). The A2A task JSON is A2A's: ``adapters/a2a_facade.py``.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from gateway.domain import jsonio
from gateway.domain import links as nexus_links
from gateway.domain.model import CallbackDelivery, CallerSecrets, Event, Operation, OperationState


def iso(dt: datetime | None) -> str | None:
    """RFC 3339 in UTC with a ``Z`` (None stays None)."""
    return dt.isoformat().replace("+00:00", "Z") if dt else None


def operation_info(op: Operation) -> dict[str, Any]:
    """The Nexus operation info: id, token and state."""
    return {"id": op.id, "token": op.id, "state": op.state.value}


def running_body(op: Operation) -> bytes:
    """The body of a 201 for a running operation (``operation_info``, built without a dump)."""
    token = json.dumps(op.id)  # the one variable part; the rest of the body is fixed
    return f'{{"token": {token}, "id": {token}, "state": "running"}}'.encode()


def operation_json(op: Operation) -> dict[str, Any]:
    """The whole operation as ``/api/operations/{id}`` shows it (the result when succeeded)."""
    body: dict[str, Any] = {
        "id": op.id,
        "token": op.id,
        "state": op.state.value,
        "service": op.service,
        "operation": op.operation,
        "caller": op.caller,
        "requestId": op.request_id,
        "attempts": op.attempts,
        "work": op.work.value if op.work else None,
        "nextAttemptAt": iso(op.next_attempt_at),
        "leaseOwner": op.lease_owner,
        "deadlineAt": iso(op.deadline_at),
        "cancelRequestedAt": iso(op.cancel_requested_at),
        "createdAt": iso(op.created_at),
        "closedAt": iso(op.closed_at),
        "lastError": op.last_error,
        "callbackUrl": op.callback_url,
        "callbackEvents": sorted(op.callback_events),
        "failure": op.failure,
        "links": nexus_links.lenient(op.links),
    }
    if op.state is OperationState.SUCCEEDED and op.result is not None:
        ct = op.result_content_type or ""
        if "json" in ct:
            try:
                body["result"] = jsonio.loads(op.result)
            except ValueError:
                body["result"] = op.result.decode(errors="replace")
        else:
            body["result"] = op.result.decode(errors="replace")
    return body


def _payload(data: bytes, content_type: str | None) -> Any:
    """A stored body as JSON when it is JSON, else as text."""
    if "json" in (content_type or ""):
        try:
            return jsonio.loads(data)
        except ValueError:
            pass
    return data.decode(errors="replace")


def input_json(op: Operation) -> dict[str, Any]:
    """The operation's input (parsed JSON for JSON inputs, else text) and its content type."""
    return {
        "input": _payload(op.input, op.input_content_type),
        "inputContentType": op.input_content_type,
    }


def event_json(e: Event) -> dict[str, Any]:
    """One event of an operation's history."""
    return {"id": e.id, "at": iso(e.at), "kind": e.kind, "data": e.data}


def delivery_json(d: CallbackDelivery) -> dict[str, Any]:
    """One callback delivery (never its body or headers: they may carry secrets)."""
    return {
        "id": d.id,
        "url": d.url,
        "state": d.state.value,
        "attempts": d.attempts,
        "nextAttemptAt": iso(d.next_attempt_at),
        "expiresAt": iso(d.expires_at),
        "deliveredAt": iso(d.delivered_at),
        "lastError": d.last_error,
    }


def secrets_json(cs: CallerSecrets) -> dict[str, Any]:
    """A caller's callback signing secret and until when the previous one still verifies."""
    return {
        "caller": cs.caller,
        "secret": cs.secret,
        "previousSecretValidUntil": iso(cs.previous_until),
        "rotatedAt": iso(cs.rotated_at),
    }
