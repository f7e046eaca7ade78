"""Inbound A2A 1.0 facade, protocol half (continued): streaming and the HTTP+JSON binding.

Streams (SendStreamingMessage, SubscribeToTask) are fed by the operation's durable history:
each committed event becomes StreamResponses, and the SSE ``id`` of a frame is the event id,
so a client that reconnects with ``Last-Event-ID`` gets what it missed (across a gateway
restart too). A stream opens with the Task as it stands (unless resumed) and ends after the
terminal status update.

The HTTP+JSON binding answers errors as ``google.rpc.Status`` JSON with an ``ErrorInfo``
detail whose ``reason`` names the A2A error (what the SDKs map back to their error types).
No web framework and no engine here; the routes are in ``gateway.http.a2a_rest``.
"""

from __future__ import annotations

import json
from typing import Any

from adapters.a2a_facade import A2A_JSON_CT, STATE_OF, context_id, result_artifact, task_json
from gateway.domain.model import Event, Operation, OperationState

__all__ = ["A2A_JSON_CT", "event_updates", "rest_error", "sse_frame"]

# kinds of history that say nothing to an A2A client (deliveries of callbacks and pushes)
QUIET_PREFIXES = ("callback.", "a2a.")
TERMINAL_KINDS = {
    "operation.succeeded",
    "operation.failed",
    "operation.canceled",
    "operation.timed_out",
}


def status_update(op: Operation, state: str, metadata: dict[str, Any]) -> dict[str, Any]:
    return {
        "statusUpdate": {
            "taskId": op.id,
            "contextId": context_id(op),
            "status": {"state": state, "timestamp": metadata.pop("at", None)},
            "metadata": metadata,
        }
    }


def artifact_update(op: Operation) -> dict[str, Any]:
    return {
        "artifactUpdate": {
            "taskId": op.id,
            "contextId": context_id(op),
            "artifact": result_artifact(op),
            "append": False,
            "lastChunk": True,
        }
    }


def event_updates(op: Operation, event: Event) -> list[dict[str, Any]]:
    """The StreamResponses one history event of ``op`` stands for (``op`` as it is now)."""
    if event.kind.startswith(QUIET_PREFIXES):
        return []
    at = event.at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{event.at.microsecond // 1000:03d}Z"
    meta: dict[str, Any] = {"at": at, "event": event.kind, "eventId": event.id}
    if event.kind in TERMINAL_KINDS and op.state.terminal:
        out: list[dict[str, Any]] = []
        if op.state is OperationState.SUCCEEDED:
            out.append(artifact_update(op))
        final = task_json(op, include_artifacts=False, history_length=0)
        update = status_update(op, STATE_OF[op.state], meta)
        if "message" in final["status"]:
            update["statusUpdate"]["status"]["message"] = final["status"]["message"]
        out.append(update)
        return out
    if event.kind in TERMINAL_KINDS:
        return []
    if event.kind == "input.requested":  # the agent asks the caller: answer with a follow-up
        update = status_update(op, "TASK_STATE_INPUT_REQUIRED", meta)
        update["statusUpdate"]["status"]["message"] = {
            "messageId": f"{op.id}-input-{event.data.get('name', '1')}",
            "contextId": context_id(op),
            "taskId": op.id,
            "role": "ROLE_AGENT",
            "parts": [{"text": str(event.data.get("prompt") or "")}],
        }
        return [update]
    return [status_update(op, "TASK_STATE_WORKING", meta)]


def ends_stream(update: dict[str, Any]) -> bool:
    state = (update.get("statusUpdate") or {}).get("status", {}).get("state")
    # an interrupted task (the agent asks its caller) ends the stream too, as A2A says: the
    # follow-up message with the taskId answers it
    return state in (
        "TASK_STATE_COMPLETED",
        "TASK_STATE_FAILED",
        "TASK_STATE_CANCELED",
        "TASK_STATE_INPUT_REQUIRED",
    )


def sse_frame(event_id: int | None, payload: dict[str, Any]) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}data: {json.dumps(payload)}\n\n".encode()


# -- HTTP+JSON errors ---------------------------------------------------------------------------

# JSON-RPC code -> (HTTP status, google.rpc code name, A2A reason)
REST_ERRORS: dict[int, tuple[int, str, str]] = {
    -32001: (404, "NOT_FOUND", "TASK_NOT_FOUND"),
    -32002: (400, "FAILED_PRECONDITION", "TASK_NOT_CANCELABLE"),
    -32003: (400, "FAILED_PRECONDITION", "PUSH_NOTIFICATION_NOT_SUPPORTED"),
    -32004: (400, "FAILED_PRECONDITION", "UNSUPPORTED_OPERATION"),
    -32005: (400, "INVALID_ARGUMENT", "CONTENT_TYPE_NOT_SUPPORTED"),
    -32009: (400, "FAILED_PRECONDITION", "VERSION_NOT_SUPPORTED"),
    -32700: (400, "INVALID_ARGUMENT", "INVALID_REQUEST"),
    -32600: (400, "INVALID_ARGUMENT", "INVALID_REQUEST"),
    -32601: (404, "NOT_FOUND", "METHOD_NOT_FOUND"),
    -32602: (400, "INVALID_ARGUMENT", "INVALID_PARAMS"),
    -32603: (500, "INTERNAL", "INTERNAL_ERROR"),
}


def rest_error(code: int, message: str, data: Any = None) -> tuple[int, dict[str, Any]]:
    """The HTTP status and ``google.rpc.Status`` body of an A2A error."""
    status, name, reason = REST_ERRORS.get(code, REST_ERRORS[-32603])
    info = {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": reason,
        "domain": "a2a-protocol.org",
        "metadata": {k: json.dumps(v) if not isinstance(v, str) else v for k, v in data.items()}
        if isinstance(data, dict)
        else {},
    }
    return status, {
        "error": {"code": status, "status": name, "message": message, "details": [info]}
    }
