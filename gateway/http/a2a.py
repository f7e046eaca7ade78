"""Inbound A2A 1.0 facade, served: cards, the JSON-RPC binding, the push receiver for
outbound agents and the background pass that queues pushes.

Routes:
  GET  /.well-known/agent-card.json               the host's root card: the gateway is one A2A
                                                  agent at /a2a, skills = {agent}/{operation}
  GET  /a2a/.well-known/agent-card.json           the same card, under the interface URL
  GET  /a2a/{agent}/.well-known/agent-card.json   an agent's card (skills = its operations)
  POST /a2a[/], /a2a/{agent}[/]                   JSON-RPC: SendMessage, SendStreamingMessage,
                                                  SubscribeToTask (SSE), GetTask, CancelTask,
                                                  ListTasks, Create/Get/List/Delete
                                                  TaskPushNotificationConfig
  ...  /a2a[/{agent}]/message:send, /tasks, ...   the HTTP+JSON binding (``a2a_rest``)
  POST /api/a2a/push/{op_id}                      push receiver for *outbound* A2A agents
                                                  (StreamResponse body, completion token)

Cards carry ``ETag``/``Cache-Control`` (304 on ``If-None-Match``) and declare the JWT bearer
(``securitySchemes``) unless auth is off. What A2A says is in ``adapters.a2a_facade``,
``adapters.a2a_rpc`` and ``adapters.a2a_stream``; the methods are in ``a2a_methods``. Push
configs are stored durably; a background pass queues, per config, the status updates of a
running task (a cursor over its history) and, once the task is final, one StreamResponse
``{"task": ...}``, in the callback outbox, which delivers them with retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

from aiohttp import web

from adapters import a2a_facade as proto
from adapters import a2a_rpc as wire
from adapters import a2a_stream as stream
from adapters.a2a import JSON_CT, A2AAgentAdapter, final_state, outcome_from_task
from gateway.domain.dispatch import Outcome, OutcomeKind
from gateway.domain.errors import HandlerError, HandlerErrorType
from gateway.domain.model import CallbackDelivery, Event, Operation, OperationState
from gateway.domain.specs import AgentSpec
from gateway.engine.engine import Engine
from gateway.http import a2a_methods as methods
from gateway.http import a2a_rest as rest
from gateway.http import sse
from gateway.http.a2a_methods import METHODS, Call
from gateway.http.bodies import json_body
from gateway.http.context import SERVICES, principal, services

log = logging.getLogger("swarmgate.a2a.facade")
poll_log = logging.getLogger("swarmgate.a2a")  # the outbound adapter's log, as before

PREFIX = proto.PREFIX
CARD_PATH = proto.CARD_PATH
RpcFault = proto.RpcFault
invalid_params = proto.invalid_params
AUTH_ERRORS = (HandlerErrorType.UNAUTHENTICATED, HandlerErrorType.UNAUTHORIZED)


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


# -- agent cards ------------------------------------------------------------------------------


def public_base(request: web.Request) -> str:
    return services(request).engine.config.public_url.rstrip("/")


async def _card_reader(request: web.Request) -> None:
    """With SWARMGATE_PUBLIC_CARDS off, cards are for authenticated callers only."""
    if not services(request).public_cards:
        await principal(request)


def _card_response(request: web.Request, card: dict[str, Any]) -> web.Response:
    body = json.dumps(card).encode()
    etag = proto.card_etag(body)
    headers = {"ETag": etag, "Cache-Control": proto.CARD_CACHE_CONTROL, "Vary": "Authorization"}
    if proto.etag_matches(request.headers.get("If-None-Match"), etag):
        return web.Response(status=304, headers=headers)
    return web.Response(body=body, content_type=JSON_CT, headers=headers)


def _auth_mode(request: web.Request) -> str:
    return str(services(request).verifier.config.mode)


async def card(request: web.Request) -> web.Response:
    await _card_reader(request)
    agent = await methods.agent_of(request)
    if agent is None:
        return await gateway_card(request)
    return _card_response(
        request, proto.agent_card(agent, public_base(request), _auth_mode(request))
    )


async def gateway_card(request: web.Request) -> web.Response:
    await _card_reader(request)
    agents = [a for a, _v in await services(request).registry.list()]
    return _card_response(
        request, proto.gateway_card(agents, public_base(request), _auth_mode(request))
    )


# -- JSON-RPC binding -------------------------------------------------------------------------


def _fault_body(rpc_id: Any, exc: Exception) -> dict[str, Any]:
    if isinstance(exc, RpcFault):
        return wire.rpc_error(rpc_id, exc.code, exc.message, exc.data)
    assert isinstance(exc, HandlerError)
    return wire.rpc_error(rpc_id, wire.rpc_code(exc.type), exc.message, exc.details)


async def rpc(request: web.Request) -> web.StreamResponse:
    agent = await methods.agent_of(request)
    caller = await principal(request)
    try:
        parsed = wire.parse_rpc(
            await request.read(), methods.a2a_version(request), {*METHODS, *proto.STREAMING}
        )
    except RpcFault as fault:
        return web.json_response(
            wire.rpc_error(fault.rpc_id, fault.code, fault.message, fault.data)
        )
    rpc_id = parsed.rpc_id
    call = Call(request=request, agent=agent, caller=caller, params=parsed.params)
    try:
        if parsed.method in proto.STREAMING:
            op, after = await methods.open_stream(call, parsed.method)
            return await sse.relay(request, _rpc_frames(call, rpc_id, op, after))
        result = await METHODS[parsed.method](call)
    except (RpcFault, HandlerError) as exc:
        if isinstance(exc, HandlerError) and exc.type in AUTH_ERRORS:
            raise
        return web.json_response(_fault_body(rpc_id, exc))
    return web.json_response(wire.rpc_result(rpc_id, result))


async def _rpc_frames(
    call: Call, rpc_id: Any, op: Operation, after: int | None
) -> AsyncIterator[bytes | None]:
    async for item in methods.updates(call, op, after):
        if item is None:
            yield None
            continue
        event_id, update = item
        yield stream.sse_frame(event_id, wire.rpc_result(rpc_id, update))


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
        elif outcome.input_prompt is not None:  # the agent asks the caller (input-required)
            await svc.engine.agent_asks(op, outcome.input_prompt, outcome.agent_token)
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

    def _delivery(self, op: Operation, config: dict[str, Any], body: bytes) -> CallbackDelivery:
        now = self.engine.now()
        return CallbackDelivery(
            id=f"msg_{uuid.uuid4().hex}",
            operation_id=op.id,
            caller=op.caller,
            url=str(config["url"]),
            headers=proto.push_headers(config),
            body=body,
            created_at=now,
            expires_at=now + timedelta(seconds=self.engine.config.callback_ttl_s),
            next_attempt_at=now,
        )

    async def queue_progress(self) -> int:
        """Queue the status updates of running tasks for their push configs (the same
        StreamResponses a stream sends), moving each config's cursor by compare-and-set."""
        store = self.engine.store
        n = 0
        for config_id, config, op, after in await store.a2a_progress_pushes(100):
            events = await store.list_events(op.id, after=after)
            if not events:
                continue
            deliveries = [
                self._delivery(op, config, json.dumps(update).encode())
                for e in events
                for update in stream.event_updates(op, e)
            ]
            upto = events[-1].id or after
            if await store.a2a_enqueue_progress(op.id, config_id, after, upto, deliveries):
                n += len(deliveries)
        return n

    async def queue_pushes(self) -> int:
        engine = self.engine
        n = await self.queue_progress()
        for config_id, config, op in await engine.store.a2a_due_pushes(100):
            now = engine.now()
            delivery = self._delivery(op, config, proto.push_body(op))
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
    r.add_get(CARD_PATH, gateway_card)
    r.add_get(PREFIX + CARD_PATH, card)
    r.add_get(PREFIX + "/{agent}" + CARD_PATH, card)
    rest.add_routes(app, PREFIX)  # the root interface's HTTP+JSON routes come before {agent}
    r.add_post(PREFIX, rpc)
    r.add_post(PREFIX + "/", rpc)
    r.add_post(PREFIX + "/{agent}", rpc)
    r.add_post(PREFIX + "/{agent}/", rpc)
    rest.add_routes(app, PREFIX + "/{agent}")
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
