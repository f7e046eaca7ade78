"""Inbound A2A 1.0 facade: every registered agent is also an A2A agent (JSON-RPC binding),
backed by durable operations (A2A task id == operation id), so a task survives restarts.

Routes:
  GET  /a2a/{agent}/.well-known/agent-card.json   agent card (skills = operations)
  POST /a2a/{agent}                               JSON-RPC: SendMessage, GetTask, CancelTask,
                                                  ListTasks, Create/Get/List/Delete
                                                  TaskPushNotificationConfig
  POST /api/a2a/push/{op_id}                      push receiver for *outbound* A2A agents
                                                  (StreamResponse body, completion token)

SendMessage picks the operation from ``metadata.skill`` (message or request), or the only one;
the input is the first data part (else the text, parsed as JSON when it is JSON); the
``messageId`` is the request id, so a resent message returns the same task. Push configs are
stored durably; once the task is final a background pass queues one StreamResponse
(``{"task": ...}``) per config in the callback outbox, which delivers it with retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from aiohttp import web

from adapters.a2a import (
    A2A_VERSION,
    JSON_CT,
    A2AAgentAdapter,
    apply_final,
    outcome_from_task,
)
from adapters.base import OutcomeKind
from gateway.domain import jsonio
from gateway.domain.errors import HandlerError, HandlerErrorType
from gateway.domain.model import CallbackDelivery, Event, Operation, OperationState
from gateway.engine.engine import Engine, StartRequest, fingerprint
from gateway.http.bodies import json_body
from gateway.http.context import check_outbound_url, principal, services
from registry.auth import Principal
from registry.model import AdapterKind, AgentSpec

log = logging.getLogger("swarmgate.a2a.facade")

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


class RpcFault(Exception):
    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data


def invalid_params(message: str, data: Any = None) -> RpcFault:
    return RpcFault(-32602, message, data)


def task_not_found() -> RpcFault:
    return RpcFault(-32001, "Task not found")


# -- agent card -------------------------------------------------------------------------------


def public_base(request: web.Request) -> str:
    return services(request).engine.config.public_url.rstrip("/")


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


async def _agent(request: web.Request) -> AgentSpec:
    name = request.match_info["agent"]
    agent = await services(request).registry.get(name)
    if agent is None:
        raise HandlerError(HandlerErrorType.NOT_FOUND, f"no agent named {name!r}")
    return agent


async def _card_reader(request: web.Request) -> None:
    """With SWARMGATE_PUBLIC_CARDS off, cards are for authenticated callers only."""
    if not services(request).public_cards:
        await principal(request)


async def card(request: web.Request) -> web.Response:
    await _card_reader(request)
    return web.json_response(agent_card(await _agent(request), public_base(request)))


async def gateway_card(request: web.Request) -> web.Response:
    await _card_reader(request)
    base = public_base(request)
    agents = [a for a, _v in await services(request).registry.list()]
    skills = [
        {
            "id": f"{a.name}/{op}",
            "name": f"{a.name}/{op}",
            "description": f"A2A agent card: {base}{PREFIX}/{a.name}{CARD_PATH}",
            "tags": [a.name],
        }
        for a in agents
        for op in a.operations
    ]
    return web.json_response(
        {
            "name": "swarmgate",
            "description": "Durable agent gateway; each agent has its own card under /a2a/{agent}",
            "supportedInterfaces": [],
            "version": "1",
            "capabilities": {"streaming": False, "pushNotifications": True},
            "defaultInputModes": [JSON_CT],
            "defaultOutputModes": [JSON_CT],
            "skills": skills,
        }
    )


# -- operation <-> task -----------------------------------------------------------------------


def _ts(dt: datetime | None) -> str | None:
    if dt is None:
        return None
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def _context_id(op: Operation) -> str:
    for link in op.links:
        if f'type="{CONTEXT_LINK_TYPE}"' in link and link.startswith("<"):
            return link[1 : link.index(">")]
    return op.id


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
        "contextId": _context_id(op),
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


def _message_input(message: dict[str, Any]) -> bytes:
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


def _skill(agent: AgentSpec, params: dict[str, Any], message: dict[str, Any]) -> str:
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


# -- JSON-RPC methods -------------------------------------------------------------------------


@dataclass
class Call:
    request: web.Request
    agent: AgentSpec
    caller: Principal
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def engine(self) -> Engine:
        return services(self.request).engine


async def _own_task(call: Call, task_id: Any) -> Operation:
    if not isinstance(task_id, str) or not task_id:
        raise invalid_params("a task id is required")
    call.caller.require("ops:read")
    op = await call.engine.store.get_operation(task_id)
    if (
        op is None
        or op.service != call.agent.name
        or not (call.caller.is_admin or op.caller == call.caller.sub)
    ):
        raise task_not_found()
    return op


def _push_config(raw: Any, task_id: str) -> dict[str, Any]:
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


async def _save_push(call: Call, op: Operation, raw: Any) -> dict[str, Any]:
    config = _push_config(raw, op.id)
    try:
        await check_outbound_url(call.request, config["url"], "push notification URL")
    except HandlerError as exc:
        raise invalid_params(exc.message) from exc
    await call.engine.store.a2a_save_push_config(op.id, config["id"], config, call.engine.now())
    if op.state.terminal:
        wake_pushes(call.request.app)
    return config


async def send_message(call: Call) -> dict[str, Any]:
    message = call.params.get("message")
    if not isinstance(message, dict):
        raise invalid_params("params.message is required")
    if message.get("taskId"):
        raise RpcFault(-32004, "follow-up messages to an existing task are not supported")
    message_id = message.get("messageId")
    if not isinstance(message_id, str) or not message_id:
        raise invalid_params("message.messageId is required")
    skill = _skill(call.agent, call.params, message)
    call.caller.require(f"ops:start:{call.agent.name}/{skill}")
    configuration = call.params.get("configuration") or {}
    if not isinstance(configuration, dict):
        raise invalid_params("params.configuration must be an object")
    context_id = message.get("contextId")
    links: tuple[str, ...] = ()
    if isinstance(context_id, str) and context_id and ">" not in context_id:
        links = (f'<{context_id}>; type="{CONTEXT_LINK_TYPE}"',)
    engine = call.engine
    req = StartRequest(
        service=call.agent.name,
        operation=skill,
        caller=call.caller.sub,
        input=_message_input(message),
        content_type=JSON_CT,
        request_id=message_id,
        idempotency_key=call.request.headers.get("Idempotency-Key") or None,
        links=links,
        traceparent=call.request.headers.get("traceparent"),
    )
    try:
        started = await engine.start(req)
    except HandlerError as exc:
        if exc.type is HandlerErrorType.BAD_REQUEST:
            raise invalid_params(exc.message, exc.details) from exc
        raise
    if started.replay is not None and started.replay.fingerprint != fingerprint(req):
        raise invalid_params("this messageId was already used with a different message")
    op = started.operation
    push = configuration.get("taskPushNotificationConfig")
    if push:
        await _save_push(call, op, push)
    if not configuration.get("returnImmediately"):
        op = await engine.wait_inline(op.id) or op
        if not op.state.terminal:
            op = await engine.wait_terminal(op.id, engine.config.sync_wait_s) or op
    else:
        op = await engine.store.get_operation(op.id) or op
    return {"task": task_json(op)}


async def get_task(call: Call) -> dict[str, Any]:
    return task_json(await _own_task(call, call.params.get("id")))


async def cancel_task(call: Call) -> dict[str, Any]:
    op = await _own_task(call, call.params.get("id"))
    if op.state in (OperationState.SUCCEEDED, OperationState.FAILED):
        raise RpcFault(-32002, f"Task cannot be canceled: it is {STATE_OF[op.state]}")
    if op.state is OperationState.RUNNING:
        engine = call.engine
        await engine.cancel(op.id, by=call.caller.sub)
        op = await engine.wait_terminal(op.id, engine.config.sync_wait_s) or op
    return task_json(op)


async def list_tasks(call: Call) -> dict[str, Any]:
    call.caller.require("ops:read")
    p = call.params
    state: OperationState | None = None
    if p.get("status"):
        state = OP_STATE_OF.get(str(p["status"]))
        if state is None:
            return {"tasks": [], "nextPageToken": "", "pageSize": 0, "totalSize": 0}
    try:
        size = min(100, max(1, int(p.get("pageSize") or 50)))
    except (TypeError, ValueError) as exc:
        raise invalid_params("pageSize must be an integer") from exc
    ops = await call.engine.store.list_operations(
        caller=None if call.caller.is_admin else call.caller.sub,
        service=call.agent.name,
        state=state,
        limit=size,
    )
    context_id = p.get("contextId")
    if context_id:
        ops = [o for o in ops if _context_id(o) == context_id]
    with_artifacts = bool(p.get("includeArtifacts"))
    tasks = [task_json(o, include_artifacts=with_artifacts) for o in ops]
    return {"tasks": tasks, "nextPageToken": "", "pageSize": size, "totalSize": len(tasks)}


async def create_push_config(call: Call) -> dict[str, Any]:
    op = await _own_task(call, call.params.get("taskId"))
    return await _save_push(call, op, call.params)


async def get_push_config(call: Call) -> dict[str, Any]:
    op = await _own_task(call, call.params.get("taskId"))
    wanted = call.params.get("id")
    for config in await call.engine.store.a2a_push_configs(op.id):
        if not wanted or config.get("id") == wanted:
            return config
    raise task_not_found()


async def list_push_configs(call: Call) -> dict[str, Any]:
    op = await _own_task(call, call.params.get("taskId"))
    return {"configs": await call.engine.store.a2a_push_configs(op.id), "nextPageToken": ""}


async def delete_push_config(call: Call) -> None:
    op = await _own_task(call, call.params.get("taskId"))
    config_id = call.params.get("id")
    if not isinstance(config_id, str) or not config_id:
        raise invalid_params("a push notification config id is required")
    await call.engine.store.a2a_delete_push_config(op.id, config_id)
    return None


METHODS: dict[str, Any] = {
    "SendMessage": send_message,
    "GetTask": get_task,
    "CancelTask": cancel_task,
    "ListTasks": list_tasks,
    "CreateTaskPushNotificationConfig": create_push_config,
    "GetTaskPushNotificationConfig": get_push_config,
    "ListTaskPushNotificationConfigs": list_push_configs,
    "DeleteTaskPushNotificationConfig": delete_push_config,
}
UNSUPPORTED = {"SendStreamingMessage", "SubscribeToTask", "GetExtendedAgentCard"}


def _rpc_error(rpc_id: Any, code: int, message: str, data: Any = None) -> web.Response:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return web.json_response({"jsonrpc": "2.0", "id": rpc_id, "error": error})


def _version_ok(value: str | None) -> bool:
    if not value:
        return True  # lenient: clients that send no header get 1.0
    return value.strip().split(".")[0] == "1"


async def rpc(request: web.Request) -> web.Response:
    agent = await _agent(request)
    caller = await principal(request)
    try:
        body = jsonio.loads(await request.read())
    except (ValueError, UnicodeDecodeError) as exc:
        return _rpc_error(None, -32700, f"parse error: {exc}")
    if not isinstance(body, dict):
        return _rpc_error(None, -32600, "batch requests are not supported")
    rpc_id = body.get("id")
    if body.get("jsonrpc") != "2.0" or not isinstance(body.get("method"), str):
        return _rpc_error(rpc_id, -32600, "invalid JSON-RPC 2.0 request")
    if not _version_ok(request.headers.get("A2A-Version")):
        return _rpc_error(rpc_id, -32009, f"A2A version not supported; use {A2A_VERSION}")
    method = body["method"]
    handler = METHODS.get(method)
    if handler is None:
        if method in UNSUPPORTED:
            return _rpc_error(rpc_id, -32004, f"{method} is not supported by swarmgate")
        return _rpc_error(rpc_id, -32601, "Method not found")
    params = body.get("params") or {}
    if not isinstance(params, dict):
        return _rpc_error(rpc_id, -32602, "params must be an object")
    call = Call(request=request, agent=agent, caller=caller, params=params)
    try:
        result = await handler(call)
    except RpcFault as fault:
        return _rpc_error(rpc_id, fault.code, fault.message, fault.data)
    except HandlerError as exc:
        if exc.type in (HandlerErrorType.UNAUTHENTICATED, HandlerErrorType.UNAUTHORIZED):
            raise
        code = -32602 if exc.type is HandlerErrorType.BAD_REQUEST else -32603
        if exc.type is HandlerErrorType.NOT_FOUND:
            code = -32001
        return _rpc_error(rpc_id, code, exc.message, exc.details)
    return web.json_response({"jsonrpc": "2.0", "id": rpc_id, "result": result})


# -- push receiver for outbound A2A agents ----------------------------------------------------


async def push_receiver(request: web.Request) -> web.Response:
    svc = services(request)
    op_id = request.match_info["op_id"]
    auth = request.headers.get("Authorization", "")
    token = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
    token = token or request.headers.get("X-A2A-Notification-Token", "")
    if not token or not svc.engine.check_completion_token(op_id, token):
        raise HandlerError(HandlerErrorType.UNAUTHENTICATED, "invalid completion token")
    body = await json_body(request)
    op = await svc.engine.store.get_operation(op_id)
    if op is None:
        raise HandlerError(HandlerErrorType.NOT_FOUND, "no such operation")
    if op.state.terminal or not isinstance(body, dict):
        return web.Response(status=200)
    task = body.get("task") if isinstance(body.get("task"), dict) else None
    update = body.get("statusUpdate") if isinstance(body.get("statusUpdate"), dict) else None
    if task is None and update is None and isinstance(body.get("status"), dict):
        task = body  # a bare Task (lenient)
    if task is None and update is not None:
        state = str((update.get("status") or {}).get("state") or "")
        if state == "TASK_STATE_COMPLETED":
            # A status update carries no artifacts: fetch the task (GetTask) for the result.
            await _poll_now(request.app, op)
            return web.Response(status=200)
        task = {"id": update.get("taskId"), "status": update.get("status")}
    if task is not None:
        outcome = outcome_from_task(task)
        if outcome.kind in (OutcomeKind.SUCCEEDED, OutcomeKind.OPERATION_FAILED):
            await apply_final(svc.engine, op, outcome)
    return web.Response(status=200)


async def _poll_now(app: web.Application, op: Operation) -> None:
    worker = app.get(WORKER)
    agent = await services_of(app).registry.get(op.service)
    if worker is None or agent is None:
        return
    from adapters.a2a import _poll_one

    await _poll_one(services_of(app).engine, worker.adapter, agent, op, 10.0)


def services_of(app: web.Application) -> Any:
    from gateway.http.context import SERVICES

    return app[SERVICES]


# -- background: GetTask polling (outbound) and push delivery (inbound) -----------------------


class A2AWorker:
    """Queues one outbox row per push config of a finished task (compare-and-set per config;
    safe on any number of replicas). GetTask polling of outbound tasks is engine work
    (``Work.POLL``), persisted per operation."""

    def __init__(self, app: web.Application, adapter: A2AAgentAdapter) -> None:
        self.app = app
        self.adapter = adapter
        self.wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def engine(self) -> Engine:
        engine: Engine = services_of(self.app).engine
        return engine

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="sg-a2a")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                await self.queue_pushes()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("A2A background pass failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self.engine.config.poll_interval_s * 4)
            self.wake.clear()

    async def queue_pushes(self) -> int:
        engine = self.engine
        n = 0
        for config_id, config, op in await engine.store.a2a_due_pushes(100):
            now = engine.now()
            headers = {"Content-Type": JSON_CT, "A2A-Version": A2A_VERSION}
            if config.get("token"):
                headers["X-A2A-Notification-Token"] = str(config["token"])
            auth = config.get("authentication") or {}
            if auth.get("scheme") and auth.get("credentials"):
                headers["Authorization"] = f"{auth['scheme']} {auth['credentials']}"
            delivery = CallbackDelivery(
                id=f"msg_{uuid.uuid4().hex}",
                operation_id=op.id,
                caller=op.caller,
                url=str(config["url"]),
                headers=headers,
                body=json.dumps({"task": task_json(op)}).encode(),
                created_at=now,
                expires_at=now + timedelta(seconds=engine.config.callback_ttl_s),
                next_attempt_at=now,
            )
            event = Event(
                operation_id=op.id,
                kind="a2a.push.queued",
                at=now,
                data={"config_id": config_id, "delivery_id": delivery.id},
            )
            if await engine.store.a2a_enqueue_push(op.id, config_id, delivery, event):
                n += 1
        if n:
            engine.wake()
        return n


WORKER = web.AppKey("swarmgate.a2a.worker", A2AWorker)


def wake_pushes(app: web.Application) -> None:
    worker = app.get(WORKER)
    if worker is not None:
        worker.wake.set()


def add_routes(
    app: web.Application,
    adapter: A2AAgentAdapter | None = None,
) -> None:
    """Install the facade routes, the push receiver and the background worker (started and
    stopped with the app)."""
    r = app.router
    r.add_get(PREFIX + "/{agent}" + CARD_PATH, card)
    r.add_post(PREFIX + "/{agent}", rpc)
    r.add_get(CARD_PATH, gateway_card)
    r.add_post("/api/a2a/push/{op_id}", push_receiver)
    if adapter is None:
        return
    worker = A2AWorker(app, adapter)
    app[WORKER] = worker

    async def on_startup(_app: web.Application) -> None:
        await worker.start()

    async def on_cleanup(_app: web.Application) -> None:
        await worker.stop()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)


__all__ = ["A2AWorker", "AdapterKind", "add_routes", "agent_card", "task_json"]
