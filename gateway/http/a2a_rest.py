"""The A2A HTTP+JSON (REST) binding, beside JSON-RPC, at every A2A interface URL (the root
interface ``/a2a`` and each agent's ``/a2a/{agent}``):

  POST   {base}/message:send                 SendMessage
  POST   {base}/message:stream               SendStreamingMessage (SSE)
  GET    {base}/tasks                        ListTasks (query parameters)
  GET    {base}/tasks/{id}                   GetTask (?historyLength=)
  POST   {base}/tasks/{id}:cancel            CancelTask
  GET    {base}/tasks/{id}:subscribe         SubscribeToTask (SSE; POST accepted too)
  POST   {base}/tasks/{id}/pushNotificationConfigs              Create...PushNotificationConfig
  GET    {base}/tasks/{id}/pushNotificationConfigs              List...PushNotificationConfigs
  GET    {base}/tasks/{id}/pushNotificationConfigs/{configId}   Get...PushNotificationConfig
  DELETE {base}/tasks/{id}/pushNotificationConfigs/{configId}   Delete...PushNotificationConfig

Bodies and answers are ProtoJSON (``application/a2a+json``); errors are ``google.rpc.Status``
JSON with the A2A reason (see ``adapters.a2a_stream.rest_error``).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web

from adapters import a2a_facade as proto
from adapters import a2a_rpc as wire
from adapters import a2a_stream as stream
from gateway.domain import jsonio
from gateway.domain.errors import HandlerError, HandlerErrorType
from gateway.domain.model import Operation
from gateway.http import a2a_methods as methods
from gateway.http import sse
from gateway.http.a2a_methods import METHODS, Call
from gateway.http.context import principal

# request errors answered in the binding's own error format; any other HandlerError (401,
# 403, 429, 503...) is answered by the error middleware as problem+json
A2A_ERRORS = (HandlerErrorType.BAD_REQUEST, HandlerErrorType.NOT_FOUND)
Params = Callable[[web.Request], Awaitable[dict[str, Any]]]


def _answer(status: int, body: Any) -> web.Response:
    return web.Response(
        status=status, body=json.dumps(body).encode(), content_type=stream.A2A_JSON_CT
    )


def _error(exc: Exception) -> web.Response:
    if isinstance(exc, proto.RpcFault):
        status, body = stream.rest_error(exc.code, exc.message, exc.data)
    else:
        assert isinstance(exc, HandlerError)
        status, body = stream.rest_error(wire.rpc_code(exc.type), exc.message, exc.details)
    return _answer(status, body)


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = jsonio.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise proto.RpcFault(-32700, f"the body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise proto.invalid_params("the body must be a JSON object")
    return dict(wire.camel_keys(body))


def _query(request: web.Request) -> dict[str, Any]:
    params: dict[str, Any] = dict(wire.camel_keys(dict(request.query)))
    if "includeArtifacts" in params:
        params["includeArtifacts"] = str(params["includeArtifacts"]).lower() in ("true", "1")
    return params


async def _params(request: web.Request, source: str) -> dict[str, Any]:
    params = await _body(request) if source.endswith("body") else _query(request)
    task = request.match_info.get("task")
    config = request.match_info.get("config")
    if task is not None:
        params["taskId" if "push" in source else "id"] = task
    if config is not None:
        params["id"] = config
    return params


async def _call(request: web.Request, source: str) -> Call:
    agent = await methods.agent_of(request)
    caller = await principal(request)
    fault = wire.version_fault(methods.a2a_version(request))
    if fault is not None:
        raise fault
    return Call(request=request, agent=agent, caller=caller, params=await _params(request, source))


def _unary(method: str, source: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        try:
            call = await _call(request, source)
            result = await METHODS[method](call)
        except (proto.RpcFault, HandlerError) as exc:
            if isinstance(exc, HandlerError) and exc.type not in A2A_ERRORS:
                raise
            return _error(exc)
        return _answer(200, {} if result is None else result)

    return handler


def _streaming(method: str, source: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        try:
            call = await _call(request, source)
            op, after = await methods.open_stream(call, method)
        except (proto.RpcFault, HandlerError) as exc:
            if isinstance(exc, HandlerError) and exc.type not in A2A_ERRORS:
                raise
            return _error(exc)
        return await sse.relay(request, _frames(call, op, after))

    return handler


async def _frames(call: Call, op: Operation, after: int | None) -> AsyncIterator[bytes | None]:
    async for item in methods.updates(call, op, after):
        yield None if item is None else stream.sse_frame(item[0], item[1])


def add_routes(app: web.Application, base: str) -> None:
    """The HTTP+JSON routes of the interface at ``base`` (``/a2a`` or ``/a2a/{agent}``)."""
    r = app.router
    tasks = base + "/tasks"
    configs = tasks + "/{task}/pushNotificationConfigs"
    r.add_post(base + "/message:send", _unary("SendMessage", "body"))
    r.add_post(base + "/message:stream", _streaming("SendStreamingMessage", "body"))
    r.add_get(tasks, _unary("ListTasks", "query"))
    # the ":verb" routes before "{task}" alone (which would match "x:cancel" too)
    r.add_post(tasks + "/{task}:cancel", _unary("CancelTask", "body"))
    subscribe = _streaming("SubscribeToTask", "query")
    r.add_get(tasks + "/{task}:subscribe", subscribe)
    r.add_post(tasks + "/{task}:subscribe", subscribe)
    r.add_get(tasks + "/{task}", _unary("GetTask", "query"))
    r.add_post(configs, _unary("CreateTaskPushNotificationConfig", "push-body"))
    r.add_get(configs, _unary("ListTaskPushNotificationConfigs", "push-query"))
    r.add_get(configs + "/{config}", _unary("GetTaskPushNotificationConfig", "push-query"))
    r.add_delete(configs + "/{config}", _unary("DeleteTaskPushNotificationConfig", "push-query"))


__all__ = ["add_routes"]
