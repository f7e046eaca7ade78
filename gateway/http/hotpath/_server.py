"""The hot path's listening socket: its connections, routes, timers and response bytes."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from email.utils import formatdate
from typing import Any, cast

from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE

from gateway.engine.metrics import Metrics
from gateway.http.hotpath._connection import Connection
from gateway.http.hotpath._routes import Handler, HotRoute

KEEPALIVE_S = 75.0
_OWN_HEADERS = frozenset({"content-length", "date", "server", "connection", "transfer-encoding"})
_SERVER = SERVER_SOFTWARE.encode()


class HotServer:
    """The protocol factory of the gateway's listening socket: hot routes here, the rest
    handed over to ``fallback`` (aiohttp's ``web.Server`` of the app's runner)."""

    def __init__(
        self,
        app: web.Application,
        fallback: Callable[[], asyncio.Protocol],
        routes: Iterable[HotRoute],
        *,
        max_body: int,
        body_timeout_s: float,
        keepalive_s: float = KEEPALIVE_S,
        keepalive_requests: int = 0,
        sweep_s: float = 0.5,
        access_log: logging.Logger | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.app = app
        self.fallback = fallback
        self.max_body = max_body
        self.body_timeout_s = body_timeout_s
        self.keepalive_s = keepalive_s
        # Answers per connection before it is closed (0: no limit). With SO_REUSEPORT workers the
        # kernel picks a worker per connection; a client that keeps its connections would stay
        # on the workers that listened when it connected (the first one up, or the survivors of
        # a restart) without this.
        self.keepalive_requests = keepalive_requests
        self.sweep_s = sweep_s
        self.access_log = access_log
        self.connections: set[Connection] = set()
        self._routes: dict[str, list[HotRoute]] = {}
        for route in routes:
            self._routes.setdefault(route.method, []).append(route)
        self._wrapped: dict[Handler, Handler] = {}
        self._date = b""
        self._date_at = -1
        self._listener: asyncio.Server | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self.loop = asyncio.get_running_loop()
        self.counts = {"accepted": 0, "handed_over": 0, "refused": 0}  # connections, as in metrics
        self._metrics = metrics

    def count(self, path: str) -> None:
        self.counts[path] += 1
        if self._metrics is not None:
            self._metrics.child(self._metrics.http_connections, path).inc()

    def __call__(self) -> asyncio.Protocol:
        return Connection(self)

    def match(self, method: str, segments: list[str]) -> tuple[Handler, dict[str, str]] | None:
        for route in self._routes.get(method, ()):
            found = route.match(segments)
            if found is not None:
                return route.handler, found
        return None

    def wrap(self, handler: Handler) -> Handler:
        """``handler`` behind the app's middlewares, as aiohttp runs it."""
        wrapped = self._wrapped.get(handler)
        if wrapped is None:
            wrapped = handler
            for mw in reversed(self.app.middlewares):
                wrapped = _behind(mw, wrapped)
            self._wrapped[handler] = wrapped
        return wrapped

    def encode(self, resp: web.StreamResponse, keep_alive: bool) -> bytes:
        """The response as sent: status line, its headers, the framing aiohttp would add."""
        body = resp.body if isinstance(resp, web.Response) else None
        if body is None:
            body = b""
        elif not isinstance(body, bytes | bytearray):
            raise TypeError("the hot path sends bytes bodies only")
        lines = [f"HTTP/1.1 {resp.status} {resp.reason}"]
        for name, value in resp.headers.items():
            if name.lower() not in _OWN_HEADERS:
                line = f"{name}: {value}"
                if "\r" in line or "\n" in line:  # aiohttp refuses them too
                    raise ValueError("a response header holds a line break")
                lines.append(line)
        lines.append(f"Content-Length: {len(body)}")
        now = int(time.time())
        if now != self._date_at:
            self._date_at, self._date = now, formatdate(now, usegmt=True).encode()
        out = bytearray("\r\n".join(lines).encode("utf-8"))
        out += b"\r\nDate: " + self._date + b"\r\nServer: " + _SERVER
        out += b"\r\n\r\n" if keep_alive else b"\r\nConnection: close\r\n\r\n"
        out += body
        return bytes(out)

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> None:
        self._listener = await self.loop.create_server(
            self, host, port, reuse_address=True, reuse_port=reuse_port or None, backlog=128
        )
        self._sweeper = self.loop.call_later(self.sweep_s, self._sweep)

    def _sweep(self) -> None:
        now = self.loop.time()
        for conn in list(self.connections):
            conn.sweep(now)
        self._sweeper = self.loop.call_later(self.sweep_s, self._sweep)

    async def stop(self) -> None:
        """Stop listening and close the hot connections (each after the answer it is
        writing); connections handed over are closed by the runner's cleanup."""
        if self._listener is not None:
            self._listener.close()
            await self._listener.wait_closed()
            self._listener = None
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in list(self.connections):
            conn.close_when_idle()


def _behind(mw: Any, handler: Handler) -> Handler:
    def run(request: Any) -> Awaitable[web.StreamResponse]:
        return cast(Awaitable[web.StreamResponse], mw(request, handler))  # no frame of its own

    return run
