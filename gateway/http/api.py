"""Gateway API outside the Nexus surface: completions, registry, operations, health."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from gateway.domain import jsonio
from gateway.domain import links as nexus_links
from gateway.domain.errors import HandlerError, HandlerErrorType
from gateway.domain.model import (
    Operation,
    OperationState,
)
from gateway.domain.specs import AdapterKind, AgentSpec
from gateway.engine.signing import CallbackSigner
from gateway.http import mcp_agents, sse
from gateway.http.bodies import int_param, json_body
from gateway.http.context import InboundRequest, check_outbound_url, principal, services
from gateway.http.contract import registration_errors
from gateway.http.wire import (
    delivery_json,
    event_json,
    input_json,
    iso,
    operation_json,
    secrets_json,
)
from gateway.security.netguard import redact_userinfo
from gateway.security.schemas import ValidationTimeout, off_loop
from registry.auth import Principal

# -- completions (agents finishing async operations) ------------------------------------------


async def complete(request: InboundRequest) -> web.Response:
    svc = services(request)
    op_id = request.match_info["op_id"]
    auth = request.headers.get("Authorization", "")
    token = auth[7:].strip() if auth[:7].lower() == "bearer " else request.headers.get("Token", "")
    if not token or not svc.engine.check_completion_token(op_id, token):
        raise HandlerError(HandlerErrorType.UNAUTHENTICATED, "invalid completion token")
    state_name = request.headers.get("Nexus-Operation-State", "")
    try:
        state = OperationState(state_name)
    except ValueError as exc:
        raise HandlerError(
            HandlerErrorType.BAD_REQUEST,
            "Nexus-Operation-State must be succeeded, failed or canceled",
        ) from exc
    if not state.terminal:
        raise HandlerError(HandlerErrorType.BAD_REQUEST, "a completion needs a terminal state")
    body = await request.read()
    # The links the agent (a Nexus handler) returns go on to the caller's callback.
    parsed = nexus_links.lenient(request.headers.getall("Nexus-Link", []))
    links = [nexus_links.format_link(link) for link in parsed]
    if state is OperationState.SUCCEEDED:
        await svc.engine.complete_from_agent(
            op_id,
            state,
            result=body,
            content_type=request.headers.get("Content-Type") if body else None,
            links=links,
        )
    else:
        try:
            fail = jsonio.loads(body) if body else {}
        except jsonio.JsonRejected as exc:
            raise HandlerError(HandlerErrorType.BAD_REQUEST, f"failure refused: {exc}") from exc
        except ValueError:
            fail = {"message": body.decode(errors="replace")}
        if not isinstance(fail, dict):
            fail = {"message": str(fail)}
        await svc.engine.complete_from_agent(op_id, state, fail=fail, links=links)
    return web.Response(status=200)


# -- registry ---------------------------------------------------------------------------------


async def register_agent(request: web.Request) -> web.Response:
    p = await principal(request)
    p.require("agents:register")
    data = await json_body(request)
    if not isinstance(data, dict):
        raise HandlerError(HandlerErrorType.BAD_REQUEST, "registration must be a JSON object")
    try:  # off the event loop and time-limited, like every schema check of a registration
        errors = await off_loop(registration_errors, data)
    except ValidationTimeout as exc:
        raise HandlerError(HandlerErrorType.BAD_REQUEST, f"registration refused: {exc}") from exc
    if errors:
        raise HandlerError(
            HandlerErrorType.BAD_REQUEST, "registration does not match the schema", details=errors
        )
    try:
        spec = AgentSpec.from_json(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise HandlerError(HandlerErrorType.BAD_REQUEST, f"invalid registration: {exc!r}") from exc
    for endpoint in spec.pool():
        await check_outbound_url(request, endpoint, "agent endpoint")
    if spec.auth is not None and spec.auth.token_url:
        await check_outbound_url(request, spec.auth.token_url, "auth token_url")
    if spec.adapter is AdapterKind.MCP:  # its tools are its operations
        spec = await mcp_agents.discover(request, spec)
    svc = services(request)
    version, created = await svc.registry.register_as(spec, p.sub, admin=p.is_admin)
    stored = await svc.registry.get(spec.name)
    return web.json_response(agent_json(stored or spec, version), status=201 if created else 200)


def agent_json(agent: AgentSpec, version: int) -> dict[str, Any]:
    """An agent as reads show it: credentials in the endpoint URL are redacted (``auth``
    shows references, env var names, never a secret)."""
    data = {**agent.to_json(), "registryVersion": version}
    if agent.endpoint:  # a pull agent has none
        data["endpoint"] = redact_userinfo(agent.endpoint)
    if "endpoints" in data:
        data["endpoints"] = [redact_userinfo(e) for e in agent.endpoints]
    return data


def _require_agents_read(p: Principal) -> None:
    if not (p.has("agents:read") or p.has("agents:register")):
        raise HandlerError(HandlerErrorType.UNAUTHORIZED, "missing scope 'agents:read'")


async def list_agents(request: web.Request) -> web.Response:
    _require_agents_read(await principal(request))
    agents = await services(request).registry.list()
    return web.json_response({"agents": [agent_json(a, v) for a, v in agents]})


async def show_agent(request: web.Request) -> web.Response:
    _require_agents_read(await principal(request))
    found = await services(request).registry.get_versioned(request.match_info["name"])
    if found is None:
        raise HandlerError(HandlerErrorType.NOT_FOUND, "no such agent")
    data = agent_json(*found)
    engine = services(request).engine
    if len(found[0].pool()) > 1:  # a pool: each endpoint's health
        data["endpoint_health"] = engine.endpoint_health(found[0])
    if found[0].adapter is AdapterKind.PULL:  # a pull agent: its queue and live workers
        depth, workers = await engine.pull_status(found[0])
        data["queue_depth"] = depth
        data["workers"] = [w.to_json() for w in workers]
    return web.json_response(data)


async def agent_status(request: web.Request) -> web.Response:
    """What the console shows beside an agent: this replica's circuit breaker for it and the
    number of its operations in each state (the caller's own, unless admin)."""
    p = await principal(request)
    _require_agents_read(p)
    svc = services(request)
    name = request.match_info["name"]
    if await svc.registry.get(name) is None:
        raise HandlerError(HandlerErrorType.NOT_FOUND, "no such agent")
    engine = svc.engine
    counts: dict[str, int] = {}
    if p.has("ops:read"):
        counts = await engine.store.count_operations(
            service=name, caller=None if p.is_admin else p.sub
        )
    breaker = engine.breaker.snapshot(name, engine.clock.now())
    return web.json_response(
        {
            "name": name,
            "replica": engine.config.owner,
            "breaker": {
                "state": breaker.state,
                "failures": breaker.failures,
                "openUntil": iso(breaker.open_until),
            },
            "operations": counts,
        }
    )


async def delete_agent(request: web.Request) -> web.Response:
    p = await principal(request)
    if not p.has("agents:register"):
        raise HandlerError(HandlerErrorType.UNAUTHORIZED, "missing scope 'agents:register'")
    name = request.match_info["name"]
    if not await services(request).registry.deregister_as(name, p.sub, admin=p.is_admin):
        raise HandlerError(HandlerErrorType.NOT_FOUND, "no such agent")
    return web.Response(status=204)


# -- operations -------------------------------------------------------------------------------


async def _load(request: web.Request) -> Operation:
    p = await principal(request)
    p.require("ops:read")
    op = await services(request).engine.store.get_operation(request.match_info["op_id"])
    if op is None or not (p.is_admin or op.caller == p.sub):
        raise HandlerError(HandlerErrorType.NOT_FOUND, "no such operation")
    return op


def _time_param(raw: str | None, name: str) -> datetime | None:
    """An RFC 3339 query parameter (a time without an offset is UTC)."""
    if not raw:
        return None
    try:
        dt = datetime.fromisoformat(raw.replace("Z", "+00:00").replace(" ", "+", 1)[:64])
    except ValueError as exc:
        raise HandlerError(
            HandlerErrorType.BAD_REQUEST, f"{name} must be an RFC 3339 time, got {raw[:64]!r}"
        ) from exc
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


async def list_operations(request: web.Request) -> web.Response:
    """Filters: state, service (the agent), caller (admin), since/until (RFC 3339), q (part
    of the request id); ``counts=true`` adds the number in each state (all but the state
    filter applied), for the console's live counts."""
    p = await principal(request)
    p.require("ops:read")
    query = request.query
    state = query.get("state")
    try:
        st = OperationState(state) if state else None
    except ValueError as exc:
        raise HandlerError(HandlerErrorType.BAD_REQUEST, f"bad query: {exc}") from exc
    limit = min(1000, max(1, int_param(query.get("limit"), "limit", 100, low=-(2**63))))
    text = query.get("q") or None
    if text is not None and len(text) > 200:
        raise HandlerError(HandlerErrorType.BAD_REQUEST, "q is at most 200 characters")
    filters: dict[str, Any] = {
        # only an admin sees (and filters by) other callers' operations
        "caller": (query.get("caller") or None) if p.is_admin else p.sub,
        "service": query.get("service") or None,
        "created_after": _time_param(query.get("since"), "since"),
        "created_before": _time_param(query.get("until"), "until"),
        "request_id_contains": text,
    }
    store = services(request).engine.store
    ops = await store.list_operations(state=st, limit=limit, **filters)
    body: dict[str, Any] = {"operations": [operation_json(o) for o in ops]}
    if query.get("counts") in ("1", "true"):
        body["counts"] = await store.count_operations(**filters)
    return web.json_response(body)


async def show_operation(request: web.Request) -> web.Response:
    """The operation with its input (the list leaves the input out)."""
    op = await _load(request)
    body = {**operation_json(op), **input_json(op)}
    question = await services(request).engine.waiting_for_input(op)
    body["waitingForInput"] = question.to_json() if question is not None else None
    return web.json_response(body)


async def operation_events(request: web.Request) -> web.Response:
    op = await _load(request)
    after = int_param(request.query.get("after"), "after", 0)
    events = await services(request).engine.store.list_events(op.id, after=after)
    return web.json_response({"operationId": op.id, "events": [event_json(e) for e in events]})


async def operation_stream(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events of the operation's history (``gateway.http.sse``); resume with
    ``Last-Event-ID`` (or ``?after=``)."""
    op = await _load(request)
    engine = services(request).engine
    if request.headers.get("Last-Event-ID"):  # checked before the 200 is sent
        after = int_param(request.headers["Last-Event-ID"], "Last-Event-ID", 0)
    else:
        after = int_param(request.query.get("after"), "after", 0)
    return await sse.stream_events(
        request,
        engine.store,
        op.id,
        after=after,
        wait_change=engine.wait_change,
        poll_s=max(0.05, engine.config.poll_interval_s),
    )


async def operation_callbacks(request: web.Request) -> web.Response:
    op = await _load(request)
    deliveries = await services(request).engine.store.list_callbacks(op.id)
    return web.json_response({"callbacks": [delivery_json(d) for d in deliveries]})


async def cancel_operation(request: web.Request) -> web.Response:
    op = await _load(request)
    p = await principal(request)
    await services(request).engine.cancel(op.id, by=p.sub)
    return web.Response(status=202)


async def redrive_operation(request: web.Request) -> web.Response:
    p = await principal(request)
    p.require("admin")
    op = await _load(request)
    if not await services(request).engine.redrive(op.id, by=p.sub):
        raise HandlerError(
            HandlerErrorType.CONFLICT, "only a failed or canceled operation can be redriven"
        )
    return web.Response(status=202)


async def redrive_callback(request: web.Request) -> web.Response:
    p = await principal(request)
    p.require("admin")
    op = await _load(request)
    cid = request.match_info["delivery_id"]
    if not await services(request).engine.redrive_callback(cid, op.id, by=p.sub):
        raise HandlerError(
            HandlerErrorType.CONFLICT, "only an expired or disabled callback can be redriven"
        )
    return web.Response(status=202)


# -- callback signing secrets ---------------------------------------------------------------


def _signer(request: web.Request) -> CallbackSigner:
    signer = services(request).engine.signer
    if signer is None:
        raise HandlerError(HandlerErrorType.NOT_IMPLEMENTED, "callback signing is disabled")
    return signer


async def get_callback_secret(request: web.Request) -> web.Response:
    """The caller's callback signing secret (``whsec_...``), created on first use."""
    p = await principal(request)
    return web.json_response(secrets_json(await _signer(request).secrets(p.sub)))


async def rotate_callback_secret(request: web.Request) -> web.Response:
    """A new secret; the old one keeps signing (second signature) for ``graceSeconds``."""
    p = await principal(request)
    raw = await request.read()
    data = await json_body(request) if raw else {}
    grace = data.get("graceSeconds", 86400) if isinstance(data, dict) else None
    if not isinstance(grace, int | float) or isinstance(grace, bool) or not 0 <= grace <= 7 * 86400:
        raise HandlerError(
            HandlerErrorType.BAD_REQUEST, "graceSeconds must be a number from 0 to 604800"
        )
    rotated = await _signer(request).rotate(p.sub, float(grace))
    return web.json_response(secrets_json(rotated))


# -- health -----------------------------------------------------------------------------------


async def metrics(request: web.Request) -> web.Response:
    engine = services(request).engine
    try:
        counts = await engine.store.count_operations()
    except Exception:  # the scrape still reports the process metrics
        counts = {}
    for state in OperationState:
        engine.metrics.operations.labels(state.value).set(counts.get(state.value, 0))
    return web.Response(
        body=engine.metrics.render(), headers={"Content-Type": "text/plain; version=0.0.4"}
    )


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    store = services(request).engine.store
    try:
        await store.ping()
        current = await store.migrations_current()
    except Exception as exc:
        return web.json_response({"status": "unavailable", "error": type(exc).__name__}, status=503)
    if not current:
        return web.json_response({"status": "migrations pending"}, status=503)
    full = getattr(store, "full_state", None)
    if full is not None and full.active:
        return web.json_response(
            {"status": "unavailable", "error": "database disk full"},
            status=503,
            headers={"Retry-After": "5"},
        )
    return web.json_response({"status": "ready"})


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_post("/api/completions/{op_id}", complete)
    r.add_post("/api/agents", register_agent)
    r.add_get("/api/agents", list_agents)
    r.add_get("/api/agents/{name}", show_agent)
    r.add_get("/api/agents/{name}/status", agent_status)
    r.add_delete("/api/agents/{name}", delete_agent)
    r.add_get("/api/operations", list_operations)
    r.add_get("/api/operations/{op_id}", show_operation)
    r.add_get("/api/operations/{op_id}/events", operation_events)
    r.add_get("/api/operations/{op_id}/callbacks", operation_callbacks)
    r.add_get("/api/operations/{op_id}/stream", operation_stream)
    r.add_post("/api/operations/{op_id}/cancel", cancel_operation)
    r.add_post("/api/operations/{op_id}/redrive", redrive_operation)
    r.add_post("/api/operations/{op_id}/callbacks/{delivery_id}/redrive", redrive_callback)
    r.add_get("/api/callback-secret", get_callback_secret)
    r.add_post("/api/callback-secret/rotate", rotate_callback_secret)
    r.add_get("/metrics", metrics)
    r.add_get("/healthz", healthz)
    r.add_get("/readyz", readyz)
