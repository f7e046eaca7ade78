"""Input-required routes (issue 15 item 4): the agent asks, the caller answers.

- ``POST /api/operations/{op_id}/input-request`` (agent-facing, ``Authorization: Bearer``
  with the operation's completion token) body ``{"prompt": str, "schema": <JSON Schema>?,
  "name": str?, "attempt": int?}`` -> 202 ``{"state": "waiting", "waitingForInput": {...}}``:
  the question is recorded and the attempt parked (the agent then ends its attempt: no answer,
  no heartbeats); 200 ``{"state": "answered", "value": <json>}`` when that question (same
  ``name``, default ``"1"``) was answered already: the agent goes on with the value.
- ``POST /api/operations/{op_id}/input`` (caller-facing, JWT) body: the answer, any JSON value,
  validated against the asked schema -> 202 ``{"operationId", "name", "by"}``; 400 when it does
  not match, 409 when the operation is not waiting for input, 404 when it is not the caller's.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.domain.dispatch import STEP_RESULT_MAX
from gateway.domain.errors import HandlerError, HandlerErrorType
from gateway.http.api import _load
from gateway.http.bodies import capped_body, parse_json
from gateway.http.context import principal, services
from gateway.http.journal import _attempt, _token


async def input_request(request: web.Request) -> web.Response:
    raw = await capped_body(request, STEP_RESULT_MAX, "input request body")
    data = parse_json(raw, "input request body")
    if not isinstance(data, dict) or not isinstance(data.get("prompt"), str):
        raise HandlerError(
            HandlerErrorType.BAD_REQUEST,
            'an input request is {"prompt": <string>, "schema": <JSON Schema>?, "name": ...}',
        )
    schema = data.get("schema")
    if schema is not None and not isinstance(schema, dict):
        raise HandlerError(HandlerErrorType.BAD_REQUEST, "schema must be a JSON Schema object")
    name = data.get("name", "1")
    if not isinstance(name, str):
        raise HandlerError(HandlerErrorType.BAD_REQUEST, "name must be a string")
    question, value = await services(request).engine.ask_input(
        request.match_info["op_id"],
        _token(request),
        name=name,
        prompt=data["prompt"],
        schema=schema,
        attempt=_attempt(data.get("attempt")),
    )
    if question is None:
        return web.json_response({"state": "answered", "value": value})
    return web.json_response(
        {"state": "waiting", "waitingForInput": question.to_json()}, status=202
    )


async def provide_input(request: web.Request) -> web.Response:
    op = await _load(request)
    p = await principal(request)
    raw = await capped_body(request, STEP_RESULT_MAX, "answer")
    value: Any = parse_json(raw, "answer")
    step = await services(request).engine.provide_input(op, value, by=p.sub)
    return web.json_response(
        {"operationId": op.id, "name": step.name.split(":", 1)[1], "by": p.sub}, status=202
    )


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_post("/api/operations/{op_id}/input-request", input_request)
    r.add_post("/api/operations/{op_id}/input", provide_input)


__all__ = ["add_routes"]
