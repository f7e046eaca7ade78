"""Pull workers' routes: ``POST /api/agents/{name}/tasks:poll`` (issue 12 item 4).

A worker of a pull agent long-polls here for up to ``max_tasks`` leased tasks, authenticated
with a JWT that holds ``agents:work`` and belongs to the agent's owner (or ``admin``). Each
task carries what a pushed agent gets with a dispatch: the operation, its input, the attempt,
the per-operation token and the completion, heartbeat and steps URLs, the heartbeat timeout
and the journal of earlier attempts (completed steps, last checkpoint details).
"""

from __future__ import annotations

import base64
from typing import Any

from aiohttp import web

from gateway.domain import jsonio
from gateway.domain.dispatch import DispatchRequest
from gateway.domain.errors import HandlerError, HandlerErrorType
from gateway.domain.specs import AdapterKind
from gateway.http.bodies import json_body
from gateway.http.context import principal, services

WORK_SCOPE = "agents:work"
MAX_TASKS = 100
MAX_WAIT_S = 60.0
WORKER_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


def _bad(message: str) -> HandlerError:
    return HandlerError(HandlerErrorType.BAD_REQUEST, message)


def _poll_args(data: Any) -> tuple[int, float, str]:
    if not isinstance(data, dict):
        raise _bad("a poll is a JSON object: {max_tasks, wait_s, worker_id}")
    unknown = set(data) - {"max_tasks", "wait_s", "worker_id"}
    if unknown:
        raise _bad(f"unknown field {sorted(unknown)[0]!r}")
    max_tasks = data.get("max_tasks", 1)
    if isinstance(max_tasks, bool) or not isinstance(max_tasks, int):
        raise _bad("max_tasks must be an integer")
    if not 1 <= max_tasks <= MAX_TASKS:
        raise _bad(f"max_tasks must be 1 to {MAX_TASKS}")
    wait_s = data.get("wait_s", 0)
    if isinstance(wait_s, bool) or not isinstance(wait_s, int | float):
        raise _bad("wait_s must be a number")
    if not 0 <= wait_s <= MAX_WAIT_S:
        raise _bad(f"wait_s must be 0 to {MAX_WAIT_S:g}")
    worker_id = data.get("worker_id")
    if (
        not isinstance(worker_id, str)
        or not 1 <= len(worker_id) <= 200
        or not set(worker_id) <= WORKER_CHARS
    ):
        raise _bad("worker_id must be 1-200 characters of letters, digits, '-', '_' or '.'")
    return max_tasks, float(wait_s), worker_id


def task_json(req: DispatchRequest) -> dict[str, Any]:
    """One leased task as the worker receives it."""
    op, spec = req.operation, req.spec
    ctype = op.input_content_type or "application/json"
    task: dict[str, Any] = {
        "operationId": op.id,
        "idempotencyKey": op.id,
        "service": op.service,
        "operation": op.operation,
        "attempt": req.attempt,
        "caller": op.caller,
        "contentType": ctype,
        "token": req.completion_token,
        "completionUrl": req.completion_url,
        "heartbeatUrl": req.heartbeat_url,
        "stepsUrl": req.steps_url,
        "heartbeatTimeoutS": spec.heartbeat_timeout_s,
        "attemptTimeoutS": spec.attempt_timeout_s,
        "deadline": op.deadline_at.isoformat() if op.deadline_at else None,
        "journal": req.journal.to_json() if req.journal else {"steps": [], "details": None},
    }
    body = op.input or b""
    if "json" in ctype.lower():
        try:
            task["input"] = jsonio.loads(body) if body else None
            return task
        except (ValueError, UnicodeDecodeError):
            pass
    task["inputBase64"] = base64.b64encode(body).decode()
    return task


async def poll_tasks(request: web.Request) -> web.Response:
    p = await principal(request)
    p.require(WORK_SCOPE)
    svc = services(request)
    name = request.match_info["name"]
    agent = await svc.registry.get(name)
    if agent is None:
        raise HandlerError(HandlerErrorType.NOT_FOUND, "no such agent")
    if not p.is_admin and p.sub != agent.owner:
        raise HandlerError(
            HandlerErrorType.UNAUTHORIZED,
            f"agent {name!r} belongs to another principal; only its owner or admin may work it",
        )
    max_tasks, wait_s, worker_id = _poll_args(await json_body(request))
    if agent.adapter is not AdapterKind.PULL:
        raise HandlerError(
            HandlerErrorType.CONFLICT,
            f"agent {name!r} is not a pull agent (adapter {agent.adapter.value}): "
            "the gateway dispatches to its endpoint",
        )

    def gone() -> bool:  # the worker hung up (died) while it waited
        transport = request.transport
        return transport is None or transport.is_closing()

    reqs = await svc.engine.poll_tasks(agent, worker_id, max_tasks, wait_s, gone)
    return web.json_response({"tasks": [task_json(r) for r in reqs]})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/agents/{name}/tasks:poll", poll_tasks)
