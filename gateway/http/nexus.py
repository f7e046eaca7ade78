"""The Nexus-style operation surface: start, info, result (long-poll), cancel."""

from __future__ import annotations

import json
import re
import time

from aiohttp import web
from multidict import CIMultiDictProxy

from gateway.domain import links as nexus_links
from gateway.domain.errors import HandlerError, HandlerErrorType
from gateway.domain.model import CALLBACK_EVENTS, CALLBACK_EVENTS_KEY, Operation, OperationState
from gateway.engine.engine import StartRequest, fingerprint
from gateway.http.bodies import read_body
from gateway.http.context import InboundRequest, check_outbound_url, principal, services
from gateway.http.wire import operation_info, running_body
from registry.auth import Principal

PREFIX = "/nexus"
# bounded digits: a duration of 400 digits would be a float of inf
_DURATION = re.compile(r"^\s*(\d{1,12}(?:\.\d{1,9})?)\s*(ms|s|m)\s*$")
MAX_WAIT_S = 60.0


def parse_duration(value: str | None, what: str) -> float | None:
    """Nexus durations: a number followed by ms, s or m."""
    if value is None or value == "":
        return None
    m = _DURATION.match(value)
    if not m:
        raise HandlerError(
            HandlerErrorType.BAD_REQUEST, f"{what} must be a number followed by ms, s or m"
        )
    n = float(m.group(1))
    return n / 1000 if m.group(2) == "ms" else n * 60 if m.group(2) == "m" else n


CALLBACK_EVENTS_HEADER = "Swarmgate-Callback-Events"


def callback_headers(headers: CIMultiDictProxy[str], callback: str | None) -> dict[str, str]:
    """The caller's ``Nexus-Callback-*`` headers, and the events besides the completion it
    asked to be called back for (``Swarmgate-Callback-Events``: a comma-separated list of
    ``input.requested``; 400 for another value, or without a callback URL)."""
    prefix = "nexus-callback-"
    out = {k[len(prefix) :]: v for k, v in headers.items() if k.lower().startswith(prefix)}
    raw = ",".join(headers.getall(CALLBACK_EVENTS_HEADER, []))
    asked = sorted({e.strip() for e in raw.split(",") if e.strip()})
    if not asked:
        return out
    unknown = [e for e in asked if e not in CALLBACK_EVENTS]
    if unknown:
        known = ", ".join(sorted(CALLBACK_EVENTS))
        raise HandlerError(
            HandlerErrorType.BAD_REQUEST,
            f"{CALLBACK_EVENTS_HEADER}: unknown event {unknown[0][:100]!r} (known: {known})",
        )
    if not callback:
        raise HandlerError(
            HandlerErrorType.BAD_REQUEST,
            f"{CALLBACK_EVENTS_HEADER} needs a callback URL (the callback query parameter)",
        )
    out[CALLBACK_EVENTS_KEY] = ",".join(asked)
    return out


# Request headers that are not the caller's headers for the handler: transport, auth,
# content, and the Nexus/gateway headers the gateway itself sets towards the agent.
_NOT_FOR_HANDLER = frozenset(
    {
        "accept",
        "accept-encoding",
        "authorization",
        "connection",
        "cookie",
        "expect",
        "forwarded",
        "host",
        "idempotency-key",
        "keep-alive",
        "nexus-link",
        "nexus-request-id",
        "operation-timeout",
        "proxy-authorization",
        "request-timeout",
        "te",
        "traceparent",
        "tracestate",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
    }
)
_NOT_FOR_HANDLER_PREFIXES = (
    "content-",
    "nexus-callback-",
    "nexus-operation-",
    "swarmgate-",
    "x-forwarded-",
)
MAX_HANDLER_HEADERS = 64


def handler_headers(headers: CIMultiDictProxy[str]) -> dict[str, str]:
    """The caller's headers for the handler (the spec's header passing; Temporal's
    ``nexus_header``), lower-cased, as the agent will get them."""
    out: dict[str, str] = {}
    for name, value in headers.items():
        low = name.lower()
        if low in _NOT_FOR_HANDLER or low.startswith(_NOT_FOR_HANDLER_PREFIXES):
            continue
        out[low] = value if low not in out else f"{out[low]}, {value}"
    if len(out) > MAX_HANDLER_HEADERS:
        raise HandlerError(
            HandlerErrorType.BAD_REQUEST, f"at most {MAX_HANDLER_HEADERS} headers for the handler"
        )
    return out


def request_links(headers: CIMultiDictProxy[str]) -> tuple[str, ...]:
    """The caller's ``Nexus-Link``s, validated (400 for a malformed one), in header form."""
    try:
        parsed = nexus_links.parse_headers(headers.getall("Nexus-Link", []))
    except nexus_links.LinkError as exc:
        raise HandlerError(HandlerErrorType.BAD_REQUEST, f"invalid Nexus-Link: {exc}") from exc
    return tuple(nexus_links.format_link(link) for link in parsed)


def _with_links(headers: dict[str, str], links: list[str] | None) -> dict[str, str]:
    if links:
        headers["Nexus-Link"] = ", ".join(links)
    return headers


def operation_response(op: Operation, links: list[str] | None = None) -> web.Response:
    """200 with the result, 424 with the Failure, or 201 with the token. A null result is an
    empty body without ``Content-Type``."""
    state_header = {"Nexus-Operation-State": op.state.value, "Nexus-Operation-Token": op.id}
    if op.state is OperationState.SUCCEEDED:
        headers = _with_links(dict(state_header), links)
        if op.result:
            headers["Content-Type"] = op.result_content_type or "application/json"
        return web.Response(status=200, body=op.result or None, headers=headers)
    if op.state.terminal:
        return web.Response(
            status=424,
            body=json.dumps(op.failure or {"message": op.state.value}).encode(),
            headers=_with_links({**state_header, "Content-Type": "application/json"}, links),
        )
    return running_response(op, links)


def running_response(op: Operation, links: list[str] | None = None) -> web.Response:
    return web.Response(
        status=201,
        body=running_body(op),
        content_type="application/json",
        headers=_with_links(
            {"Nexus-Operation-State": "running", "Nexus-Operation-Token": op.id}, links
        ),
    )


def request_token(request: web.Request) -> str | None:
    """The operation token: ``Nexus-Operation-Token`` header or ``?token=`` (or the path)."""
    return (
        request.match_info.get("token")
        or request.headers.get("Nexus-Operation-Token")
        or request.query.get("token")
    )


def _owned(p: Principal, op: Operation) -> bool:
    return p.is_admin or op.caller == p.sub


async def load_for_caller(request: web.Request, token: str | None) -> Operation:
    if not token:
        raise HandlerError(HandlerErrorType.BAD_REQUEST, "operation token is required")
    p = await principal(request)
    p.require("ops:read")
    op = await services(request).engine.store.get_operation(token)
    svc, name = request.match_info["service"], request.match_info["operation"]
    if op is None or op.service != svc or op.operation != name or not _owned(p, op):
        raise HandlerError(HandlerErrorType.NOT_FOUND, "no such operation")
    return op


async def start(request: InboundRequest) -> web.Response:
    svc = services(request)
    t0 = time.perf_counter()
    p = await principal(request)
    p.require(f"ops:start:{request.match_info['service']}/{request.match_info['operation']}")
    # The body first (bounded by SWARMGATE_BODY_TIMEOUT_S), then the admission slot: slow
    # uploads must not take the slots every other caller's starts need (issue 13, item 10).
    body = await read_body(request, svc.body_timeout_s)
    with svc.engine.admit():
        resp = await _start(request, p, body)
    svc.engine.metrics.start_seconds.observe(time.perf_counter() - t0)
    return resp


async def _start(request: InboundRequest, p: Principal, body: bytes) -> web.Response:
    svc = services(request)
    service, operation = request.match_info["service"], request.match_info["operation"]
    callback = request.query.get("callback") or None
    if callback:
        await check_outbound_url(request, callback, "callback URL")
    op_timeout = parse_duration(request.headers.get("Operation-Timeout"), "Operation-Timeout")
    req_timeout = parse_duration(request.headers.get("Request-Timeout"), "Request-Timeout")
    links = request_links(request.headers)
    content_type = request.headers.get("Content-Type") if body else None
    req = StartRequest(
        service=service,
        operation=operation,
        caller=p.sub,
        input=body,
        content_type=content_type,
        request_id=request.headers.get("Nexus-Request-Id") or None,
        idempotency_key=_idempotency_key(request.headers.get("Idempotency-Key")),
        callback_url=callback,
        callback_headers=callback_headers(request.headers, callback),
        links=links,
        handler_headers=handler_headers(request.headers),
        timeout_s=op_timeout,
        traceparent=request.headers.get("traceparent"),
    )
    result = await svc.engine.start(req)
    if result.replay is not None:
        rec = result.replay
        if rec.fingerprint != fingerprint(req):
            raise HandlerError(
                HandlerErrorType.UNPROCESSABLE,
                "this idempotency key / request id was used with a different request",
            )
        if rec.response_status is not None:
            headers = dict(rec.response_headers)
            headers["Idempotent-Replayed"] = "true"
            return web.Response(
                status=rec.response_status, body=rec.response_body or b"", headers=headers
            )
        if rec.key.startswith("key:") and svc.engine.is_answering(rec.scope, rec.key):
            raise HandlerError(
                HandlerErrorType.CONFLICT,
                "the original request with this Idempotency-Key is still in progress",
            )
        # No saved copy: the first answer is not known to have been sent (a 201 for a request
        # id is never saved; a crash or a store error may come between the start's commit and
        # the save). The operation is committed, so the answer is regenerated from it: a
        # dedupe never depends on a write made after the start's commit. An operation closed
        # with no callback was answered synchronously (or its answer was lost): answer it
        # again, synchronously; otherwise it is the same 201 (its callback is on its way).
        closed = await svc.engine.replay_answer_state(result.operation)
        if closed is not None:
            resp = operation_response(closed)
        else:
            resp = running_response(result.operation)
        resp.headers["Idempotent-Replayed"] = "true"
        return resp
    wait = svc.engine.config.sync_wait_s
    if req_timeout is not None:
        wait = min(wait, max(0.0, req_timeout - 0.1))
    op_id = result.operation.id
    with svc.engine.answering(result.idempotency_keys):
        op = await svc.engine.wait_inline(op_id, wait, answers_sync=True) or result.operation
        claimed = svc.engine.sync_links(op_id)  # a close claimed for this answer: no callback
        accepted = svc.engine.accepted_links(op_id)
        if op.state.terminal and claimed is None and op.callback_url:
            resp = running_response(op, accepted)  # its callback is on its way: answer async
        else:
            resp = operation_response(op, claimed if op.state.terminal else accepted)
        for scope, key in result.idempotency_keys:
            if resp.status == 201 and key.startswith("rid:"):
                continue  # replayed as running_response(): one write fewer on the hot path
            await svc.engine.store.save_response(
                scope,
                key,
                resp.status,
                resp.body if isinstance(resp.body, bytes) else b"",
                {k: v for k, v in resp.headers.items() if k.lower() != "content-length"},
            )
    return resp


def _idempotency_key(value: str | None) -> str | None:
    if value is None:
        return None
    key = value.strip()
    if len(key) >= 2 and key[0] == key[-1] == '"':
        key = key[1:-1]
    if not key or len(key) > 255:
        raise HandlerError(HandlerErrorType.BAD_REQUEST, "Idempotency-Key must be 1-255 characters")
    return key


async def info(request: web.Request) -> web.Response:
    op = await load_for_caller(request, request_token(request))
    return web.json_response(operation_info(op))


async def result(request: web.Request) -> web.Response:
    op = await load_for_caller(request, request_token(request))
    wait = parse_duration(request.query.get("wait"), "wait")
    if wait and not op.state.terminal:
        op = await services(request).engine.wait_terminal(op.id, min(wait, MAX_WAIT_S)) or op
    if op.state.terminal:
        return operation_response(op)
    body = {"message": "operation is still running", **operation_info(op)}
    return web.json_response(
        body, status=408 if wait else 412, headers={"Nexus-Operation-State": "running"}
    )


async def cancel(request: web.Request) -> web.Response:
    op = await load_for_caller(request, request_token(request))
    p = await principal(request)
    await services(request).engine.cancel(op.id, by=p.sub)
    return web.Response(status=202)


def add_routes(app: web.Application) -> None:
    base = PREFIX + "/{service}/{operation}"
    app.router.add_post(base, start)
    app.router.add_get(base, info)
    app.router.add_get(base + "/result", result)
    app.router.add_post(base + "/cancel", cancel)
    app.router.add_post(base + "/{token}/cancel", cancel)
