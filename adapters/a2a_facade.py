"""Inbound A2A 1.0 facade, protocol half: every registered agent is also an A2A agent
(JSON-RPC binding), backed by durable operations (A2A task id == operation id).

This module holds what A2A says, with no web framework and no engine: the agent cards, the
task JSON of an operation, the state mapping, JSON-RPC envelope parsing and error bodies, the
message input and skill choice, push-notification configs and the pushes queued for them. The
routes that serve it (and the background pass that queues pushes) are in ``gateway.http.a2a``.

SendMessage picks the operation from ``metadata.skill`` (message or request), or the only one;
the input is the first data part (else the text, parsed as JSON when it is JSON); the
``messageId`` is the request id, so a resent message returns the same task.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from adapters.a2a import A2A_VERSION, JSON_CT
from gateway.domain import jsonio
from gateway.domain.errors import HandlerErrorType
from gateway.domain.model import Operation, OperationState
from gateway.domain.specs import AgentSpec

PREFIX = "/a2a"
CARD_PATH = "/.well-known/agent-card.json"
CONTEXT_LINK_TYPE = "a2a.contextId"

STATE_OF = {
    OperationState.RUNNING: "TASK_STATE_WORKING",
    OperationState.SUCCEEDED: "TASK_STATE_COMPLETED",
    OperationState.FAILED: "TASK_STATE_FAILED",
    OperationState.CANCELED: "TASK_STATE_CANCELED",
}
OP_STATE_OF = {v: k for k, v in STATE_OF.items()}

UNSUPPORTED = frozenset({"SendStreamingMessage", "SubscribeToTask", "GetExtendedAgentCard"})


class RpcFault(Exception):
    def __init__(self, code: int, message: str, data: Any = None, rpc_id: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data
        self.rpc_id = rpc_id


def invalid_params(message: str, data: Any = None) -> RpcFault:
    return RpcFault(-32602, message, data)


def task_not_found() -> RpcFault:
    return RpcFault(-32001, "Task not found")


# -- agent cards ------------------------------------------------------------------------------


def agent_card(agent: AgentSpec, base_url: str) -> dict[str, Any]:
    return {
        "name": agent.name,
        "description": agent.description or f"{agent.name} (via swarmgate)",
        "supportedInterfaces": [
            {
                "url": f"{base_url}{PREFIX}/{agent.name}",
                "protocolBinding": "JSONRPC",
                "protocolVersion": A2A_VERSION,
            }
        ],
        "provider": {"organization": "swarmgate", "url": base_url},
        "version": agent.version,
        "capabilities": {"streaming": False, "pushNotifications": True},
        "defaultInputModes": [JSON_CT, "text/plain"],
        "defaultOutputModes": [JSON_CT, "text/plain"],
        "skills": [
            {
                "id": op.name,
                "name": op.name,
                "description": op.description or f"operation {op.name} of {agent.name}",
                "tags": [agent.name],
                "inputModes": [JSON_CT],
                "outputModes": [JSON_CT],
            }
            for op in agent.operations.values()
        ],
    }


def gateway_card(agents: Iterable[AgentSpec], base_url: str) -> dict[str, Any]:
    skills = [
        {
            "id": f"{a.name}/{op}",
            "name": f"{a.name}/{op}",
            "description": f"A2A agent card: {base_url}{PREFIX}/{a.name}{CARD_PATH}",
            "tags": [a.name],
        }
        for a in agents
        for op in a.operations
    ]
    return {
        "name": "swarmgate",
        "description": "Durable agent gateway; each agent has its own card under /a2a/{agent}",
        "supportedInterfaces": [],
        "version": "1",
        "capabilities": {"streaming": False, "pushNotifications": True},
        "defaultInputModes": [JSON_CT],
        "defaultOutputModes": [JSON_CT],
        "skills": skills,
    }


# -- operation <-> task -----------------------------------------------------------------------


def _ts(dt: datetime | None) -> str | None:
    if dt is None:
        return None
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def context_id(op: Operation) -> str:
    for link in op.links:
        if f'type="{CONTEXT_LINK_TYPE}"' in link and link.startswith("<"):
            return link[1 : link.index(">")]
    return op.id


def context_links(message: dict[str, Any]) -> tuple[str, ...]:
    """The operation links that carry the message's ``contextId`` (none without one)."""
    value = message.get("contextId")
    if isinstance(value, str) and value and ">" not in value:
        return (f'<{value}>; type="{CONTEXT_LINK_TYPE}"',)
    return ()


def _result_value(op: Operation) -> tuple[bool, Any]:
    body = op.result or b""
    if "json" in (op.result_content_type or JSON_CT).lower():
        try:
            return True, jsonio.loads(body) if body else None
        except (ValueError, UnicodeDecodeError):
            pass
    return False, body.decode(errors="replace")


def task_json(op: Operation, *, include_artifacts: bool = True) -> dict[str, Any]:
    status: dict[str, Any] = {"state": STATE_OF[op.state]}
    stamp = _ts(op.closed_at or op.created_at)
    if stamp:
        status["timestamp"] = stamp
    task: dict[str, Any] = {
        "id": op.id,
        "contextId": context_id(op),
        "status": status,
        "metadata": {"skill": op.operation, "agent": op.service},
    }
    if op.state is OperationState.SUCCEEDED and include_artifacts:
        is_json, value = _result_value(op)
        part = {"data": value, "mediaType": JSON_CT} if is_json else {"text": value}
        task["artifacts"] = [{"artifactId": f"{op.id}-result", "name": "result", "parts": [part]}]
    elif op.state.terminal:
        message = str((op.failure or {}).get("message") or op.state.value)
        status["message"] = {
            "messageId": f"{op.id}-status",
            "contextId": task["contextId"],
            "taskId": op.id,
            "role": "ROLE_AGENT",
            "parts": [{"text": message}],
        }
        if op.failure:
            task["metadata"]["failure"] = op.failure
    return task


def message_input(message: dict[str, Any]) -> bytes:
    parts = [p for p in message.get("parts") or [] if isinstance(p, dict)]
    for p in parts:
        if "data" in p:
            return json.dumps(p["data"]).encode()
    texts = [str(p["text"]) for p in parts if "text" in p]
    if not texts:
        raise invalid_params("the message needs a data or text part")
    text = "\n".join(texts)
    try:
        jsonio.loads(text)
        return text.encode()
    except ValueError:
        return json.dumps(text).encode()


def choose_skill(agent: AgentSpec, params: dict[str, Any], message: dict[str, Any]) -> str:
    for meta in (message.get("metadata"), params.get("metadata")):
        if isinstance(meta, dict) and isinstance(meta.get("skill"), str):
            skill = str(meta["skill"])
            if skill not in agent.operations:
                raise invalid_params(f"agent {agent.name!r} has no skill {skill!r}")
            return skill
    if len(agent.operations) == 1:
        return next(iter(agent.operations))
    raise invalid_params(
        "choose a skill with metadata.skill; one of " + ", ".join(sorted(agent.operations))
    )


def check_send(params: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The message of a SendMessage and its id (RpcFault if malformed)."""
    message = params.get("message")
    if not isinstance(message, dict):
        raise invalid_params("params.message is required")
    if message.get("taskId"):
        raise RpcFault(-32004, "follow-up messages to an existing task are not supported")
    message_id = message.get("messageId")
    if not isinstance(message_id, str) or not message_id:
        raise invalid_params("message.messageId is required")
    return message, message_id


def send_configuration(params: dict[str, Any]) -> dict[str, Any]:
    configuration = params.get("configuration") or {}
    if not isinstance(configuration, dict):
        raise invalid_params("params.configuration must be an object")
    return configuration


def page_size(params: dict[str, Any]) -> int:
    try:
        return min(100, max(1, int(params.get("pageSize") or 50)))
    except (TypeError, ValueError) as exc:
        raise invalid_params("pageSize must be an integer") from exc


def require_id(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise invalid_params(f"a {what} is required")
    return value


# -- push-notification configs (inbound) ------------------------------------------------------


def push_config(raw: Any, task_id: str) -> dict[str, Any]:
    if not isinstance(raw, dict) or not isinstance(raw.get("url"), str) or not raw["url"]:
        raise invalid_params("a push notification config needs a url")
    config: dict[str, Any] = {
        "id": str(raw.get("id") or uuid.uuid4()),
        "taskId": task_id,
        "url": raw["url"],
    }
    if raw.get("token"):
        config["token"] = str(raw["token"])
    auth = raw.get("authentication")
    if isinstance(auth, dict) and auth.get("scheme"):
        config["authentication"] = {
            "scheme": str(auth["scheme"]),
            "credentials": str(auth.get("credentials") or ""),
        }
    return config


def push_headers(config: dict[str, Any]) -> dict[str, str]:
    """The headers of a push to ``config`` (its token and authentication, if any)."""
    headers = {"Content-Type": JSON_CT, "A2A-Version": A2A_VERSION}
    if config.get("token"):
        headers["X-A2A-Notification-Token"] = str(config["token"])
    auth = config.get("authentication") or {}
    if auth.get("scheme") and auth.get("credentials"):
        headers["Authorization"] = f"{auth['scheme']} {auth['credentials']}"
    return headers


def push_body(op: Operation) -> bytes:
    """The StreamResponse a push carries: ``{"task": ...}``."""
    return json.dumps({"task": task_json(op)}).encode()


# -- push receiver for outbound A2A agents ----------------------------------------------------


def bearer_or_notification_token(authorization: str, notification_token: str) -> str:
    token = authorization[7:].strip() if authorization[:7].lower() == "bearer " else ""
    return token or notification_token


@dataclass(frozen=True)
class PushedUpdate:
    """What an outbound agent's push says: a task to apply, or "completed, fetch the task"."""

    task: dict[str, Any] | None = None
    fetch: bool = False


def read_push(body: Any) -> PushedUpdate:
    if not isinstance(body, dict):
        return PushedUpdate()
    task = body.get("task") if isinstance(body.get("task"), dict) else None
    update = body.get("statusUpdate") if isinstance(body.get("statusUpdate"), dict) else None
    if task is None and update is None and isinstance(body.get("status"), dict):
        task = body  # a bare Task (lenient)
    if task is None and update is not None:
        state = str((update.get("status") or {}).get("state") or "")
        if state == "TASK_STATE_COMPLETED":
            # A status update carries no artifacts: fetch the task (GetTask) for the result.
            return PushedUpdate(fetch=True)
        task = {"id": update.get("taskId"), "status": update.get("status")}
    return PushedUpdate(task=task)


# -- JSON-RPC envelope ------------------------------------------------------------------------


@dataclass(frozen=True)
class RpcRequest:
    rpc_id: Any
    method: str
    params: dict[str, Any]


def _version_ok(value: str | None) -> bool:
    if not value:
        return True  # lenient: clients that send no header get 1.0
    return value.strip().split(".")[0] == "1"


def parse_rpc(raw: bytes, a2a_version: str | None, methods: Collection[str]) -> RpcRequest:
    """Read a JSON-RPC 2.0 request for one of ``methods`` (RpcFault with its id if not)."""
    try:
        body = jsonio.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RpcFault(-32700, f"parse error: {exc}") from exc
    if not isinstance(body, dict):
        raise RpcFault(-32600, "batch requests are not supported")
    rpc_id = body.get("id")
    if body.get("jsonrpc") != "2.0" or not isinstance(body.get("method"), str):
        raise RpcFault(-32600, "invalid JSON-RPC 2.0 request", rpc_id=rpc_id)
    if not _version_ok(a2a_version):
        raise RpcFault(-32009, f"A2A version not supported; use {A2A_VERSION}", rpc_id=rpc_id)
    method = str(body["method"])
    if method not in methods:
        if method in UNSUPPORTED:
            raise RpcFault(-32004, f"{method} is not supported by swarmgate", rpc_id=rpc_id)
        raise RpcFault(-32601, "Method not found", rpc_id=rpc_id)
    params = body.get("params") or {}
    if not isinstance(params, dict):
        raise RpcFault(-32602, "params must be an object", rpc_id=rpc_id)
    return RpcRequest(rpc_id=rpc_id, method=method, params=params)


def rpc_error(rpc_id: Any, code: int, message: str, data: Any = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": "2.0", "id": rpc_id, "error": error}


def rpc_result(rpc_id: Any, result: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rpc_id, "result": result}


def rpc_code(error_type: HandlerErrorType) -> int:
    """The JSON-RPC error code of a request error the gateway raised."""
    if error_type is HandlerErrorType.NOT_FOUND:
        return -32001
    return -32602 if error_type is HandlerErrorType.BAD_REQUEST else -32603
