"""Strict Nexus peers for the conformance tests, written from the Nexus SPEC.md and the wire
rules of the Nexus Go SDK, independently of the gateway's own parsing code:

- ``check_answer``: what a strict Nexus *client* checks on a handler's answer;
- ``StrictHandler``: a Nexus *handler* on loopback (the gateway calls it through the
  ``nexus`` adapter) that refuses requests a real handler would choke on;
- ``StrictReceiver``: a callback receiver that checks the gateway's completion callbacks.

Strict means: ``Content-Type`` with an empty body is refused ("unexpected end of JSON
input"), every ``Nexus-Link`` must be ``<absolute-url>`` with a ``type`` parameter, durations
are number + ms/s/m, ``Nexus-Operation-Start-Time`` is an HTTP-date and
``Nexus-Operation-Close-Time`` RFC 3339 with milliseconds.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

# The spec's predefined handler errors, plus the answers of a start/cancel/result.
HANDLER_ERROR_STATUSES = {400, 401, 403, 404, 408, 409, 429, 500, 501, 503, 520}
NEXUS_ANSWER_STATUSES = {200, 201, 202, 204, 412, 424} | HANDLER_ERROR_STATUSES
_LINK = re.compile(r'^<([a-zA-Z][a-zA-Z0-9+.-]*:[^<>\s"]+)>((?:\s*;\s*[a-zA-Z0-9_-]+="[^"]*")*)$')
_PARAM = re.compile(r'([a-zA-Z0-9_-]+)="([^"]*)"')
_DURATION = re.compile(r"^\d+(\.\d+)?(ms|s|m)$")
_RFC3339_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}(Z|[+-]\d\d:\d\d)$")


WORKFLOW_LINK = (
    '<temporal:///namespaces/ns/workflows/wf-1>; type="temporal.api.common.v1.Link.WorkflowEvent"'
)


WORKFLOW_LINK = (
    '<temporal:///namespaces/ns/workflows/wf-1>; type="temporal.api.common.v1.Link.WorkflowEvent"'
)


class Violation(AssertionError):
    """The peer broke a Nexus wire rule."""


def strict_links(values: list[str]) -> list[dict[str, str]]:
    """Parse ``Nexus-Link`` header values the strict way (several headers, or comma-separated
    links in one); raises ``Violation``."""
    out = []
    for value in values:
        for part in re.split(r",\s*(?=<)", value.strip()):
            m = _LINK.match(part.strip())
            if not m:
                raise Violation(f"malformed Nexus-Link {part!r}")
            params = dict(_PARAM.findall(m.group(2)))
            if not params.get("type"):
                raise Violation(f"Nexus-Link without type: {part!r}")
            out.append({"url": m.group(1), **params})
    return out


def check_content(headers: Mapping[str, str], body: bytes, what: str) -> None:
    """No content is no Content-Type and an empty body; JSON content must parse."""
    ctype = headers.get("Content-Type")
    if ctype is not None and not body:
        raise Violation(f"{what}: Content-Type {ctype!r} with an empty body")
    if ctype and "json" in ctype and body:
        json.loads(body)


def check_answer(status: int, headers: Mapping[str, str], body: bytes) -> None:
    """What a strict Nexus client checks on a handler's answer."""
    if status not in NEXUS_ANSWER_STATUSES:
        raise Violation(f"status {status} is not a Nexus answer")
    check_content(headers, body, f"answer {status}")
    links = headers.getall("Nexus-Link", []) if hasattr(headers, "getall") else []
    strict_links(list(links))
    if status >= 400:
        failure = json.loads(body)
        if not isinstance(failure.get("message"), str):
            raise Violation(f"answer {status}: Failure without a message")
        if not isinstance(failure.get("metadata", {}), dict):
            raise Violation(f"answer {status}: Failure metadata is not an object")
    if status == 201:
        info = json.loads(body)
        if not info.get("token") or info.get("state") != "running":
            raise Violation(f"201 without token/state: {info}")


async def strict_request(
    http: aiohttp.ClientSession, method: str, url: str, **kw: Any
) -> tuple[int, Any, bytes]:
    """Send a request as a Nexus client and check the answer strictly."""
    async with http.request(method, url, **kw) as r:
        body = await r.read()
        check_answer(r.status, r.headers, body)
        return r.status, r.headers, body


def check_duration(headers: Mapping[str, str], name: str) -> None:
    value = headers.get(name)
    if value is not None and not _DURATION.match(value):
        raise Violation(f"{name}: {value!r} is not number + ms/s/m")


@dataclass
class HandlerOp:
    """One operation the strict handler received."""

    token: str
    operation: str
    headers: dict[str, str]
    body: bytes
    callback: str
    links: list[dict[str, str]]
    cancels: int = 0


@dataclass
class StrictHandler:
    """A Nexus handler on loopback. Operations (by name): ``sync`` (200 with the input echoed
    as ``{"echo": ...}``), ``sync-null`` (200, no content), ``async`` (201; completed by
    :meth:`complete`), ``busy`` (503 with ``Nexus-Request-Retryable: false``).
    Cancel answers 202. Every request is checked strictly; a violation answers 400 and is
    recorded in ``violations`` (the tests assert there are none)."""

    ops: dict[str, HandlerOp] = field(default_factory=dict)
    by_request_id: dict[str, str] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    canceled: asyncio.Event = field(default_factory=asyncio.Event)
    answer_links: list[str] = field(default_factory=lambda: [WORKFLOW_LINK])

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/svc/{operation}/cancel", self.cancel)
        app.router.add_post("/svc/{operation}", self.start)
        return app

    def _refuse(self, message: str) -> web.Response:
        self.violations.append(message)
        return web.json_response(
            {
                "message": message,
                "metadata": {"type": "nexus.HandlerError"},
                "details": {"type": "BAD_REQUEST"},
            },
            status=400,
        )

    async def start(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append({"path": request.path, "headers": dict(request.headers), "body": body})
        try:
            check_content(request.headers, body, "start")
            check_duration(request.headers, "Request-Timeout")
            check_duration(request.headers, "Operation-Timeout")
            links = strict_links(request.headers.getall("Nexus-Link", []))
        except (Violation, ValueError) as exc:
            return self._refuse(str(exc))
        rid = request.headers.get("Nexus-Request-Id")
        if not rid:
            return self._refuse("start without Nexus-Request-Id")
        operation = request.match_info["operation"]
        if operation == "busy":
            return web.json_response(
                {"message": "overloaded, do not retry", "metadata": {}},
                status=503,
                headers={"Nexus-Request-Retryable": "false"},
            )
        if operation == "sync":
            payload = json.loads(body) if body else None
            return web.json_response(
                {"echo": payload},
                headers={"Nexus-Operation-State": "succeeded", "Nexus-Link": self.answer_links[0]},
            )
        if operation == "sync-null":
            return web.Response(status=200)
        callback = request.query.get("callback", "")
        if not callback:
            return self._refuse("async start without a callback URL")
        token = self.by_request_id.get(rid)
        if token is None:  # dedupe on the request id, as handlers must
            token = self.by_request_id[rid] = f"h-{uuid.uuid4().hex[:8]}"
            self.ops[token] = HandlerOp(
                token=token,
                operation=operation,
                headers=dict(request.headers),
                body=body,
                callback=callback,
                links=links,
            )
        self.started.set()
        return web.json_response(
            {"token": token, "state": "running"},
            status=201,
            headers=[("Nexus-Link", link) for link in self.answer_links],
        )

    async def cancel(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            check_content(request.headers, body, "cancel")
        except Violation as exc:
            return self._refuse(str(exc))
        op = self.ops.get(request.headers.get("Nexus-Operation-Token", ""))
        if op is None:
            return web.json_response(
                {"message": "unknown token", "metadata": {}, "details": {"type": "NOT_FOUND"}},
                status=404,
            )
        op.cancels += 1
        self.canceled.set()
        return web.Response(status=202)  # a request: the operation completes later

    async def complete(
        self,
        token: str,
        state: str,
        result: bytes | None = None,
        *,
        links: list[str] | None = None,
    ) -> int:
        """Deliver the operation's completion as a Nexus handler does: POST to the callback
        URL with the callback headers (prefix stripped) and the Nexus completion headers."""
        op = self.ops[token]
        headers = {
            name[len("Nexus-Callback-") :]: value
            for name, value in op.headers.items()
            if name.lower().startswith("nexus-callback-")
        }
        headers["Nexus-Operation-State"] = state
        headers["Nexus-Operation-Token"] = token
        headers["Nexus-Operation-Start-Time"] = email.utils.formatdate(usegmt=True)
        body = b""
        if state == "succeeded":
            body = result or b""
            if body:
                headers["Content-Type"] = "application/json"
        else:
            body = json.dumps(
                {
                    "message": f"operation {state}",
                    "metadata": {"type": "nexus.OperationError"},
                    "details": {"state": state},
                }
            ).encode()
            headers["Content-Type"] = "application/json"
        if links:
            headers["Nexus-Link"] = ", ".join(links)
        async with (
            aiohttp.ClientSession() as http,
            http.post(op.callback, data=body, headers=headers) as r,
        ):
            return r.status


@dataclass
class StrictReceiver:
    """A caller's callback receiver that checks each callback strictly. ``answer`` is the
    (status, headers, body) it replies with (default 200, empty)."""

    answer: tuple[int, dict[str, str], bytes] = (200, {}, b"")
    callbacks: list[dict[str, Any]] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    got: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        h = request.headers
        try:
            check_content(h, body, "callback")
            state = h.get("Nexus-Operation-State")
            if state not in ("succeeded", "failed", "canceled"):
                raise Violation(f"callback state {state!r}")
            start = h.get("Nexus-Operation-Start-Time", "")
            if email.utils.parsedate_to_datetime(start) is None:
                raise Violation(f"Start-Time {start!r} is not an HTTP-date")
            close = h.get("Nexus-Operation-Close-Time", "")
            if not _RFC3339_MS.match(close):
                raise Violation(f"Close-Time {close!r} is not RFC 3339 with ms")
            links = strict_links(h.getall("Nexus-Link", []))
            if state != "succeeded":
                json.loads(body)
        except (Violation, ValueError, TypeError) as exc:
            self.violations.append(str(exc))
            return web.Response(status=400)
        self.callbacks.append(
            {"headers": dict(h), "body": body, "links": links, "path": request.path}
        )
        self.got.set()
        status, headers, out = self.answer
        return web.Response(status=status, headers=headers, body=out or None)

    async def wait(self, timeout: float = 10.0) -> None:
        await asyncio.wait_for(self.got.wait(), timeout)
