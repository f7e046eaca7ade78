"""Caller client for a swarmgate gateway (Nexus-style HTTP).

Every start carries a ``Nexus-Request-Id``; transient failures (connection errors, 408, 429,
5xx) are retried with the same id, so a caller that crashed or lost a reply can simply call
again and gets the same operation back, never a second one.

    async with Client("http://127.0.0.1:8080", token=jwt) as gw:
        result = await gw.call("flights", "search", {"to": "LIS"}, request_id="trip-42/flights")
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import quote

import aiohttp
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential_jitter,
)

TRANSIENT = {408, 429, 500, 502, 503, 504, 520}


class GatewayError(Exception):
    """The gateway refused the request (a HandlerError or problem+json body)."""

    def __init__(self, status: int, body: Any) -> None:
        message = body.get("message") or body.get("detail") if isinstance(body, dict) else body
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.body = body


class TransientError(GatewayError):
    """A retryable failure (the client retries these itself)."""


class OperationFailedError(Exception):
    """The operation ended failed or canceled; ``failure`` is the Nexus Failure body."""

    def __init__(self, state: str, failure: dict[str, Any]) -> None:
        super().__init__(f"operation {state}: {failure.get('message')}")
        self.state = state
        self.failure = failure


@dataclass(frozen=True, kw_only=True)
class Started:
    """What a start answered: the operation token, its state, and the result if it is done."""

    token: str
    state: str
    result: Any = None


class Client:
    """A caller of a swarmgate gateway; use it as an async context manager.

    Args:
        base_url: the gateway's URL (``http://host:port``).
        token: a JWT sent as ``Authorization: Bearer``.
        retry_for_s: how long transient failures are retried (with the same request id).
        session: an aiohttp session to reuse (the client then does not close it).
    """

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        retry_for_s: float = 60.0,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.retry_for_s = retry_for_s
        self._session = session
        self._own_session = session is None

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session, if the client opened it."""
        if self._own_session and self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        """The aiohttp session requests go through (opened on first use)."""
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = dict(extra or {})
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def _url(self, service: str, operation: str, suffix: str = "") -> str:
        return (
            f"{self.base_url}/nexus/{quote(service, safe='')}/{quote(operation, safe='')}{suffix}"
        )

    async def _send(self, method: str, url: str, **kw: Any) -> tuple[int, dict[str, str], bytes]:
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type((aiohttp.ClientError, TimeoutError, TransientError)),
            wait=wait_exponential_jitter(multiplier=0.1, max=2.0, jitter=0.1),
            stop=stop_after_delay(self.retry_for_s),
            reraise=True,
        ):
            with attempt:
                async with self.session.request(method, url, **kw) as resp:
                    body = await resp.read()
                    if resp.status in TRANSIENT and resp.status != 408:
                        raise TransientError(resp.status, _decode(body))
                    return resp.status, dict(resp.headers), body
        raise AssertionError("unreachable")

    async def start(
        self,
        service: str,
        operation: str,
        payload: Any,
        *,
        request_id: str | None = None,
        callback: str | None = None,
        callback_events: Sequence[str] = (),
        timeout: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Started:
        """Start an operation; a sync answer carries the result, else poll with ``result``.

        ``request_id`` (``Nexus-Request-Id``, a fresh one if not given) makes the start
        idempotent: starting again with it returns the same operation. ``callback`` is the URL
        the gateway calls, signed, once the operation closes; ``callback_events`` (e.g.
        ``["input.requested"]``) asks for callbacks before that too (``Swarmgate-Callback-Events``);
        ``timeout`` is a Nexus duration.
        """
        extra = {"Nexus-Request-Id": request_id or str(uuid.uuid4())}
        extra["Content-Type"] = "application/json"
        if callback_events:
            extra["Swarmgate-Callback-Events"] = ",".join(callback_events)
        if timeout:
            extra["Operation-Timeout"] = timeout
        extra.update(headers or {})
        params = {"callback": callback} if callback else None
        status, resp_headers, body = await self._send(
            "POST",
            self._url(service, operation),
            data=json.dumps(payload).encode(),
            headers=self._headers(extra),
            params=params,
        )
        if status == 200:
            token = resp_headers.get("Nexus-Operation-Token", "")
            return Started(token=token, state="succeeded", result=_decode(body))
        if status == 201:
            data = _decode(body)
            return Started(token=str(data["token"]), state="running")
        if status == 424:
            failure = _decode(body)
            raise OperationFailedError(resp_headers.get("Nexus-Operation-State", "failed"), failure)
        raise GatewayError(status, _decode(body))

    async def result(
        self, service: str, operation: str, token: str, *, wait_s: float = 30.0
    ) -> Any:
        """Long-poll until the operation is terminal; returns the result or raises."""
        while True:
            status, headers, body = await self._send(
                "GET",
                self._url(service, operation, "/result"),
                params={"token": token, "wait": f"{int(wait_s * 1000)}ms"},
                headers=self._headers(),
            )
            if status == 200:
                return _decode(body)
            if status == 424:
                raise OperationFailedError(
                    headers.get("Nexus-Operation-State", "failed"), _decode(body)
                )
            if status in (408, 412):
                continue
            raise GatewayError(status, _decode(body))

    async def call(
        self, service: str, operation: str, payload: Any, *, request_id: str | None = None
    ) -> Any:
        """Start the operation and wait for its result (raises ``OperationFailedError``)."""
        started = await self.start(service, operation, payload, request_id=request_id)
        if started.state == "succeeded":
            return started.result
        return await self.result(service, operation, started.token)

    async def cancel(self, service: str, operation: str, token: str) -> None:
        """Request cancellation of the operation (Nexus ``POST .../cancel``)."""
        status, _h, body = await self._send(
            "POST",
            self._url(service, operation, "/cancel"),
            headers=self._headers({"Nexus-Operation-Token": token}),
        )
        if status != 202:
            raise GatewayError(status, _decode(body))

    async def history(self, token: str) -> list[dict[str, Any]]:
        """The operation's history events, oldest first."""
        status, _h, body = await self._send(
            "GET", f"{self.base_url}/api/operations/{token}/events", headers=self._headers()
        )
        if status != 200:
            raise GatewayError(status, _decode(body))
        return list(_decode(body)["events"])

    async def operation(self, token: str) -> dict[str, Any]:
        """The operation as ``GET /api/operations/{id}`` shows it."""
        status, _h, body = await self._send(
            "GET", f"{self.base_url}/api/operations/{token}", headers=self._headers()
        )
        if status != 200:
            raise GatewayError(status, _decode(body))
        return dict(_decode(body))

    async def provide_input(self, token: str, value: Any) -> dict[str, Any]:
        """Answer the question an operation waits on (``POST /api/operations/{id}/input``).

        ``value`` (JSON) must match the asked schema (400 otherwise); 409 when the operation
        is not waiting for input. The operation is then dispatched again with the answer.
        """
        status, _h, body = await self._send(
            "POST",
            f"{self.base_url}/api/operations/{quote(token, safe='')}/input",
            json=value,
            headers=self._headers(),
        )
        if status != 202:
            raise GatewayError(status, _decode(body))
        return dict(_decode(body))

    async def register(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Register (or replace) an agent from its JSON spec; returns the stored agent."""
        status, _h, body = await self._send(
            "POST", f"{self.base_url}/api/agents", json=spec, headers=self._headers()
        )
        if status not in (200, 201):
            raise GatewayError(status, _decode(body))
        return dict(_decode(body))

    # -- gateway API (used by the ``swarmgate`` CLI) --------------------------------------------

    async def _api(
        self,
        method: str,
        path: str,
        *,
        ok: tuple[int, ...] = (200,),
        params: dict[str, str] | None = None,
    ) -> Any:
        """One ``/api`` request; a status outside ``ok`` raises GatewayError (problem+json)."""
        status, _h, body = await self._send(
            method, f"{self.base_url}{path}", params=params, headers=self._headers()
        )
        if status not in ok:
            raise GatewayError(status, _decode(body))
        return _decode(body)

    async def agents(self) -> list[dict[str, Any]]:
        """Every registered agent (``GET /api/agents``)."""
        return list((await self._api("GET", "/api/agents"))["agents"])

    async def agent(self, name: str) -> dict[str, Any]:
        """One registered agent (``GET /api/agents/{name}``)."""
        return dict(await self._api("GET", f"/api/agents/{quote(name, safe='')}"))

    async def operations(
        self,
        *,
        state: str | None = None,
        service: str | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Operations visible to the caller, newest first (``GET /api/operations``)."""
        params: dict[str, str] = {}
        if state:
            params["state"] = state
        if service:
            params["service"] = service
        if limit is not None:
            params["limit"] = str(limit)
        body = await self._api("GET", "/api/operations", params=params)
        return list(body["operations"])

    async def events(self, token: str, *, after: int = 0) -> list[dict[str, Any]]:
        """History events with an id above ``after`` (``GET /api/operations/{id}/events``)."""
        body = await self._api(
            "GET", f"/api/operations/{quote(token, safe='')}/events", params={"after": str(after)}
        )
        return list(body["events"])

    async def callbacks(self, token: str) -> list[dict[str, Any]]:
        """Callback deliveries of an operation (``GET /api/operations/{id}/callbacks``)."""
        body = await self._api("GET", f"/api/operations/{quote(token, safe='')}/callbacks")
        return list(body["callbacks"])

    async def cancel_operation(self, token: str) -> None:
        """Request cancellation by operation id (``POST /api/operations/{id}/cancel``)."""
        await self._api("POST", f"/api/operations/{quote(token, safe='')}/cancel", ok=(202,))

    async def redrive(self, token: str) -> None:
        """Re-run a failed or canceled operation (admin; recorded as ``operation.redriven``)."""
        await self._api("POST", f"/api/operations/{quote(token, safe='')}/redrive", ok=(202,))

    async def redrive_callback(self, token: str, delivery_id: str) -> None:
        """Re-send an expired or disabled callback (admin; recorded as ``callback.redriven``)."""
        path = (
            f"/api/operations/{quote(token, safe='')}"
            f"/callbacks/{quote(delivery_id, safe='')}/redrive"
        )
        await self._api("POST", path, ok=(202,))

    async def follow(
        self, token: str, *, after: int = 0, poll_s: float = 0.5, stream: bool = True
    ) -> AsyncIterator[dict[str, Any]]:
        """Yield history events as they happen.

        The iteration ends once the operation is closed and none of its callback deliveries is
        pending any more.

        Uses the Server-Sent Events stream ``GET /api/operations/{id}/stream`` when the gateway
        has it (and ``stream`` is true), and otherwise polls ``/events?after=N``. Events already
        seen (id <= ``after``) are skipped either way.
        """
        await self.operation(token)  # raises GatewayError(404) for an unknown operation
        last = after
        if stream:
            async for event in self._stream(token, last):
                if int(event.get("id", 0)) <= last:
                    continue
                last = int(event["id"])
                yield event
        while True:  # no stream, or it ended: poll until closed (drains what is left)
            op = await self.operation(token)
            settled = op["state"] in _TERMINAL_STATES and not any(
                c.get("state") == "pending" for c in await self.callbacks(token)
            )
            for event in await self.events(token, after=last):
                last = max(last, int(event["id"]))
                yield event
            if settled:
                return
            await asyncio.sleep(poll_s)

    async def _stream(self, token: str, after: int) -> AsyncIterator[dict[str, Any]]:
        """Events from the SSE stream; yields nothing if the gateway has no stream endpoint."""
        url = f"{self.base_url}/api/operations/{quote(token, safe='')}/stream"
        headers = self._headers({"Accept": "text/event-stream"})
        if after:
            headers["Last-Event-ID"] = str(after)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=None)
        async with self.session.get(
            url, params={"after": str(after)}, headers=headers, timeout=timeout
        ) as resp:
            ctype = resp.headers.get("Content-Type", "")
            if resp.status in (404, 405, 501) or not ctype.startswith("text/event-stream"):
                return  # no stream endpoint (yet): the caller polls instead
            if resp.status != 200:
                raise GatewayError(resp.status, _decode(await resp.read()))
            fields: dict[str, str] = {}
            data: list[str] = []
            async for raw in resp.content:
                line = raw.decode(errors="replace").rstrip("\r\n")
                if line.startswith(":"):
                    continue
                if line:
                    name, _, value = line.partition(":")
                    value = value[1:] if value.startswith(" ") else value
                    if name == "data":
                        data.append(value)
                    else:
                        fields[name] = value
                    continue
                if data:
                    event = _sse_event(fields, "\n".join(data))
                    if event is not None:
                        yield event
                fields, data = {}, []


_TERMINAL_STATES = frozenset({"succeeded", "failed", "canceled"})


def _sse_event(fields: dict[str, str], data: str) -> dict[str, Any] | None:
    """An SSE message as a history event (``{"id","at","kind","data"}``), or None."""
    try:
        parsed: Any = json.loads(data)
    except ValueError:
        parsed = data
    if isinstance(parsed, dict) and "kind" in parsed and "id" in parsed:
        return parsed
    if not fields.get("id", "").isdigit():
        return None  # not a history event (a heartbeat, a state summary, ...)
    kind = fields.get("event", "message")
    return {"id": int(fields["id"]), "at": None, "kind": kind, "data": parsed}


def _decode(body: bytes) -> Any:
    if not body:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return body.decode(errors="replace")
