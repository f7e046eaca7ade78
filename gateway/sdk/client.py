"""Caller client for a swarmgate gateway (Nexus-style HTTP).

Every start carries a ``Nexus-Request-Id``; transient failures (connection errors, 408, 429,
5xx) are retried with the same id, so a caller that crashed or lost a reply can simply call
again and gets the same operation back, never a second one.

    async with Client("http://127.0.0.1:8080", token=jwt) as gw:
        result = await gw.call("flights", "search", {"to": "LIS"}, request_id="trip-42/flights")
"""

from __future__ import annotations

import json
import uuid
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
    token: str
    state: str
    result: Any = None


class Client:
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
        if self._own_session and self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
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
        timeout: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Started:
        extra = {"Nexus-Request-Id": request_id or str(uuid.uuid4())}
        extra["Content-Type"] = "application/json"
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
        started = await self.start(service, operation, payload, request_id=request_id)
        if started.state == "succeeded":
            return started.result
        return await self.result(service, operation, started.token)

    async def cancel(self, service: str, operation: str, token: str) -> None:
        status, _h, body = await self._send(
            "POST",
            self._url(service, operation, "/cancel"),
            headers=self._headers({"Nexus-Operation-Token": token}),
        )
        if status != 202:
            raise GatewayError(status, _decode(body))

    async def history(self, token: str) -> list[dict[str, Any]]:
        status, _h, body = await self._send(
            "GET", f"{self.base_url}/api/operations/{token}/events", headers=self._headers()
        )
        if status != 200:
            raise GatewayError(status, _decode(body))
        return list(_decode(body)["events"])

    async def operation(self, token: str) -> dict[str, Any]:
        status, _h, body = await self._send(
            "GET", f"{self.base_url}/api/operations/{token}", headers=self._headers()
        )
        if status != 200:
            raise GatewayError(status, _decode(body))
        return dict(_decode(body))

    async def register(self, spec: dict[str, Any]) -> dict[str, Any]:
        status, _h, body = await self._send(
            "POST", f"{self.base_url}/api/agents", json=spec, headers=self._headers()
        )
        if status not in (200, 201):
            raise GatewayError(status, _decode(body))
        return dict(_decode(body))


def _decode(body: bytes) -> Any:
    if not body:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return body.decode(errors="replace")
