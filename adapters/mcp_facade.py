"""MCP (spec 2025-11-25) protocol logic for the gateway's own MCP endpoint (``/mcp``).

Pure shapes, no I/O: the JSON-RPC envelope, protocol-version negotiation, tool names and
schemas made from registered operations, CallToolResults made from operations, tasks made
from operations, and the signed session ids. The routes are in ``gateway.http.mcp``.

- A tool is one operation: ``{agent}__{operation}`` (MCP tool names: 1-128 characters of
  letters, digits, ``_``, ``-`` and ``.``; operations whose name would not fit are not listed).
- ``inputSchema`` must be an object schema: an operation whose input schema is not one is
  wrapped as ``{"input": <schema>}`` and the call's ``arguments.input`` is the input; no
  schema means any object, which is the input as it is.
- ``outputSchema`` likewise: an object schema is used as it is (``structuredContent`` is the
  result), any other one is wrapped as ``{"result": <schema>}``.
- A task is an operation: ``taskId`` is the operation id; running -> ``working``,
  succeeded -> ``completed``, failed -> ``failed``, canceled -> ``cancelled``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from dataclasses import dataclass
from typing import Any

from gateway.domain import jsonio
from gateway.domain.model import Operation, OperationState
from gateway.domain.specs import AgentSpec, OperationSpec

LATEST_VERSION = "2025-11-25"
SUPPORTED_VERSIONS = ("2025-11-25", "2025-06-18", "2025-03-26")
TASK_VERSIONS = frozenset({"2025-11-25"})  # tasks exist from 2025-11-25 on
SEPARATOR = "__"
TOOL_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")
RELATED_TASK = "io.modelcontextprotocol/related-task"
# MCP has no idempotency key: a client that retries a tools/call may put one in _meta under
# this key (or send the Idempotency-Key header); the gateway dedupes starts on it.
IDEMPOTENCY_META = "io.swarmgate/idempotency-key"

# JSON-RPC 2.0 error codes
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
STILL_RUNNING = -32000  # server error range: the bounded wait ran out

TASK_STATUS = {
    OperationState.RUNNING: "working",
    OperationState.SUCCEEDED: "completed",
    OperationState.FAILED: "failed",
    OperationState.CANCELED: "cancelled",
}


class McpFault(Exception):
    """A JSON-RPC error to answer (code, message, data)."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data


@dataclass(frozen=True)
class Message:
    """One parsed JSON-RPC message: a request (id and method), a notification (method, no
    id) or a response the client sends back (id, no method)."""

    method: str | None
    params: dict[str, Any]
    rpc_id: str | int | None
    is_request: bool


def parse_message(raw: bytes) -> Message:
    """Parse one JSON-RPC 2.0 message (batches are not part of MCP since 2025-06-18)."""
    try:
        data = jsonio.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise McpFault(PARSE_ERROR, f"parse error: {exc}") from exc
    if isinstance(data, list):
        raise McpFault(INVALID_REQUEST, "JSON-RPC batches are not supported by MCP 2025-11-25")
    if not isinstance(data, dict) or data.get("jsonrpc") != "2.0":
        raise McpFault(INVALID_REQUEST, 'a JSON-RPC 2.0 object with "jsonrpc": "2.0" is required')
    rpc_id = data.get("id")
    if "id" in data and (
        isinstance(rpc_id, bool) or not isinstance(rpc_id, str | int) or rpc_id is None
    ):
        raise McpFault(INVALID_REQUEST, "the id must be a string or an integer")
    method = data.get("method")
    if method is None:
        if "id" in data and ("result" in data or "error" in data):
            return Message(method=None, params={}, rpc_id=rpc_id, is_request=False)
        raise McpFault(INVALID_REQUEST, "a request needs a method")
    if not isinstance(method, str) or not method:
        raise McpFault(INVALID_REQUEST, "the method must be a non-empty string")
    params = data.get("params", {})
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise McpFault(INVALID_PARAMS, "params must be an object")
    return Message(method=method, params=params, rpc_id=rpc_id, is_request="id" in data)


def result(rpc_id: str | int | None, value: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rpc_id, "result": value}


def error(rpc_id: str | int | None, code: int, message: str, data: Any = None) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        err["data"] = data
    return {"jsonrpc": "2.0", "id": rpc_id, "error": err}


def negotiate(requested: Any) -> str:
    """The protocol version to answer: the client's when supported, else the latest."""
    return requested if requested in SUPPORTED_VERSIONS else LATEST_VERSION


def initialize_result(version: str, server_version: str) -> dict[str, Any]:
    capabilities: dict[str, Any] = {"tools": {"listChanged": False}}
    if version in TASK_VERSIONS:
        capabilities["tasks"] = {
            "list": {},
            "cancel": {},
            "requests": {"tools": {"call": {}}},
        }
    return {
        "protocolVersion": version,
        "capabilities": capabilities,
        "serverInfo": {"name": "swarmgate", "title": "swarmgate", "version": server_version},
        "instructions": (
            "Each tool is a durable operation of a registered agent. Long calls: add "
            '"task": {"ttl": ...} to tools/call and poll tasks/get, then tasks/result.'
        ),
    }


# -- sessions ---------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def new_session_id(key: bytes, sub: str, version: str, *, now: float | None = None) -> str:
    """A session id any replica can check: the caller and version, HMAC-signed."""
    payload = json.dumps(
        {"s": sub, "v": version, "t": int(now if now is not None else time.time())},
        separators=(",", ":"),
    ).encode()
    mac = hmac.new(key, b"mcp-session:" + payload, hashlib.sha256).digest()[:18]
    return f"{_b64(payload)}.{_b64(mac)}"


def read_session_id(key: bytes, session_id: str) -> dict[str, Any] | None:
    """The session's payload (``s`` sub, ``v`` version, ``t`` issued) or None if forged."""
    if len(session_id) > 1024 or session_id.count(".") != 1:
        return None
    body, sig = session_id.split(".")
    try:
        payload = _unb64(body)
        mac = _unb64(sig)
    except ValueError:
        return None
    want = hmac.new(key, b"mcp-session:" + payload, hashlib.sha256).digest()[:18]
    if not hmac.compare_digest(want, mac):
        return None
    try:
        data = json.loads(payload)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


# -- tools ------------------------------------------------------------------------------------


def tool_name(agent: str, operation: str) -> str | None:
    """The tool name of an operation, or None when it does not fit MCP's rules."""
    name = f"{agent}{SEPARATOR}{operation}"
    return name if TOOL_NAME.match(name) else None


def is_object_schema(schema: dict[str, Any] | None) -> bool:
    return schema is None or schema.get("type") == "object"


def input_schema(spec: OperationSpec) -> dict[str, Any]:
    schema = spec.input_schema
    if schema is None:
        return {"type": "object"}
    if is_object_schema(schema):
        return schema
    return {"type": "object", "properties": {"input": schema}, "required": ["input"]}


def output_schema(spec: OperationSpec) -> dict[str, Any] | None:
    schema = spec.output_schema
    if schema is None:
        return None
    if is_object_schema(schema):
        return schema
    return {"type": "object", "properties": {"result": schema}, "required": ["result"]}


def tool_json(agent: AgentSpec, spec: OperationSpec, name: str, version: str) -> dict[str, Any]:
    tool: dict[str, Any] = {
        "name": name,
        "title": f"{agent.name} / {spec.name}",
        "description": spec.description or agent.description or f"{agent.name} {spec.name}",
        "inputSchema": input_schema(spec),
    }
    out = output_schema(spec)
    if out is not None:
        tool["outputSchema"] = out
    if version in TASK_VERSIONS:
        tool["execution"] = {"taskSupport": "optional"}
    return tool


def tool_input(spec: OperationSpec, arguments: Any) -> bytes:
    """The operation input (JSON bytes) a tools/call's ``arguments`` stand for."""
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        raise McpFault(INVALID_PARAMS, "arguments must be an object")
    if is_object_schema(spec.input_schema):
        return json.dumps(arguments).encode()
    if "input" not in arguments:
        raise McpFault(INVALID_PARAMS, "this tool takes its input as arguments.input")
    return json.dumps(arguments["input"]).encode()


def idempotency_key(params: dict[str, Any]) -> str | None:
    meta = params.get("_meta")
    if not isinstance(meta, dict) or IDEMPOTENCY_META not in meta:
        return None
    key = meta[IDEMPOTENCY_META]
    if not isinstance(key, str) or not 1 <= len(key) <= 255:
        raise McpFault(INVALID_PARAMS, f"_meta[{IDEMPOTENCY_META!r}] must be 1-255 characters")
    return key


def task_request(params: dict[str, Any]) -> dict[str, Any] | None:
    """The ``task`` augmentation of a request, or None."""
    task = params.get("task")
    if task is None:
        return None
    if not isinstance(task, dict):
        raise McpFault(INVALID_PARAMS, "task must be an object")
    ttl = task.get("ttl")
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 0):
        raise McpFault(INVALID_PARAMS, "task.ttl must be a non-negative integer (milliseconds)")
    return task


# -- results and tasks ------------------------------------------------------------------------


def _value(op: Operation) -> Any:
    body = op.result or b""
    ct = (op.result_content_type or "application/json").lower()
    if not body:
        return None
    if "json" in ct:
        try:
            return jsonio.loads(body)
        except (ValueError, UnicodeDecodeError):
            return body.decode(errors="replace")
    return body.decode(errors="replace")


def failure_text(op: Operation) -> str:
    fail = op.failure or {}
    message = str(fail.get("message") or f"operation {op.state.value}")
    cause = fail.get("cause")
    if isinstance(cause, dict) and cause.get("message") and cause["message"] != message:
        message = f"{message}: {cause['message']}"
    return message


def call_result(op: Operation, spec: OperationSpec | None) -> dict[str, Any]:
    """The CallToolResult of a terminal operation."""
    meta = {RELATED_TASK: {"taskId": op.id}}
    if op.state is not OperationState.SUCCEEDED:
        return {
            "content": [{"type": "text", "text": failure_text(op)}],
            "isError": True,
            "_meta": meta,
        }
    value = _value(op)
    text = value if isinstance(value, str) else json.dumps(value)
    out: dict[str, Any] = {"content": [{"type": "text", "text": text}], "isError": False}
    wrapped = spec is not None and not is_object_schema(spec.output_schema)
    if isinstance(value, dict) and not wrapped:
        out["structuredContent"] = value
    else:
        out["structuredContent"] = {"result": value}
    out["_meta"] = meta
    return out


def _iso(op: Operation) -> tuple[str, str]:
    created = op.created_at.isoformat().replace("+00:00", "Z")
    updated = (op.closed_at or op.created_at).isoformat().replace("+00:00", "Z")
    return created, updated


def task_json(
    op: Operation, poll_interval_ms: int, waiting: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The MCP task of an operation; ``waiting`` (its open question) is ``input_required``."""
    created, updated = _iso(op)
    task: dict[str, Any] = {
        "taskId": op.id,
        "status": TASK_STATUS[op.state],
        "createdAt": created,
        "lastUpdatedAt": updated,
        "ttl": None,  # the gateway keeps operations; nothing expires them
        "pollInterval": poll_interval_ms,
    }
    if op.state in (OperationState.FAILED, OperationState.CANCELED):
        task["statusMessage"] = failure_text(op)
    elif op.state is OperationState.RUNNING and op.cancel_requested_at is not None:
        task["statusMessage"] = "cancellation requested"
    elif op.state is OperationState.RUNNING and waiting is not None:
        task["status"] = "input_required"
        task["statusMessage"] = str(waiting.get("prompt") or "input required")
    elif op.state is OperationState.RUNNING and op.last_error:
        task["statusMessage"] = f"retrying: {op.last_error}"
    return task


def page_cursor(raw: Any, limit: int) -> int:
    """The offset a tasks/list cursor stands for (cursors are opaque to clients)."""
    if raw is None:
        return 0
    if not isinstance(raw, str) or not raw.isdigit() or len(raw) > 9:
        raise McpFault(INVALID_PARAMS, "invalid cursor")
    offset = int(raw)
    if offset > limit:
        raise McpFault(INVALID_PARAMS, "invalid cursor")
    return offset


def protected_resource_metadata(resource: str, issuer: str, scopes: list[str]) -> dict[str, Any]:
    """RFC 9728 metadata of the /mcp resource."""
    meta: dict[str, Any] = {
        "resource": resource,
        "bearer_methods_supported": ["header"],
        "resource_name": "swarmgate MCP endpoint",
        "scopes_supported": scopes,
    }
    if issuer.startswith(("https://", "http://")):
        meta["authorization_servers"] = [issuer]
    return meta


__all__ = [
    "IDEMPOTENCY_META",
    "LATEST_VERSION",
    "SUPPORTED_VERSIONS",
    "McpFault",
    "Message",
    "call_result",
    "error",
    "initialize_result",
    "input_schema",
    "negotiate",
    "new_session_id",
    "output_schema",
    "parse_message",
    "read_session_id",
    "result",
    "task_json",
    "tool_input",
    "tool_json",
    "tool_name",
]
