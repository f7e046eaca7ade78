"""Agent-facing routes of accepted operations: heartbeats and the durable step journal.

All three are authenticated with the operation's completion token (the one the dispatch
gave the agent in ``Nexus-Callback-Authorization``), sent as ``Authorization: Bearer``:

- ``POST /api/operations/{op_id}/heartbeat`` body (optional) ``{"details": <json>,
  "attempt": <int>}`` -> 200 ``{"state", "cancelRequested", "heartbeatTimeoutS", "attempt"}``;
- ``GET /api/operations/{op_id}/steps`` -> ``{"steps": [...], "details": <checkpoint>}``;
- ``PUT /api/operations/{op_id}/steps/{name}`` body ``{"result": <json>}`` -> 201 recorded,
  200 already recorded (first write wins; the answer carries the recorded result).
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from aiohttp import web

from gateway.domain.dispatch import (
    HEADER_ATTEMPT,
    HEARTBEAT_BODY_MAX,
    STEP_NAME_MAX,
    STEP_RESULT_MAX,
    Journal,
)
from gateway.domain.errors import HandlerError, HandlerErrorType
from gateway.domain.model import StepRecord
from gateway.engine.heartbeats import HeartbeatAnswer
from gateway.engine.wire import rfc3339_ms
from gateway.http.bodies import capped_body, int_param, parse_json
from gateway.http.context import InboundRequest, services


def _token(request: InboundRequest) -> str:
    auth = request.headers.get("Authorization", "")
    return auth[7:].strip() if auth[:7].lower() == "bearer " else ""


_ANSWERS: dict[HeartbeatAnswer, bytes] = {}  # the few distinct heartbeat answers, as sent
_ANSWERS_KEPT = 1024


def _answer_body(answer: HeartbeatAnswer) -> bytes:
    body = _ANSWERS.get(answer)
    if body is None:
        body = json.dumps(answer.to_json()).encode()
        if len(_ANSWERS) < _ANSWERS_KEPT:
            _ANSWERS[answer] = body
    return body


def _attempt(raw: Any) -> int | None:
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw < 2**31:
        raise HandlerError(HandlerErrorType.BAD_REQUEST, "attempt must be a non-negative integer")
    return raw


def step_json(step: StepRecord) -> dict[str, Any]:
    return {
        "name": step.name,
        "result": step.result,
        "at": rfc3339_ms(step.at),
        "attempt": step.attempt,
    }


def journal_json(journal: Journal) -> dict[str, Any]:
    return {"steps": [step_json(s) for s in journal.steps], "details": journal.details}


async def heartbeat(request: InboundRequest) -> web.Response:
    raw = await capped_body(request, HEARTBEAT_BODY_MAX, "heartbeat body")
    data = parse_json(raw, "heartbeat body") if raw.strip() else {}
    if not isinstance(data, dict):
        raise HandlerError(HandlerErrorType.BAD_REQUEST, "a heartbeat body is a JSON object")
    answer = await services(request).engine.heartbeat(
        request.match_info["op_id"],
        _token(request),
        attempt=_attempt(data.get("attempt")),
        details=data.get("details"),
        has_details="details" in data,
    )
    return web.Response(body=_answer_body(answer), content_type="application/json", charset="utf-8")


async def list_steps(request: InboundRequest) -> web.Response:
    journal = await services(request).engine.journal(request.match_info["op_id"], _token(request))
    return web.json_response(journal_json(journal))


async def put_step(request: InboundRequest) -> web.Response:
    name = request.match_info["name"]
    if len(name) > STEP_NAME_MAX:  # before reading the body
        raise HandlerError(
            HandlerErrorType.BAD_REQUEST, f"a step name has 1 to {STEP_NAME_MAX} characters"
        )
    raw = await capped_body(request, STEP_RESULT_MAX, "step body")
    data = parse_json(raw, "step body")
    if not isinstance(data, dict) or "result" not in data:
        raise HandlerError(HandlerErrorType.BAD_REQUEST, 'a step body is {"result": <json>}')
    attempt = _attempt(data.get("attempt"))
    if attempt is None and HEADER_ATTEMPT in request.headers:
        attempt = int_param(request.headers[HEADER_ATTEMPT], HEADER_ATTEMPT, 0, high=2**31 - 1)
    step, created = await services(request).engine.record_step(
        request.match_info["op_id"], _token(request), name, data["result"], attempt=attempt
    )
    return web.Response(
        body=_step_body(step),
        status=201 if created else 200,
        content_type="application/json",
        charset="utf-8",
    )


def _step_body(step: StepRecord) -> bytes:
    """The step as JSON, by orjson (``web.json_response``'s encoder was ~4% of a step record's
    CPU); a result orjson cannot write (an integer beyond 64 bits) by the standard library.
    The result was parsed from JSON, so it holds no non-finite float (which orjson would write
    as ``null``)."""
    value = step_json(step)
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        return json.dumps(value).encode()


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_post("/api/operations/{op_id}/heartbeat", heartbeat)
    r.add_get("/api/operations/{op_id}/steps", list_steps)
    r.add_put("/api/operations/{op_id}/steps/{name}", put_step)


__all__ = ["add_routes", "journal_json", "step_json"]
