"""Outbound HTTP for adapters and callback delivery: pooled aiohttp session, screened
destinations (SSRF rules), never follows redirects, bounded time per request."""

from __future__ import annotations

import asyncio

import aiohttp

from adapters.base import HttpResponse, TransportError
from gateway.security.netguard import BlockedDestination, OutboundPolicy, check_url, make_connector

_NO_AIOHTTP_TIMEOUT = aiohttp.ClientTimeout(total=None)


class AiohttpTransport:
    def __init__(self, policy: OutboundPolicy, *, limit: int = 512) -> None:
        self.policy = policy
        self._limit = limit
        self._session: aiohttp.ClientSession | None = None
        self._checked: set[str] = set()

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=make_connector(self.policy, limit=self._limit, limit_per_host=0),
                auto_decompress=True,
                cookie_jar=aiohttp.DummyCookieJar(),  # agents and callers get no shared cookies
            )
        return self._session

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str],
        body: bytes | None,
        timeout_s: float,
    ) -> HttpResponse:
        origin = url.split("?", 1)[0].split("/", 3)[:3]  # scheme://host:port
        key = "/".join(origin)
        if key not in self._checked:
            try:
                check_url(url, self.policy)
            except (BlockedDestination, ValueError) as exc:
                raise TransportError(f"destination refused: {exc}", retryable=False) from exc
            if len(self._checked) < 10_000:
                self._checked.add(key)  # literal-address checks depend on the origin only
        try:
            # One asyncio timer bounds the whole exchange; aiohttp's own (a handle and a timer
            # context per request) is switched off: it showed in the profile of every call.
            async with (
                asyncio.timeout(timeout_s),
                self._get_session().request(
                    method,
                    url,
                    headers=headers,
                    data=body,
                    allow_redirects=False,
                    timeout=_NO_AIOHTTP_TIMEOUT,
                ) as resp,
            ):
                data = await resp.read()
                return HttpResponse(status=resp.status, headers=resp.headers, body=data)
        except BlockedDestination as exc:
            raise TransportError(f"destination refused: {exc}", retryable=False) from exc
        except TimeoutError as exc:
            raise TransportError(f"timed out after {timeout_s:g}s") from exc
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, BlockedDestination):
                raise TransportError(
                    f"destination refused: {exc.os_error}", retryable=False
                ) from exc
            raise TransportError(f"connection failed: {exc.os_error}") from exc
        except (aiohttp.ClientError, OSError, asyncio.IncompleteReadError) as exc:
            raise TransportError(f"{type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
