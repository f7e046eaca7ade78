"""The gateway's MCP endpoint (Streamable HTTP, spec 2025-11-25) and its auth metadata.

Routes:
  POST   /mcp                                     one JSON-RPC message; answered with JSON
                                                  (or one SSE event when the client accepts
                                                  only text/event-stream); notifications 202;
                                                  a waiting call with a progressToken may
                                                  answer with an SSE stream of progress
                                                  notifications, then the response
  GET    /mcp                                     405: the gateway pushes nothing unasked
  DELETE /mcp                                     ends the session named by Mcp-Session-Id
  GET    /.well-known/oauth-protected-resource    RFC 9728 metadata (also at .../mcp)

Every operation the caller may start is a tool (``adapters.mcp_facade``). ``tools/call``
with ``task`` starts a durable operation and answers with its task at once; without it the
call waits (bounded by ``SWARMGATE_MCP_WAIT_S``) and answers with the result, or with an
error that names the task to poll when the bound runs out. ``tasks/*`` read, wait for and
cancel operations; ``tasks/list`` shows the caller's own only.

Progress (``adapters.mcp_progress``): a ``tools/call`` (or ``tasks/result``) with
``params._meta.progressToken`` from a client that accepts ``text/event-stream`` watches the
operation while it waits (a heartbeat with details wakes the wait; plain heartbeats are seen
on the next re-read); from the first notification on, the answer is an SSE stream of
``notifications/progress`` ending with the JSON-RPC response. A call that closes before any
progress, or a client that accepts only JSON, gets the plain JSON answer.

Sessions are HMAC-signed ids (caller and protocol version), so any replica accepts them;
``DELETE`` revokes one in this process. Requests without a session id are served too
(stateless clients); a session id of another caller, forged or revoked, is a 404.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from adapters import mcp_facade as proto
from adapters.mcp_progress import ProgressTracker, progress_token
from gateway.domain.errors import HandlerError, HandlerErrorType
from gateway.domain.model import Operation
from gateway.domain.specs import AgentSpec, OperationSpec
from gateway.engine.engine import StartRequest, fingerprint
from gateway.http.context import principal, services
from registry.auth import Principal

PATH = "/mcp"
METADATA_PATH = "/.well-known/oauth-protected-resource"
SESSION_HEADER = "Mcp-Session-Id"
VERSION_HEADER = "MCP-Protocol-Version"
MAX_LISTED = 10_000  # tasks/list pages reach this far back
MAX_REVOKED = 100_000
SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}
log = logging.getLogger("swarmgate.mcp")


@dataclass
class McpConfig:
    """What the MCP routes need beyond the shared services."""

    session_key: bytes
    wait_s: float = 60.0  # tools/call without task, and tasks/result
    poll_interval_ms: int = 1000
    page_size: int = 50  # tasks/list
    server_version: str = "0.1.0"
    revoked: dict[str, float] = field(default_factory=dict)  # session id -> revoked at


MCP = web.AppKey("swarmgate.mcp", McpConfig)


def _sse(message: dict[str, Any]) -> bytes:
    return f"event: message\ndata: {json.dumps(message)}\n\n".encode()


@dataclass
class ProgressStream:
    """A waiting request's progress: the SSE answer is opened by the first notification."""

    request: web.Request
    tracker: ProgressTracker
    response: web.StreamResponse | None = None

    async def watch(self, op: Operation) -> None:
        """Send the notification this read of ``op`` calls for, if any."""
        note = self.tracker.update(op)
        if note is None:
            return
        if self.response is None:
            self.response = web.StreamResponse(headers=SSE_HEADERS)
            await self.response.prepare(self.request)
        await self.response.write(_sse(note))


@dataclass
class Call:
    request: web.Request
    caller: Principal
    params: dict[str, Any]
    version: str
    progress: ProgressStream | None = None

    @property
    def config(self) -> McpConfig:
        return self.request.app[MCP]


# -- auth, origin, session --------------------------------------------------------------------


def _base(request: web.Request) -> str:
    return services(request).engine.config.public_url.rstrip("/")


def metadata_url(request: web.Request) -> str:
    return _base(request) + METADATA_PATH + PATH


async def _caller(request: web.Request) -> Principal:
    """The caller; a 401 carries the RFC 9728 pointer to the resource metadata."""
    try:
        return await principal(request)
    except HandlerError as exc:
        if exc.type is HandlerErrorType.UNAUTHENTICATED:
            challenge = exc.headers.get("WWW-Authenticate", 'Bearer realm="swarmgate"')
            exc.headers["WWW-Authenticate"] = (
                f'{challenge}, resource_metadata="{metadata_url(request)}"'
            )
        raise


def _check_origin(request: web.Request) -> None:
    """DNS-rebinding defence (the transport spec's MUST): a browser Origin must be ours."""
    origin = request.headers.get("Origin")
    if not origin:
        return
    allowed = {urlsplit(_base(request)).netloc.lower(), request.host.lower()}
    if urlsplit(origin).netloc.lower() not in allowed:
        raise HandlerError(HandlerErrorType.UNAUTHORIZED, f"Origin {origin!r} is not allowed")


def _rpc_response(
    status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response(body, status=status, headers=headers)


def _session(request: web.Request, caller: Principal) -> dict[str, Any] | web.Response | None:
    """The session payload; None without a session id; a 404 response for a bad one."""
    sid = request.headers.get(SESSION_HEADER)
    if not sid:
        return None
    payload = proto.read_session_id(request.app[MCP].session_key, sid)
    if payload is None or payload.get("s") != caller.sub or sid in request.app[MCP].revoked:
        return _rpc_response(
            404, proto.error(None, proto.INVALID_REQUEST, "unknown or ended session")
        )
    return payload


# -- tools ------------------------------------------------------------------------------------


def _may_start(caller: Principal, agent: str, op: str) -> bool:
    return caller.has(f"ops:start:{agent}/{op}")


async def tools_list(call: Call) -> dict[str, Any]:
    tools: list[dict[str, Any]] = []
    seen: set[str] = set()
    for agent, _version in await services(call.request).registry.list():
        for spec in agent.operations.values():
            name = proto.tool_name(agent.name, spec.name)
            if name is None or name in seen or not _may_start(call.caller, agent.name, spec.name):
                continue
            seen.add(name)
            tools.append(proto.tool_json(agent, spec, name, call.version))
    return {"tools": tools}


async def _resolve_tool(call: Call, name: Any) -> tuple[AgentSpec, OperationSpec]:
    if not isinstance(name, str) or not name:
        raise proto.McpFault(proto.INVALID_PARAMS, "params.name (the tool) is required")
    registry = services(call.request).registry
    start = 0
    while (cut := name.find(proto.SEPARATOR, start)) > 0:
        agent = await registry.get(name[:cut])
        spec = agent.operations.get(name[cut + len(proto.SEPARATOR) :]) if agent else None
        if agent is not None and spec is not None:
            if not _may_start(call.caller, agent.name, spec.name):
                break
            return agent, spec
        start = cut + 1
    raise proto.McpFault(proto.INVALID_PARAMS, f"unknown tool {name!r}")


def _idempotency_key(call: Call) -> str | None:
    key = proto.idempotency_key(call.params)
    if key is None:
        header = (call.request.headers.get("Idempotency-Key") or "").strip().strip('"')
        key = header[:255] or None
    return key


async def _start(call: Call, agent: AgentSpec, spec: OperationSpec) -> Operation:
    engine = services(call.request).engine
    req = StartRequest(
        service=agent.name,
        operation=spec.name,
        caller=call.caller.sub,
        input=proto.tool_input(spec, call.params.get("arguments")),
        content_type="application/json",
        request_id=_idempotency_key(call),
        traceparent=call.request.headers.get("traceparent"),
    )
    with engine.admit():
        started = await engine.start(req)
    if started.replay is not None and started.replay.fingerprint != fingerprint(req):
        raise proto.McpFault(
            proto.INVALID_PARAMS, "this idempotency key was already used with different arguments"
        )
    return started.operation


async def _wait(call: Call, op: Operation, wait_s: float) -> Operation:
    if call.progress is not None:
        return await _wait_with_progress(call.progress, op, wait_s)
    engine = services(call.request).engine
    deadline = time.monotonic() + wait_s
    op = await engine.wait_inline(op.id, min(wait_s, engine.config.sync_wait_s)) or op
    while not op.state.terminal:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        op = await engine.wait_terminal(op.id, min(left, 30.0)) or op
    return op


async def _wait_with_progress(progress: ProgressStream, op: Operation, wait_s: float) -> Operation:
    """Wait like :func:`_wait`, re-reading the operation whenever it may have changed (a
    close, a heartbeat with details, else every poll interval) and telling the client."""
    engine = services(progress.request).engine
    deadline = time.monotonic() + wait_s
    poll_s = max(0.05, engine.config.poll_interval_s)
    while not op.state.terminal:
        await progress.watch(op)
        left = deadline - time.monotonic()
        if left <= 0:
            break
        await engine.wait_change(op.id, min(left, poll_s))
        op = await engine.store.get_operation(op.id) or op
    return op


def _still_running(op: Operation, wait_s: float) -> proto.McpFault:
    return proto.McpFault(
        proto.STILL_RUNNING,
        f"the operation is still running after {wait_s:g}s; call the tool with task "
        f'augmentation ("task": {{}}) and poll tasks/get, or poll task {op.id} now',
        {"taskId": op.id},
    )


async def tools_call(call: Call) -> dict[str, Any]:
    agent, spec = await _resolve_tool(call, call.params.get("name"))
    task = proto.task_request(call.params)
    try:
        op = await _start(call, agent, spec)
    except HandlerError as exc:
        if exc.type is HandlerErrorType.BAD_REQUEST:  # invalid input: a tool error (SEP-1303)
            detail = "; ".join(f"{e['path']}: {e['message']}" for e in exc.details or [])
            text = f"{exc.message}: {detail}" if detail else exc.message
            return {"content": [{"type": "text", "text": text}], "isError": True}
        raise
    if task is not None:
        op = await services(call.request).engine.store.get_operation(op.id) or op
        return {"task": proto.task_json(op, call.config.poll_interval_ms)}
    op = await _wait(call, op, call.config.wait_s)
    if not op.state.terminal:
        raise _still_running(op, call.config.wait_s)
    return proto.call_result(op, spec)


# -- tasks ------------------------------------------------------------------------------------


async def _own_task(call: Call) -> Operation:
    task_id = call.params.get("taskId")
    if not isinstance(task_id, str) or not task_id:
        raise proto.McpFault(proto.INVALID_PARAMS, "params.taskId is required")
    call.caller.require("ops:read")
    op = await services(call.request).engine.store.get_operation(task_id)
    if op is None or not (call.caller.is_admin or op.caller == call.caller.sub):
        raise proto.McpFault(proto.INVALID_PARAMS, f"task {task_id!r} not found")
    return op


async def tasks_get(call: Call) -> dict[str, Any]:
    op = await _own_task(call)
    question = await services(call.request).engine.waiting_for_input(op)
    waiting = question.to_json() if question is not None else None
    return proto.task_json(op, call.config.poll_interval_ms, waiting)


async def tasks_result(call: Call) -> dict[str, Any]:
    op = await _own_task(call)
    if not op.state.terminal:
        op = await _wait(call, op, call.config.wait_s)
    if not op.state.terminal:
        raise _still_running(op, call.config.wait_s)
    agent = await services(call.request).registry.get(op.service)
    spec = agent.operations.get(op.operation) if agent else None
    return proto.call_result(op, spec)


async def tasks_cancel(call: Call) -> dict[str, Any]:
    op = await _own_task(call)
    if op.state.terminal:
        raise proto.McpFault(
            proto.INVALID_PARAMS,
            f"cannot cancel task {op.id}: it is already {proto.TASK_STATUS[op.state]}",
        )
    engine = services(call.request).engine
    op = await engine.cancel(op.id, by=call.caller.sub)
    if not op.state.terminal:
        op = await engine.wait_terminal(op.id, engine.config.sync_wait_s) or op
    return proto.task_json(op, call.config.poll_interval_ms)


async def tasks_list(call: Call) -> dict[str, Any]:
    call.caller.require("ops:read")
    size = call.config.page_size
    offset = proto.page_cursor(call.params.get("cursor"), MAX_LISTED)
    ops = await services(call.request).engine.store.list_operations(
        caller=call.caller.sub, limit=min(MAX_LISTED, offset + size + 1)
    )
    page = ops[offset : offset + size]
    out: dict[str, Any] = {
        "tasks": [proto.task_json(o, call.config.poll_interval_ms) for o in page]
    }
    if len(ops) > offset + size and offset + size < MAX_LISTED:
        out["nextCursor"] = str(offset + size)
    return out


async def ping(_call: Call) -> dict[str, Any]:
    return {}


PROGRESS_METHODS = frozenset({"tools/call", "tasks/result"})  # the ones that wait
METHODS = {
    "ping": ping,
    "tools/list": tools_list,
    "tools/call": tools_call,
    "tasks/get": tasks_get,
    "tasks/result": tasks_result,
    "tasks/cancel": tasks_cancel,
    "tasks/list": tasks_list,
}


# -- the endpoint -----------------------------------------------------------------------------


def _wants_sse(request: web.Request) -> bool:
    accept = request.headers.get("Accept", "").lower()
    return "text/event-stream" in accept and "application/json" not in accept


def _progress(
    request: web.Request, method: str | None, params: dict[str, Any]
) -> ProgressStream | None:
    """A progress stream when the client asked for one and can read an SSE answer."""
    if method not in PROGRESS_METHODS:
        return None
    token = progress_token(params)
    if token is None or "text/event-stream" not in request.headers.get("Accept", "").lower():
        return None
    return ProgressStream(request, ProgressTracker(token))


async def _answer(
    request: web.Request, body: dict[str, Any], headers: dict[str, str]
) -> web.StreamResponse:
    if not _wants_sse(request):
        return web.json_response(body, headers=headers)
    resp = web.StreamResponse(headers={**headers, **SSE_HEADERS})
    await resp.prepare(request)
    await resp.write(_sse(body))
    await resp.write_eof()
    return resp


async def post(request: web.Request) -> web.StreamResponse:
    _check_origin(request)
    caller = await _caller(request)
    try:
        msg = proto.parse_message(await request.read())
    except proto.McpFault as fault:
        return _rpc_response(400, proto.error(None, fault.code, fault.message))
    if not msg.is_request:  # a notification or the client's response: nothing to answer
        return web.Response(status=202)
    config = request.app[MCP]
    headers: dict[str, str] = {}
    if msg.method == "initialize":
        version = proto.negotiate(msg.params.get("protocolVersion"))
        sid = proto.new_session_id(config.session_key, caller.sub, version)
        headers[SESSION_HEADER] = sid
        return await _answer(
            request,
            proto.result(msg.rpc_id, proto.initialize_result(version, config.server_version)),
            headers,
        )
    asked = request.headers.get(VERSION_HEADER)
    if asked and asked not in proto.SUPPORTED_VERSIONS:
        return _rpc_response(
            400,
            proto.error(
                msg.rpc_id,
                proto.INVALID_REQUEST,
                f"unsupported {VERSION_HEADER} {asked!r}",
                {"supported": list(proto.SUPPORTED_VERSIONS)},
            ),
        )
    session = _session(request, caller)
    if isinstance(session, web.Response):
        return session
    version = asked or (str(session.get("v")) if session else proto.LATEST_VERSION)
    handler = METHODS.get(msg.method or "")
    if handler is None:
        body = proto.error(msg.rpc_id, proto.METHOD_NOT_FOUND, f"method {msg.method!r} not found")
        return await _answer(request, body, headers)
    progress = _progress(request, msg.method, msg.params)
    call = Call(
        request=request, caller=caller, params=msg.params, version=version, progress=progress
    )
    streaming = False
    try:
        body = proto.result(msg.rpc_id, await handler(call))
    except proto.McpFault as fault:
        body = proto.error(msg.rpc_id, fault.code, fault.message, fault.data)
    except HandlerError as exc:
        streaming = progress is not None and progress.response is not None
        if exc.type is HandlerErrorType.UNAUTHORIZED:  # MCP authorization: a 403 names it
            exc.headers.setdefault(
                "WWW-Authenticate",
                f'Bearer error="insufficient_scope", resource_metadata="{metadata_url(request)}"',
            )
        if not streaming and exc.type in (
            HandlerErrorType.UNAUTHENTICATED,
            HandlerErrorType.UNAUTHORIZED,
        ):
            raise
        body = proto.error(msg.rpc_id, proto.INTERNAL_ERROR, exc.message, exc.details)
    except Exception:
        if progress is None or progress.response is None:
            raise
        log.exception("mcp: %s failed after its progress stream began", msg.method)
        body = proto.error(msg.rpc_id, proto.INTERNAL_ERROR, "internal error")
    if progress is not None and progress.response is not None:  # the stream ends with it
        await progress.response.write(_sse(body))
        await progress.response.write_eof()
        return progress.response
    return await _answer(request, body, headers)


async def get(request: web.Request) -> web.Response:
    await _caller(request)
    return web.Response(
        status=405, headers={"Allow": "POST, DELETE"}, text="this server sends no unasked messages"
    )


async def delete(request: web.Request) -> web.Response:
    caller = await _caller(request)
    sid = request.headers.get(SESSION_HEADER)
    if not sid:
        raise HandlerError(HandlerErrorType.BAD_REQUEST, f"{SESSION_HEADER} is required")
    session = _session(request, caller)
    if isinstance(session, web.Response):
        return session
    revoked = request.app[MCP].revoked
    if len(revoked) >= MAX_REVOKED:
        revoked.pop(next(iter(revoked)))
    revoked[sid] = time.time()
    return web.Response(status=204)


async def resource_metadata(request: web.Request) -> web.Response:
    settings_issuer = services(request).verifier.config.issuer
    scopes = ["ops:start:*", "ops:read"]
    body = proto.protected_resource_metadata(_base(request) + PATH, settings_issuer, scopes)
    return web.json_response(body, headers={"Cache-Control": "public, max-age=300"})


def add_routes(app: web.Application, config: McpConfig) -> None:
    app[MCP] = config
    app.router.add_post(PATH, post)
    app.router.add_get(PATH, get)
    app.router.add_delete(PATH, delete)
    app.router.add_get(METADATA_PATH, resource_metadata)
    app.router.add_get(METADATA_PATH + PATH, resource_metadata)


__all__ = ["MCP", "McpConfig", "add_routes"]
