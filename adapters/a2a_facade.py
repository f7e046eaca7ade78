"""Inbound A2A 1.0 facade, protocol half: every registered agent is also an A2A agent
(JSON-RPC and HTTP+JSON bindings), backed by durable operations (A2A task id == operation
id), and the gateway itself is one A2A agent whose skills are all agents' operations
(``{agent}/{operation}``), described by the host's root card.

This module holds what A2A says, with no web framework and no engine: the agent cards, the
task JSON of an operation, the state mapping, JSON-RPC envelope parsing and error bodies, the
message input and skill choice, push-notification configs and the pushes queued for them
(requests are read in ``adapters.a2a_rpc``, streams in ``adapters.a2a_stream``). The routes
that serve it (and the background pass that queues pushes) are in ``gateway.http.a2a``.

SendMessage picks the operation from ``metadata.skill`` (message or request), or the only one;
the input is the first data part (else the text, parsed as JSON when it is JSON); the
``messageId`` is the request id, so a resent message returns the same task.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from adapters.a2a import A2A_VERSION, JSON_CT
from gateway.domain import jsonio
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
TASK_STATES = frozenset(
    {
        "TASK_STATE_SUBMITTED",
        "TASK_STATE_WORKING",
        "TASK_STATE_COMPLETED",
        "TASK_STATE_FAILED",
        "TASK_STATE_CANCELED",
        "TASK_STATE_REJECTED",
        "TASK_STATE_INPUT_REQUIRED",
        "TASK_STATE_AUTH_REQUIRED",
    }
)

UNSUPPORTED = frozenset({"GetExtendedAgentCard"})
STREAMING = frozenset({"SendStreamingMessage", "SubscribeToTask"})


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

BINDINGS = ("JSONRPC", "HTTP+JSON")
BEARER_SCHEME = "swarmgateBearer"
CARD_CACHE_CONTROL = "public, max-age=60"


def interfaces(url: str) -> list[dict[str, Any]]:
    """The interfaces served at ``url``: JSON-RPC and HTTP+JSON (REST), both A2A 1.0."""
    return [{"url": url, "protocolBinding": b, "protocolVersion": A2A_VERSION} for b in BINDINGS]


def security(auth_mode: str) -> dict[str, Any]:
    """``securitySchemes``/``securityRequirements`` of a card: the JWT bearer every call needs
    (none when the gateway runs with ``auth_mode`` none)."""
    if auth_mode == "none":
        return {}
    scheme = {
        "httpAuthSecurityScheme": {
            "scheme": "Bearer",
            "bearerFormat": "JWT",
            "description": "A JWT issued for this gateway (Authorization: Bearer <token>)",
        }
    }
    return {
        "securitySchemes": {BEARER_SCHEME: scheme},
        "securityRequirements": [{"schemes": {BEARER_SCHEME: {"list": []}}}],
    }


def _card(
    name: str, description: str, url: str, version: str, base_url: str, auth_mode: str
) -> dict[str, Any]:
    return {
        "name": name,
        "description": description,
        "supportedInterfaces": interfaces(url),
        "provider": {"organization": "swarmgate", "url": base_url},
        "version": version,
        "capabilities": {"streaming": True, "pushNotifications": True},
        **security(auth_mode),
        "defaultInputModes": [JSON_CT, "text/plain"],
        "defaultOutputModes": [JSON_CT, "text/plain"],
    }


def agent_card(agent: AgentSpec, base_url: str, auth_mode: str = "none") -> dict[str, Any]:
    card = _card(
        agent.name,
        agent.description or f"{agent.name} (via swarmgate)",
        f"{base_url}{PREFIX}/{agent.name}",
        agent.version,
        base_url,
        auth_mode,
    )
    card["skills"] = [
        {
            "id": op.name,
            "name": op.name,
            "description": op.description or f"operation {op.name} of {agent.name}",
            "tags": [agent.name],
            "inputModes": [JSON_CT],
            "outputModes": [JSON_CT],
        }
        for op in agent.operations.values()
    ]
    return card


def gateway_card(
    agents: Iterable[AgentSpec], base_url: str, auth_mode: str = "none"
) -> dict[str, Any]:
    """The host's root card: one A2A agent (``/a2a``) whose skills are every agent's
    operations (``{agent}/{operation}``), routed by ``metadata.skill``."""
    card = _card(
        "swarmgate",
        "Durable agent gateway: every skill is an operation of a registered agent; choose it "
        "with metadata.skill = '{agent}/{operation}' (each agent also has its own card at "
        f"{base_url}{PREFIX}/{{agent}}{CARD_PATH})",
        f"{base_url}{PREFIX}",
        "1",
        base_url,
        auth_mode,
    )
    card["skills"] = [
        {
            "id": f"{a.name}/{op.name}",
            "name": f"{a.name}/{op.name}",
            "description": op.description or f"operation {op.name} of {a.name}",
            "tags": [a.name],
            "inputModes": [JSON_CT],
            "outputModes": [JSON_CT],
        }
        for a in agents
        for op in a.operations.values()
    ]
    return card


def card_etag(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    tags = {t.strip().removeprefix("W/") for t in if_none_match.split(",")}
    return "*" in tags or etag in tags


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


def context_link(value: str) -> str:
    """The operation link that carries the contextId ``value``."""
    return f'<{value}>; type="{CONTEXT_LINK_TYPE}"'


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


def _input_part(op: Operation) -> dict[str, Any]:
    body = op.input or b""
    if "json" in (op.input_content_type or JSON_CT).lower():
        try:
            return {"data": jsonio.loads(body) if body else None, "mediaType": JSON_CT}
        except (ValueError, UnicodeDecodeError):
            pass
    return {"text": body.decode(errors="replace")}


def history(op: Operation, status_message: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The task's messages: the caller's (the operation input) and the agent's final word."""
    user = {
        "messageId": op.request_id or f"{op.id}-input",
        "contextId": context_id(op),
        "taskId": op.id,
        "role": "ROLE_USER",
        "parts": [_input_part(op)],
        "metadata": {"skill": op.operation},
    }
    return [user] + ([status_message] if status_message else [])


def task_json(
    op: Operation,
    *,
    include_artifacts: bool = True,
    history_length: int | None = None,
    waiting: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The A2A Task of an operation; ``history_length`` None: whole history, 0: none.

    ``waiting`` (the operation's open question, ``waitingForInput``) makes it
    ``TASK_STATE_INPUT_REQUIRED`` with the prompt as the status message.
    """
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
    if waiting is not None and not op.state.terminal:
        status["state"] = "TASK_STATE_INPUT_REQUIRED"
        parts: list[dict[str, Any]] = [{"text": str(waiting.get("prompt") or "")}]
        if waiting.get("schema") is not None:
            parts.append({"data": {"schema": waiting["schema"]}, "mediaType": JSON_CT})
        status["message"] = {
            "messageId": f"{op.id}-input-{waiting.get('name', '1')}",
            "contextId": task["contextId"],
            "taskId": op.id,
            "role": "ROLE_AGENT",
            "parts": parts,
        }
        task["metadata"]["waitingForInput"] = waiting
    if op.state is OperationState.SUCCEEDED and include_artifacts:
        task["artifacts"] = [result_artifact(op)]
    elif op.state.terminal and op.state is not OperationState.SUCCEEDED:
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
    if history_length != 0:
        messages = history(op, status.get("message"))
        task["history"] = messages if history_length is None else messages[-history_length:]
    return task


def result_artifact(op: Operation) -> dict[str, Any]:
    is_json, value = _result_value(op)
    part = {"data": value, "mediaType": JSON_CT} if is_json else {"text": value}
    return {"artifactId": f"{op.id}-result", "name": "result", "parts": [part]}


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


def answer_value(message: dict[str, Any]) -> Any:
    """The answer a follow-up message carries: its data part, else its text (JSON if it is)."""
    return json.loads(message_input(message))


def requested_skill(params: dict[str, Any], message: dict[str, Any]) -> str | None:
    for meta in (message.get("metadata"), params.get("metadata")):
        if isinstance(meta, dict) and isinstance(meta.get("skill"), str):
            return str(meta["skill"])
    return None


def choose_skill(agent: AgentSpec, params: dict[str, Any], message: dict[str, Any]) -> str:
    skill = requested_skill(params, message)
    if skill is not None:
        if skill not in agent.operations:
            raise invalid_params(f"agent {agent.name!r} has no skill {skill!r}")
        return skill
    if len(agent.operations) == 1:
        return next(iter(agent.operations))
    raise invalid_params(
        "choose a skill with metadata.skill; one of " + ", ".join(sorted(agent.operations))
    )


def gateway_skill(skills: Collection[str], params: dict[str, Any], message: dict[str, Any]) -> str:
    """The ``{agent}/{operation}`` skill a message to the root interface asks for."""
    skill = requested_skill(params, message)
    if skill is None:
        if len(skills) == 1:
            return next(iter(skills))
        raise invalid_params(
            "choose a skill with metadata.skill = '{agent}/{operation}'; one of "
            + ", ".join(sorted(skills)[:50])
        )
    if skill not in skills:
        near = sorted(s for s in skills if s.split("/", 1)[-1] == skill)[:10]
        hint = f"; did you mean {', '.join(near)}?" if near else ""
        raise invalid_params(f"no skill {skill!r} (skills are '{{agent}}/{{operation}}'){hint}")
    return skill


ROLES = frozenset({"ROLE_USER", "ROLE_AGENT"})


def check_send(params: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The message of a SendMessage and its id (RpcFault if malformed)."""
    message = params.get("message")
    if not isinstance(message, dict):
        raise invalid_params("params.message is required")
    role = message.get("role")
    if role not in ROLES:
        raise invalid_params("message.role is required: ROLE_USER")
    message_id = message.get("messageId")
    if not isinstance(message_id, str) or not message_id:
        raise invalid_params("message.messageId is required")
    return message, message_id


def send_configuration(params: dict[str, Any]) -> dict[str, Any]:
    configuration = params.get("configuration") or {}
    if not isinstance(configuration, dict):
        raise invalid_params("params.configuration must be an object")
    return configuration


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


A2A_JSON_CT = "application/a2a+json"  # the HTTP+JSON binding's media type (pushes too)


def push_headers(config: dict[str, Any]) -> dict[str, str]:
    """The headers of a push to ``config`` (its token and authentication, if any); the body
    is a StreamResponse in the HTTP+JSON binding, so its media type is that binding's."""
    headers = {"Content-Type": A2A_JSON_CT, "A2A-Version": A2A_VERSION}
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
