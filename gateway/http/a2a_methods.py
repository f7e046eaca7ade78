"""The A2A methods, binding-neutral: JSON-RPC (``gateway.http.a2a``) and HTTP+JSON
(``gateway.http.a2a_rest``) both call these with the request's params (JSON field names).

A call is made to one agent (``/a2a/{agent}``, skills = its operations) or to the gateway's
root interface (``/a2a``, skills = ``{agent}/{operation}`` of every agent, routed by
``metadata.skill``; ``Call.agent`` is None there).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from adapters import a2a_facade as proto
from adapters import a2a_rpc as wire
from adapters import a2a_stream as stream
from adapters.a2a import JSON_CT
from gateway.domain.errors import HandlerError, HandlerErrorType
from gateway.domain.model import Operation, OperationState
from gateway.domain.specs import AgentSpec
from gateway.engine.engine import Engine, StartRequest, fingerprint
from gateway.http.context import check_outbound_url, services
from gateway.http.nexus import parse_duration
from registry.auth import Principal

RpcFault = proto.RpcFault
invalid_params = proto.invalid_params
MAX_BLOCK_S = 600.0  # a blocking SendMessage without Request-Timeout waits at most this long


@dataclass
class Call:
    request: web.Request
    agent: AgentSpec | None  # None: the gateway's root interface
    caller: Principal
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def engine(self) -> Engine:
        return services(self.request).engine


async def agent_of(request: web.Request) -> AgentSpec | None:
    """The agent of an ``/a2a/{agent}`` route (None on the root interface ``/a2a``)."""
    name = request.match_info.get("agent")
    if name is None:
        return None
    agent = await services(request).registry.get(name)
    if agent is None:
        raise HandlerError(HandlerErrorType.NOT_FOUND, f"no agent named {name!r}")
    return agent


def a2a_version(request: web.Request) -> str | None:
    """The request's A2A version: the ``A2A-Version`` header (or query parameter)."""
    return request.headers.get("A2A-Version") or request.query.get("A2A-Version")


async def own_task(call: Call, task_id: Any) -> Operation:
    if not isinstance(task_id, str) or not task_id:
        raise invalid_params("a task id is required")
    call.caller.require("ops:read")
    op = await call.engine.store.get_operation(task_id)
    if (
        op is None
        or (call.agent is not None and op.service != call.agent.name)
        or not (call.caller.is_admin or op.caller == call.caller.sub)
    ):
        raise proto.task_not_found()
    return op


async def checked_push(call: Call, raw: Any, task_id: str) -> dict[str, Any]:
    """The push config ``raw`` as stored, its URL screened (-32602 when refused)."""
    config = proto.push_config(raw, task_id)
    try:
        await check_outbound_url(call.request, config["url"], "push notification URL")
    except HandlerError as exc:
        raise invalid_params(exc.message) from exc
    return config


async def save_push(call: Call, op: Operation, raw: Any) -> dict[str, Any]:
    return await store_push(call, op, await checked_push(call, raw, op.id))


async def store_push(call: Call, op: Operation, config: dict[str, Any]) -> dict[str, Any]:
    from gateway.http.a2a import wake_pushes  # the worker lives with the routes

    config = {**config, "taskId": op.id}
    await call.engine.store.a2a_save_push_config(op.id, config["id"], config, call.engine.now())
    if op.state.terminal:
        wake_pushes(call.request.app)
    return config


async def _target(call: Call, message: dict[str, Any]) -> tuple[AgentSpec, str]:
    if call.agent is not None:
        return call.agent, proto.choose_skill(call.agent, call.params, message)
    agents = {a.name: a for a, _v in await services(call.request).registry.list()}
    skills = {f"{a.name}/{op}" for a in agents.values() for op in a.operations}
    name, _, skill = proto.gateway_skill(skills, call.params, message).partition("/")
    return agents[name], skill


async def start_task(call: Call) -> Operation:
    message, message_id = proto.check_send(call.params)
    if message.get("taskId"):  # a follow-up: the answer to the task's open question
        return await answer_task(call, message)
    agent, skill = await _target(call, message)
    call.caller.require(f"ops:start:{agent.name}/{skill}")
    configuration = proto.send_configuration(call.params)
    push = configuration.get("taskPushNotificationConfig")
    # Checked before the start: a refused push URL must not leave a task created and dispatched.
    push_config = await checked_push(call, push, "") if push else None
    engine = call.engine
    req = StartRequest(
        service=agent.name,
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
        await store_push(call, op, push_config)
    return op


async def answer_task(call: Call, message: dict[str, Any]) -> Operation:
    """A follow-up message with ``taskId`` (and ``contextId``) answers the task's question."""
    op = await own_task(call, message.get("taskId"))
    context = message.get("contextId")
    if context and context != proto.context_id(op):
        raise invalid_params("message.contextId is not the task's contextId")
    try:
        await call.engine.provide_input(
            op, proto.answer_value(message), by=call.caller.sub, via="a2a"
        )
    except HandlerError as exc:
        if exc.type is HandlerErrorType.BAD_REQUEST:
            raise invalid_params(exc.message, exc.details) from exc
        if exc.type is HandlerErrorType.CONFLICT:
            raise RpcFault(
                -32004, f"the task does not wait for input ({proto.STATE_OF[op.state]})"
            ) from exc
        raise
    return await call.engine.store.get_operation(op.id) or op


async def waiting_json(call: Call, op: Operation) -> dict[str, Any] | None:
    question = await call.engine.waiting_for_input(op)
    return question.to_json() if question is not None else None


async def settle(call: Call, op: Operation, bound_s: float) -> Operation:
    """Wait (up to ``bound_s``) until the task is final or waits for input again."""
    engine = call.engine
    deadline = engine.now().timestamp() + bound_s
    step = max(0.05, engine.config.poll_interval_s) * 4
    while True:
        left = deadline - engine.now().timestamp()
        current = await engine.store.get_operation(op.id) or op
        if current.state.terminal or left <= 0:
            return current
        if await engine.waiting_for_input(current) is not None:
            return current
        op = await engine.wait_terminal(op.id, min(left, step)) or current
        if op.state.terminal:
            return op


def block_bound_s(call: Call, op: Operation) -> float:
    """How long a blocking SendMessage waits: the request's own ``Request-Timeout``, else the
    operation's deadline, at most ``MAX_BLOCK_S``."""
    try:
        asked = parse_duration(call.request.headers.get("Request-Timeout"), "Request-Timeout")
    except HandlerError as exc:
        raise invalid_params(exc.message) from exc
    if asked is not None:
        return max(0.0, asked)
    bound = MAX_BLOCK_S
    if op.deadline_at is not None:
        bound = min(bound, (op.deadline_at - call.engine.now()).total_seconds())
    return max(0.0, bound)


async def send_message(call: Call) -> dict[str, Any]:
    op = await start_task(call)
    engine = call.engine
    configuration = proto.send_configuration(call.params)
    if not configuration.get("returnImmediately"):
        bound = block_bound_s(call, op)
        op = await engine.wait_inline(op.id, bound) or op
        if not op.state.terminal:
            op = await settle(call, op, bound)
    else:
        op = await engine.store.get_operation(op.id) or op
    length = wire.history_length(configuration)
    waiting = await waiting_json(call, op)
    return {"task": proto.task_json(op, history_length=length, waiting=waiting)}


async def get_task(call: Call) -> dict[str, Any]:
    length = wire.history_length(call.params)
    op = await own_task(call, call.params.get("id"))
    return proto.task_json(op, history_length=length, waiting=await waiting_json(call, op))


async def cancel_task(call: Call) -> dict[str, Any]:
    op = await own_task(call, call.params.get("id"))
    if op.state.terminal:
        raise RpcFault(-32002, f"Task cannot be canceled: it is {proto.STATE_OF[op.state]}")
    engine = call.engine
    await engine.cancel(op.id, by=call.caller.sub)
    op = await engine.wait_terminal(op.id, engine.config.sync_wait_s) or op
    return proto.task_json(op)


async def list_tasks(call: Call) -> dict[str, Any]:
    call.caller.require("ops:read")
    p = call.params
    state = wire.status_filter(p)
    waiting: bool | None = None  # an interrupted task is running, waiting for input
    if p.get("status") == "TASK_STATE_INPUT_REQUIRED":
        state, waiting = OperationState.RUNNING, True
    elif state is OperationState.RUNNING:
        waiting = False
    size = wire.page_size(p)
    length = wire.history_length(p)
    after = wire.timestamp_filter(p)
    offset = wire.page_offset(p.get("pageToken"))
    if state is False:  # a valid A2A state no operation is ever in
        return {"tasks": [], "nextPageToken": "", "pageSize": size, "totalSize": 0}
    store = call.engine.store
    context_id = p.get("contextId")
    link = or_id = None
    if context_id:
        # a task's contextId is its context link's, else its own id (see proto.context_id)
        link = proto.context_link(str(context_id))
        own = await store.get_operation(str(context_id))
        or_id = own.id if own is not None and proto.context_id(own) == own.id else None
    page, total = await store.page_operations(
        caller=None if call.caller.is_admin else call.caller.sub,
        service=call.agent.name if call.agent is not None else None,
        state=state if isinstance(state, OperationState) else None,
        with_link=link,
        or_id=or_id,
        changed_after=after,
        waiting=waiting,
        offset=offset,
        limit=size,
    )
    with_artifacts = bool(p.get("includeArtifacts"))
    tasks = [
        proto.task_json(
            o,
            include_artifacts=with_artifacts,
            history_length=length,
            waiting=await waiting_json(call, o),
        )
        for o in page
    ]
    more = offset + size < total
    return {
        "tasks": tasks,
        "nextPageToken": wire.page_token(offset + size) if more else "",
        "pageSize": size,
        "totalSize": total,
    }


async def create_push_config(call: Call) -> dict[str, Any]:
    op = await own_task(call, call.params.get("taskId"))
    return await save_push(call, op, call.params)


async def get_push_config(call: Call) -> dict[str, Any]:
    op = await own_task(call, call.params.get("taskId"))
    wanted = call.params.get("id")
    for config in await call.engine.store.a2a_push_configs(op.id):
        if not wanted or config.get("id") == wanted:
            return config
    raise proto.task_not_found()


async def list_push_configs(call: Call) -> dict[str, Any]:
    op = await own_task(call, call.params.get("taskId"))
    return {"configs": await call.engine.store.a2a_push_configs(op.id), "nextPageToken": ""}


async def delete_push_config(call: Call) -> None:
    op = await own_task(call, call.params.get("taskId"))
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


# -- streams ------------------------------------------------------------------------------------


def resume_cursor(request: web.Request) -> int | None:
    """``Last-Event-ID`` (or ``?after=``): the event id a reconnecting stream resumes after."""
    raw = request.headers.get("Last-Event-ID") or request.query.get("after")
    if raw is None or raw == "":
        return None
    if not raw.strip().isdigit():
        raise invalid_params("Last-Event-ID must be an event id (a non-negative integer)")
    return int(raw)


async def open_stream(call: Call, method: str) -> tuple[Operation, int | None]:
    """The task a streaming method follows and the cursor to resume after (None: fresh)."""
    after = resume_cursor(call.request)
    if method == "SendStreamingMessage":
        if after is not None:
            message = call.params.get("message") or {}
            op = await own_task(call, message.get("taskId") if isinstance(message, dict) else None)
            return op, after
        return await start_task(call), None
    op = await own_task(call, call.params.get("id"))
    if op.state.terminal and after is None:
        raise RpcFault(
            -32004, f"the task is already {proto.STATE_OF[op.state]}: GetTask returns it"
        )
    return op, after


async def updates(call: Call, op: Operation, after: int | None) -> AsyncIterator[Any]:
    """``(event id, StreamResponse)`` pairs of ``op`` from the durable history, until it is
    final; ``None`` between waits (a chance for a keep-alive)."""
    store = call.engine.store
    engine = call.engine
    poll_s = max(0.05, engine.config.poll_interval_s)
    if after is None:
        seen = await store.list_events(op.id, after=0, limit=100_000)
        after = seen[-1].id or 0 if seen else 0
        current = await store.get_operation(op.id) or op
        waiting = await waiting_json(call, current)
        yield after, {"task": proto.task_json(current, waiting=waiting)}
        if current.state.terminal or waiting is not None:
            return  # final, or interrupted: it waits for a follow-up message (a new stream)
    while True:
        events = await store.list_events(op.id, after=after)
        current = await store.get_operation(op.id) or op
        if not events and current.state.terminal:
            # closed between the two reads: its events were committed with the change
            events = await store.list_events(op.id, after=after)
            if not events:
                yield after, {"task": proto.task_json(current)}
                return
        for e in events:
            for update in stream.event_updates(current, e):
                yield e.id, update
                if stream.ends_stream(update):
                    return
            after = e.id or after
        if not events:
            yield None
            await engine.wait_change(op.id, poll_s)
