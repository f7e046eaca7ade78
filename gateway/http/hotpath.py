"""The hot path: a lean HTTP/1.1 server for the few routes every operation takes.

Each durable operation comes in through ``POST /nexus/{service}/{operation}``, and an agent
that works durably calls ``POST .../heartbeat`` and ``PUT .../steps/{name}`` many times. Served
by aiohttp's server, each such request cost ~80 us of the gateway's CPU before the handler ran
(its protocol, request and response objects, writer and timers; measured on loopback at 1,500
requests/s, figures in bench/README.md); parsed with httptools (llhttp, the parser aiohttp's C
extension and uvicorn use) and answered in one write, ~20 us.

Every connection starts here. A request for one of the hot routes (the same handlers, behind
the app's own middlewares, so errors are answered exactly as on aiohttp) is served here; the
first request that is anything else (another route or method, a chunked or ``Expect`` or
``Upgrade`` request, a body over the app's limit, a line over aiohttp's limits, a request
httptools refuses) hands the whole connection over to aiohttp's own protocol, with the bytes
of that request as they came: aiohttp parses and answers it, and every later request of that
connection, as if it had been aiohttp's from the start. Only a client that pipelines a request
for another route behind a hot one in the same packet cannot be handed over (the request's
first byte is not known); its hot requests are answered and the connection is closed, which
an HTTP client takes as "retry on a new connection".

Timers: a hot request whose body does not arrive within ``body_timeout_s`` is answered 408 and
its connection closed; a connection idle for ``keepalive_s`` (75 s, aiohttp's default) is
closed. One sweep per ``sweep_s`` checks every connection (no timer per request).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any, NamedTuple, cast

import httptools
import yarl
from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.tcp_helpers import tcp_nodelay
from multidict import CIMultiDict, CIMultiDictProxy, MultiDict, MultiDictProxy, MultiMapping

from gateway.domain.errors import ConfigError, HandlerError, HandlerErrorType
from gateway.engine.metrics import Metrics
from gateway.http.context import InboundRequest
from gateway.http.errors import error_response

__all__ = ["HotRequest", "HotRoute", "HotServer", "hot_routes"]

log = logging.getLogger("swarmgate.http")

Handler = Callable[[Any], Awaitable[web.StreamResponse]]

# aiohttp's own limits (its parser's defaults): a longer line goes to aiohttp, which refuses it
MAX_LINE = 8190
MAX_HEADERS = 128
MAX_QUEUED = 32  # pipelined requests of one connection waiting for their turn; then it waits
KEEPALIVE_S = 75.0
_SEGMENT = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@]+")  # a path segment aiohttp matches as-is
_FALLBACK_HEADERS = frozenset({b"transfer-encoding", b"expect", b"upgrade"})
_OWN_HEADERS = frozenset({"content-length", "date", "server", "connection", "transfer-encoding"})
_EMPTY_QUERY: MultiDictProxy[str] = MultiDictProxy(MultiDict())


@dataclass(frozen=True)
class HotRoute:
    """One route the hot path serves: ``method`` and a path of literal segments and
    parameters (``None`` in ``parts``, named by ``names`` in order)."""

    method: str
    parts: tuple[str | None, ...]
    names: tuple[str, ...]
    handler: Handler

    @classmethod
    def of(cls, method: str, pattern: str, handler: Handler) -> HotRoute:
        """A route from an aiohttp pattern such as ``/nexus/{service}/{operation}``."""
        parts: list[str | None] = []
        names: list[str] = []
        for seg in pattern.split("/")[1:]:
            if seg.startswith("{") and seg.endswith("}") and ":" not in seg:
                parts.append(None)
                names.append(seg[1:-1])
            elif "{" in seg or "}" in seg:
                raise ConfigError(f"hot path: {pattern!r}: only whole-segment parameters")
            else:
                parts.append(seg)
        return cls(method, tuple(parts), tuple(names), handler)

    def match(self, segments: list[str]) -> dict[str, str] | None:
        if len(segments) != len(self.parts):
            return None
        for i, literal in self._literals:
            if segments[i] != literal:
                return None
        return {name: segments[i] for name, i in self._params}

    @functools.cached_property
    def _literals(self) -> tuple[tuple[int, str], ...]:
        return tuple((i, p) for i, p in enumerate(self.parts) if p is not None)

    @functools.cached_property
    def _params(self) -> tuple[tuple[str, int], ...]:
        where = [i for i, p in enumerate(self.parts) if p is None]
        return tuple(zip(self.names, where, strict=True))


def hot_routes(app: web.Application, handlers: Iterable[Handler]) -> tuple[HotRoute, ...]:
    """The hot routes of ``app``: its routes whose handler is one of ``handlers``, with the
    very method and pattern they were added with (ConfigError for a handler it has not)."""
    wanted = list(handlers)
    out: list[HotRoute] = []
    for handler in wanted:
        found = [r for r in app.router.routes() if r.handler is handler]
        if not found:
            raise ConfigError(f"hot path: no route of the app has handler {handler!r}")
        for route in found:
            if route.resource is None:
                raise ConfigError(f"hot path: a route of {handler!r} has no resource")
            out.append(HotRoute.of(route.method, route.resource.canonical, handler))
    return tuple(out)


class _Body:
    """A hot request's body, which has arrived whole (``web.Request.content``'s part used)."""

    __slots__ = ("_data",)

    def __init__(self, data: bytes) -> None:
        self._data = data

    def is_eof(self) -> bool:
        return True

    async def iter_chunked(self, n: int) -> AsyncIterator[bytes]:
        for i in range(0, len(self._data), n):
            yield self._data[i : i + n]


class HotRequest:
    """A request the hot path serves: what :class:`~gateway.http.context.InboundRequest`
    asks for, with the body already read."""

    __slots__ = (
        "_body",
        "_query",
        "_query_string",
        "app",
        "headers",
        "match_info",
        "method",
        "path",
        "raw_line",
    )

    def __init__(
        self,
        *,
        app: web.Application,
        method: str,
        path: str,
        query_string: str,
        headers: CIMultiDictProxy[str],
        match_info: Mapping[str, str],
        body: bytes,
        raw_line: str,
    ) -> None:
        self.app = app
        self.method = method
        self.path = path
        self.headers = headers
        self.match_info = match_info
        self.raw_line = raw_line
        self._query_string = query_string
        self._query: MultiMapping[str] | None = None
        self._body = body

    @property
    def query(self) -> MultiMapping[str]:
        """Parsed as aiohttp parses it (yarl)."""
        if self._query is None:
            if not self._query_string:
                self._query = _EMPTY_QUERY
            else:
                url = yarl.URL.build(path="/", query_string=self._query_string, encoded=True)
                self._query = url.query
        return self._query

    @property
    def content_length(self) -> int | None:
        return len(self._body)

    @property
    def content(self) -> _Body:
        return _Body(self._body)

    async def read(self) -> bytes:
        return self._body


class _Head(NamedTuple):
    """What a hot request's head decided: its handler, parameters, method, path and query."""

    handler: Handler
    match: dict[str, str]
    method: str
    path: str
    query: str


class _Switch(Exception):
    """Raised from a parser callback: this request is aiohttp's."""


_Job = tuple[HotRequest, Handler, bool]


class _Connection(asyncio.Protocol):
    """One client connection while the hot path serves it."""

    def __init__(self, server: HotServer) -> None:
        self._server = server
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._buf: bytes | bytearray = b""  # the current message's bytes, while _aligned
        self._aligned = True
        self._pending = False  # a message has begun and not completed
        self._done_here = False  # a message completed within the current data_received
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._job: _Head | None = None
        self._queue: deque[_Job] = deque()
        self._busy = False
        self._handover = False  # hand the connection over once the queue is answered
        self._closing = False  # close once the queue is answered
        self._gone = False
        self.last_active = server.loop.time()
        self.body_deadline: float | None = None
        self.peer = "-"

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        tcp_nodelay(self._transport, True)
        if self._server.access_log is not None:
            peer = transport.get_extra_info("peername")
            self.peer = str(peer[0]) if isinstance(peer, tuple) else "-"
        self._server.connections.add(self)
        self._server.count("accepted")

    def connection_lost(self, exc: Exception | None) -> None:
        self._gone = True
        self._server.connections.discard(self)

    def data_received(self, data: bytes) -> None:
        self.last_active = self._server.loop.time()
        if self._handover or self._closing:
            if self._aligned:
                self._buf += data
            return
        if not self._pending:
            self._buf = data
            self._aligned = True
        elif self._aligned:
            if isinstance(self._buf, bytes):
                self._buf = bytearray(self._buf)
            self._buf += data
        self._done_here = False
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if not isinstance(exc.__context__, _Switch):
                log.exception("hot path: parser callback failed")
                self.close_when_idle()
                return
            self._switch()
            return
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):  # aiohttp's to answer
            self._switch()
            return
        if not self._pending:
            self._buf = b""
        elif self._job is not None and self.body_deadline is None:
            self.body_deadline = self.last_active + self._server.body_timeout_s

    # httptools callbacks

    def on_message_begin(self) -> None:
        if self._done_here:  # a second message in this packet: its first byte is not known
            self._aligned = False
        self._pending = True
        self._url = b""
        self._headers = []
        self._body = []
        self._job = None

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > MAX_LINE:
            raise _Switch

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) + len(value) > MAX_LINE or len(self._headers) >= MAX_HEADERS:
            raise _Switch
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self._parser
        if parser.should_upgrade() or parser.get_http_version() not in ("1.1", "1.0"):
            raise _Switch
        method = parser.get_method().decode("ascii", "replace")
        try:
            url = httptools.parse_url(self._url)
        except httptools.HttpParserInvalidURLError:
            raise _Switch from None
        raw_path = url.path or b""
        if url.schema is not None or b"%" in raw_path or not raw_path.isascii():
            raise _Switch  # absolute-form, escapes or non-ASCII: aiohttp's decoding
        path = raw_path.decode("ascii")
        segments = path.split("/")[1:]
        for seg in segments:
            if seg in (".", "..") or not _SEGMENT.fullmatch(seg):
                raise _Switch
        found = self._server.match(method, segments)
        if found is None:
            raise _Switch
        length = 0
        for name, value in self._headers:
            low = name.lower()
            if low in _FALLBACK_HEADERS:
                raise _Switch
            if low == b"content-length":
                if not value.strip().isdigit():
                    raise _Switch
                length = int(value)
        if length > self._server.max_body:
            raise _Switch  # aiohttp answers 413
        handler, match = found
        self._job = _Head(handler, match, method, path, (url.query or b"").decode("latin-1"))

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._pending = False
        self._done_here = True
        self.body_deadline = None
        job = self._job
        if job is None:  # not reached: on_headers_complete decided
            raise _Switch
        self._job = None
        request = self._request(job, b"".join(self._body), self._request_line(job))
        self._queue.append((request, job.handler, self._parser.should_keep_alive()))
        if not self._busy:
            self._busy = True
            self._server.loop.create_task(self._serve_queue())
        elif len(self._queue) >= MAX_QUEUED and self._transport is not None:
            self._transport.pause_reading()  # a pipelining client waits for its answers

    # serving

    def _request(self, job: _Head, body: bytes, line: str) -> HotRequest:
        return HotRequest(
            app=self._server.app,
            method=job.method,
            path=job.path,
            query_string=job.query,
            headers=_headers(self._headers),
            match_info=job.match,
            body=body,
            raw_line=line,
        )

    def _request_line(self, job: _Head) -> str:
        if self._server.access_log is None:
            return ""
        version = self._parser.get_http_version()
        return f"{job.method} {self._url.decode('latin-1')} HTTP/{version}"

    async def _serve_queue(self) -> None:
        try:
            while self._queue and not self._gone:
                request, handler, keep_alive = self._queue.popleft()
                t0 = time.perf_counter()
                try:
                    resp = await self._server.wrap(handler)(request)
                    keep_alive = keep_alive and not self._closing  # stopping: say so
                    data = self._server.encode(resp, keep_alive)
                except Exception:
                    log.exception("hot path: %s %s failed", request.method, request.path)
                    resp, keep_alive = _internal(request), False
                    data = self._server.encode(resp, keep_alive)
                transport = self._transport
                if transport is None or transport.is_closing():
                    return
                transport.write(data)
                if self._server.access_log is not None:
                    self._log(request, resp, time.perf_counter() - t0)
                if not keep_alive:
                    self._closing = True
                    transport.close()
                    return
                if len(self._queue) < MAX_QUEUED and not self._handover:
                    transport.resume_reading()
        finally:
            self._busy = False
            self.last_active = self._server.loop.time()
        if self._handover:
            self._hand_over()
        elif self._closing and self._transport is not None:
            self._transport.close()

    def _log(self, request: HotRequest, resp: web.StreamResponse, seconds: float) -> None:
        logger = self._server.access_log
        assert logger is not None
        body = resp.body if isinstance(resp, web.Response) else None
        size = len(body) if isinstance(body, bytes | bytearray) else 0  # all encode() sends
        agent = request.headers.get("User-Agent", "-")
        line = request.raw_line
        logger.info('%s "%s" %d %d %.6fs "%s"', self.peer, line, resp.status, size, seconds, agent)

    def _switch(self) -> None:
        """This request is aiohttp's: hand the connection over now, or once the requests
        before it are answered; close it if the request's first byte is not known."""
        self._job = None
        if not self._aligned:
            log.info("hot path: a request pipelined behind another is not served; closing")
            self._server.count("refused")
            self.close_when_idle()
            return
        self._handover = True
        if self._busy:
            if self._transport is not None:
                self._transport.pause_reading()
            return
        self._hand_over()

    def close_when_idle(self) -> None:
        """Close now if nothing is being answered, else once the answer is written (also
        how the server's stop closes its connections)."""
        self._closing = True
        if not self._busy and self._transport is not None:
            self._transport.close()

    def _hand_over(self) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        self._server.connections.discard(self)
        self._server.count("handed_over")
        self._transport = None
        proto = self._server.fallback()
        transport.set_protocol(proto)
        proto.connection_made(transport)
        data, self._buf = bytes(self._buf), b""
        if data:
            proto.data_received(data)
        transport.resume_reading()

    def sweep(self, now: float) -> None:
        """Close the connection if its timers say so (called by the server's sweep)."""
        transport = self._transport
        if transport is None or self._busy or self._handover:
            return
        if self.body_deadline is not None and now >= self.body_deadline:
            self._body_timeout(transport)
        elif now - self.last_active >= self._server.keepalive_s:
            transport.close()

    def _body_timeout(self, transport: asyncio.Transport) -> None:
        job = self._job
        self._job = None
        self.body_deadline = None
        self._closing = True
        if job is not None:
            request = self._request(job, b"", "")
            err = HandlerError(
                HandlerErrorType.REQUEST_TIMEOUT,
                f"the request body did not arrive within {self._server.body_timeout_s:g}s",
            )
            transport.write(self._server.encode(error_response(request, err), keep_alive=False))
        transport.close()


def _headers(raw: list[tuple[bytes, bytes]]) -> CIMultiDictProxy[str]:
    # decoded as aiohttp's C parser decodes them
    return CIMultiDictProxy(
        CIMultiDict(
            [
                (n.decode("utf-8", "surrogateescape"), v.decode("utf-8", "surrogateescape"))
                for n, v in raw
            ]
        )
    )


def _internal(request: InboundRequest) -> web.Response:
    return error_response(request, HandlerError(HandlerErrorType.INTERNAL, "internal error"))


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
        sweep_s: float = 0.5,
        access_log: logging.Logger | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.app = app
        self.fallback = fallback
        self.max_body = max_body
        self.body_timeout_s = body_timeout_s
        self.keepalive_s = keepalive_s
        self.sweep_s = sweep_s
        self.access_log = access_log
        self.connections: set[_Connection] = set()
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
        return _Connection(self)

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


_SERVER = SERVER_SOFTWARE.encode()


def _behind(mw: Any, handler: Handler) -> Handler:
    def run(request: Any) -> Awaitable[web.StreamResponse]:
        return cast(Awaitable[web.StreamResponse], mw(request, handler))  # no frame of its own

    return run
