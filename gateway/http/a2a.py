"""Inbound A2A 1.0 facade, served: the routes and the background pass that queues pushes.

Routes:
  GET  /a2a/{agent}/.well-known/agent-card.json   agent card (skills = operations)
  POST /a2a/{agent}                               JSON-RPC: SendMessage, GetTask, CancelTask,
                                                  ListTasks, Create/Get/List/Delete
                                                  TaskPushNotificationConfig
  GET  /.well-known/agent-card.json               the gateway's own card
  POST /api/a2a/push/{op_id}                      push receiver for *outbound* A2A agents
                                                  (StreamResponse body, completion token)

What A2A says (cards, task JSON, JSON-RPC envelope, push configs) is in
``adapters.a2a_facade``; this module ties it to the engine. Push configs are stored durably;
once the task is final a background pass queues one StreamResponse (``{"task": ...}``) per
config in the callback outbox, which delivers it with retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from aiohttp import web

from adapters import a2a_facade as proto
from adapters.a2a import JSON_CT, A2AAgentAdapter, final_state, outcome_from_task
from gateway.domain.dispatch import Outcome, OutcomeKind
from gateway.domain.errors import HandlerError, HandlerErrorType
from gateway.domain.model import CallbackDelivery, Event, Operation, OperationState
from gateway.domain.specs import AgentSpec
from gateway.engine.engine import Engine, StartRequest, fingerprint
from gateway.http.bodies import json_body
from gateway.http.context import SERVICES, check_outbound_url, principal, services
from registry.auth import Principal

log = logging.getLogger("swarmgate.a2a.facade")
poll_log = logging.getLogger("swarmgate.a2a")  # the outbound adapter's log, as before

PREFIX = proto.PREFIX
CARD_PATH = proto.CARD_PATH
RpcFault = proto.RpcFault
invalid_params = proto.invalid_params


# -- engine glue ------------------------------------------------------------------------------


async def apply_final(engine: Engine, op: Operation, outcome: Outcome) -> bool:
    """Complete an operation from a final A2A outcome (compare-and-set; False if not final)."""
    final = final_state(outcome)
    if final is None:
        return False
    if final.state is OperationState.SUCCEEDED:
        _op, applied = await engine.complete_from_agent(
            op.id, final.state, result=final.result, content_type=final.content_type
        )
    else:
        _op, applied = await engine.complete_from_agent(op.id, final.state, fail=final.failure)
    return applied


async def poll_one(
    engine: Engine, adapter: A2AAgentAdapter, agent: AgentSpec, op: Operation, timeout_s: float
) -> bool:
    """Ask the agent for the task now (GetTask) and apply it if it is final."""
    spec = agent.operations.get(op.operation)
    if spec is None:
        return False
    req = engine.dispatch_request(op, agent, spec, min(timeout_s, spec.attempt_timeout_s))
    outcome = await adapter.poll(req)
    if outcome.kind in (OutcomeKind.RETRYABLE, OutcomeKind.PERMANENT):
        poll_log.info("GetTask for %s failed: %s", op.id, outcome.error)
        return False
    return await apply_final(engine, op, outcome)


# -- agent card -------------------------------------------------------------------------------


def public_base(request: web.Request) -> str:
    return services(request).engine.config.public_url.rstrip("/")


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
    return web.json_response(proto.agent_card(await _agent(request), public_base(request)))


async def gateway_card(request: web.Request) -> web.Response:
    await _card_reader(request)
    agents = [a for a, _v in await services(request).registry.list()]
    return web.json_response(proto.gateway_card(agents, public_base(request)))


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
        raise proto.task_not_found()
    return op


async def _checked_push(call: Call, raw: Any, task_id: str) -> dict[str, Any]:
    """The push config ``raw`` as stored, its URL screened (-32602 when refused)."""
    config = proto.push_config(raw, task_id)
    try:
        await check_outbound_url(call.request, config["url"], "push notification URL")
    except HandlerError as exc:
        raise invalid_params(exc.message) from exc
    return config


async def _save_push(call: Call, op: Operation, raw: Any) -> dict[str, Any]:
    return await _store_push(call, op, await _checked_push(call, raw, op.id))


async def _store_push(call: Call, op: Operation, config: dict[str, Any]) -> dict[str, Any]:
    config = {**config, "taskId": op.id}
    await call.engine.store.a2a_save_push_config(op.id, config["id"], config, call.engine.now())
    if op.state.terminal:
        wake_pushes(call.request.app)
    return config


async def send_message(call: Call) -> dict[str, Any]:
    message, message_id = proto.check_send(call.params)
    skill = proto.choose_skill(call.agent, call.params, message)
    call.caller.require(f"ops:start:{call.agent.name}/{skill}")
    configuration = proto.send_configuration(call.params)
    push = configuration.get("taskPushNotificationConfig")
    # Checked before the start: a refused push URL must not leave a task created and dispatched.
    push_config = await _checked_push(call, push, "") if push else None
    engine = call.engine
    req = StartRequest(
        service=call.agent.name,
        operation=skill,
        caller=call.caller.sub,
        input=proto.message_input(message),
        content_type=JSON_CT,
        request_id=message_id,
        idempotency_key=call.request.headers.get("Idempotency-Key") or None,
        links=proto.context_links(message),
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
    if push_config is not None:
        await _store_push(call, op, push_config)
    if not configuration.get("returnImmediately"):
        op = await engine.wait_inline(op.id) or op
        if not op.state.terminal:
            op = await engine.wait_terminal(op.id, engine.config.sync_wait_s) or op
    else:
        op = await engine.store.get_operation(op.id) or op
    return {"task": proto.task_json(op)}


async def get_task(call: Call) -> dict[str, Any]:
    return proto.task_json(await _own_task(call, call.params.get("id")))


async def cancel_task(call: Call) -> dict[str, Any]:
    op = await _own_task(call, call.params.get("id"))
    if op.state in (OperationState.SUCCEEDED, OperationState.FAILED):
        raise RpcFault(-32002, f"Task cannot be canceled: it is {proto.STATE_OF[op.state]}")
    if op.state is OperationState.RUNNING:
        engine = call.engine
        await engine.cancel(op.id, by=call.caller.sub)
        op = await engine.wait_terminal(op.id, engine.config.sync_wait_s) or op
    return proto.task_json(op)


async def list_tasks(call: Call) -> dict[str, Any]:
    call.caller.require("ops:read")
    p = call.params
    state: OperationState | None = None
    if p.get("status"):
        state = proto.OP_STATE_OF.get(str(p["status"]))
        if state is None:
            return {"tasks": [], "nextPageToken": "", "pageSize": 0, "totalSize": 0}
    size = proto.page_size(p)
    ops = await call.engine.store.list_operations(
        caller=None if call.caller.is_admin else call.caller.sub,
        service=call.agent.name,
        state=state,
        limit=size,
    )
    context_id = p.get("contextId")
    if context_id:
        ops = [o for o in ops if proto.context_id(o) == context_id]
    with_artifacts = bool(p.get("includeArtifacts"))
    tasks = [proto.task_json(o, include_artifacts=with_artifacts) for o in ops]
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
    raise proto.task_not_found()


async def list_push_configs(call: Call) -> dict[str, Any]:
    op = await _own_task(call, call.params.get("taskId"))
    return {"configs": await call.engine.store.a2a_push_configs(op.id), "nextPageToken": ""}


async def delete_push_config(call: Call) -> None:
    op = await _own_task(call, call.params.get("taskId"))
    config_id = proto.require_id(call.params.get("id"), "push notification config id")
    await call.engine.store.a2a_delete_push_config(op.id, config_id)
    return None


METHODS: dict[str, Callable[[Call], Awaitable[Any]]] = {
    "SendMessage": send_message,
    "GetTask": get_task,
    "CancelTask": cancel_task,
    "ListTasks": list_tasks,
    "CreateTaskPushNotificationConfig": create_push_config,
    "GetTaskPushNotificationConfig": get_push_config,
    "ListTaskPushNotificationConfigs": list_push_configs,
    "DeleteTaskPushNotificationConfig": delete_push_config,
}


async def rpc(request: web.Request) -> web.Response:
    agent = await _agent(request)
    caller = await principal(request)
    try:
        parsed = proto.parse_rpc(await request.read(), request.headers.get("A2A-Version"), METHODS)
    except RpcFault as fault:
        return web.json_response(proto.rpc_error(fault.rpc_id, fault.code, fault.message))
    rpc_id = parsed.rpc_id
    call = Call(request=request, agent=agent, caller=caller, params=parsed.params)
    try:
        result = await METHODS[parsed.method](call)
    except RpcFault as fault:
        return web.json_response(proto.rpc_error(rpc_id, fault.code, fault.message, fault.data))
    except HandlerError as exc:
        if exc.type in (HandlerErrorType.UNAUTHENTICATED, HandlerErrorType.UNAUTHORIZED):
            raise
        return web.json_response(
            proto.rpc_error(rpc_id, proto.rpc_code(exc.type), exc.message, exc.details)
        )
    return web.json_response(proto.rpc_result(rpc_id, result))


# -- push receiver for outbound A2A agents ----------------------------------------------------


async def push_receiver(request: web.Request) -> web.Response:
    svc = services(request)
    op_id = request.match_info["op_id"]
    token = proto.bearer_or_notification_token(
        request.headers.get("Authorization", ""),
        request.headers.get("X-A2A-Notification-Token", ""),
    )
    if not token or not svc.engine.check_completion_token(op_id, token):
        raise HandlerError(HandlerErrorType.UNAUTHENTICATED, "invalid completion token")
    body = await json_body(request)
    op = await svc.engine.store.get_operation(op_id)
    if op is None:
        raise HandlerError(HandlerErrorType.NOT_FOUND, "no such operation")
    if op.state.terminal:
        return web.Response(status=200)
    pushed = proto.read_push(body)
    if pushed.fetch:
        await _poll_now(request.app, op)
    elif pushed.task is not None:
        outcome = outcome_from_task(pushed.task)
        if outcome.kind in (OutcomeKind.SUCCEEDED, OutcomeKind.OPERATION_FAILED):
            await apply_final(svc.engine, op, outcome)
    return web.Response(status=200)


async def _poll_now(app: web.Application, op: Operation) -> None:
    worker = app.get(WORKER)
    agent = await app[SERVICES].registry.get(op.service)
    if worker is None or agent is None:
        return
    await poll_one(app[SERVICES].engine, worker.adapter, agent, op, 10.0)


# -- background: push delivery (inbound) ------------------------------------------------------


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
        return self.app[SERVICES].engine

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
            delivery = CallbackDelivery(
                id=f"msg_{uuid.uuid4().hex}",
                operation_id=op.id,
                caller=op.caller,
                url=str(config["url"]),
                headers=proto.push_headers(config),
                body=proto.push_body(op),
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


__all__ = ["A2AWorker", "add_routes", "apply_final", "poll_one"]
