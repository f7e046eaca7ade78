"""The one error middleware: Nexus Failure bodies on the Nexus surface, RFC 9457 elsewhere."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from gateway.domain.errors import (
    DataRejected,
    HandlerError,
    HandlerErrorType,
    StoreError,
    StoreFull,
    StoreUnavailable,
)
from gateway.http.context import InboundRequest

log = logging.getLogger("swarmgate.http")

PROBLEM_BASE = "https://swarmgate.dev/problems/"
NEXUS_PREFIX = "/nexus/"

# HTTP status -> (problem type slug, title). Stable: documented in spec/openapi.yaml.
PROBLEM_TYPES: dict[int, tuple[str, str]] = {
    400: ("bad-request", "Bad request"),
    401: ("unauthenticated", "Authentication required"),
    403: ("forbidden", "Not allowed"),
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    408: ("request-timeout", "Request timeout"),
    409: ("conflict", "Conflict"),
    413: ("payload-too-large", "Payload too large"),
    415: ("unsupported-media-type", "Unsupported media type"),
    422: ("unprocessable", "Unprocessable request"),
    429: ("rate-limited", "Too many requests"),
    500: ("internal", "Internal error"),
    501: ("not-implemented", "Not implemented"),
    503: ("unavailable", "Service unavailable"),
    520: ("upstream-timeout", "Upstream timeout"),
}


def problem(
    status: int,
    detail: str,
    *,
    instance: str | None = None,
    errors: Any = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    slug, title = PROBLEM_TYPES.get(status, ("error", "Error"))
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + slug,
        "title": title,
        "status": status,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    if errors is not None:
        body["errors"] = errors
    return web.Response(
        status=status,
        body=json.dumps(body).encode(),
        content_type="application/problem+json",
        headers=headers,
    )


# The Nexus spec's predefined handler errors: the only statuses an error on /nexus answers.
NEXUS_STATUSES = frozenset({400, 401, 403, 404, 408, 409, 429, 500, 501, 503, 520})


def nexus_type(status: int) -> HandlerErrorType:
    """The handler error type an HTTP status becomes on /nexus: a status outside the
    spec's table maps into it (405 -> NOT_IMPLEMENTED; 413, 415, 422 and other 4xx ->
    BAD_REQUEST; other 5xx -> INTERNAL)."""
    if status == 405:
        return HandlerErrorType.NOT_IMPLEMENTED
    if status in NEXUS_STATUSES:
        return HandlerErrorType.from_status(status)
    return HandlerErrorType.BAD_REQUEST if 400 <= status < 500 else HandlerErrorType.INTERNAL


def nexus_failure(err: HandlerError) -> web.Response:
    if err.status not in NEXUS_STATUSES:
        mapped = HandlerError(
            nexus_type(err.status),
            err.message,
            retryable_override=err.retryable_override,
            details=err.details,
            headers=err.headers,
        )
        err = mapped
    headers = dict(err.headers)
    if err.retryable_override is not None:  # the spec's header form of the override
        headers["Nexus-Request-Retryable"] = "true" if err.retryable_override else "false"
    return web.Response(
        status=err.status,
        body=json.dumps(err.to_failure()).encode(),
        content_type="application/json",
        headers=headers or None,
    )


def error_response(request: InboundRequest, err: HandlerError) -> web.Response:
    if request.path.startswith(NEXUS_PREFIX):
        return nexus_failure(err)
    return problem(
        err.status,
        err.message,
        instance=request.path,
        errors=err.details,
        headers=err.headers or None,
    )


Handler = Callable[[Any], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: InboundRequest, handler: Handler) -> web.StreamResponse:
    """``handler(request)``, with every error it raises answered as the surface answers it:
    the one error mapping of the aiohttp app and of the hot path (which runs the app's
    middlewares around the hot routes)."""
    try:
        return await handler(request)
    except HandlerError as err:
        return error_response(request, err)
    except DataRejected:
        # a value of this request the database refused (too long, out of range): the same
        # request can never succeed, so it is the caller's to change
        return error_response(
            request,
            HandlerError(
                HandlerErrorType.BAD_REQUEST,
                "a value in the request is too long or out of range for the gateway to store",
            ),
        )
    except StoreFull:
        # logged once by the store when it became full (no line, no traceback per request)
        return error_response(
            request,
            HandlerError(
                HandlerErrorType.UNAVAILABLE,
                "the database's disk is full; retry later",
                headers={"Retry-After": "5"},
            ),
        )
    except StoreUnavailable as exc:
        log.warning("store unavailable on %s %s: %s", request.method, request.path, exc)
        return error_response(
            request,
            HandlerError(
                HandlerErrorType.UNAVAILABLE,
                "the database is unavailable; retry later",
                headers={"Retry-After": "1"},
            ),
        )
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if request.path.startswith(NEXUS_PREFIX):
            return nexus_failure(
                HandlerError(nexus_type(exc.status), exc.reason or exc.text or "error")
            )
        return problem(exc.status, exc.reason, instance=request.path)
    except StoreError as exc:
        # One line, no traceback: the chained driver exception's text may carry a statement's
        # parameters (a generated secret, an endpoint password); the store's message does not.
        log.error("store error on %s %s: %s", request.method, request.path, exc)
        return error_response(request, HandlerError(HandlerErrorType.INTERNAL, "internal error"))
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(request, HandlerError(HandlerErrorType.INTERNAL, "internal error"))
