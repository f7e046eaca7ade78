"""One client connection on the hot path: parsing, serving in order, handing over."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import deque
from typing import TYPE_CHECKING, NamedTuple, cast

import httptools
from aiohttp import web
from aiohttp.tcp_helpers import tcp_nodelay

from gateway.domain.errors import HandlerError, HandlerErrorType
from gateway.http.context import InboundRequest
from gateway.http.errors import error_response
from gateway.http.hotpath._request import HotRequest, headers_of
from gateway.http.hotpath._routes import Handler

if TYPE_CHECKING:
    from gateway.http.hotpath._server import HotServer

log = logging.getLogger("swarmgate.http")

# aiohttp's own limits (its parser's defaults): a longer line goes to aiohttp, which refuses it
MAX_LINE = 8190
MAX_HEADERS = 128
MAX_QUEUED = 32  # pipelined requests of one connection waiting for their turn; then it waits
# a path of segments aiohttp matches as-is (one match for the whole path: a match per segment
# was ~2% of a step record's CPU); dot segments are refused apart
_PATH = re.compile(r"(?:/[A-Za-z0-9\-._~!$&'()*+,;=:@]+)+")
_FALLBACK_HEADERS = frozenset({b"transfer-encoding", b"expect", b"upgrade"})


class _Head(NamedTuple):
    """What a hot request's head decided: its handler, parameters, method, path and query."""

    handler: Handler
    match: dict[str, str]
    method: str
    path: str
    query: str


SERVING_TASK = "sg-hot-connection"  # the name of a connection's serving task


class _Switch(Exception):
    """Raised from a parser callback: this request is aiohttp's."""


_Job = tuple[HotRequest, Handler, bool]


class Connection(asyncio.Protocol):
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
        # Set while this connection's serving task waits for its next request: waking it
        # costs ~1 us where a task per request cost ~3 (its creation and registration).
        self._wake: asyncio.Future[None] | None = None
        self._handover = False  # hand the connection over once the queue is answered
        self._closing = False  # close once the queue is answered
        self._gone = False
        self._answers_left = server.keepalive_requests or -1  # -1: no limit
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
        self._release()

    def _release(self) -> None:
        """Let the serving task that waits for a next request end (the connection is gone or
        no longer ours)."""
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

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
        if not _PATH.fullmatch(path):
            raise _Switch
        segments = path.split("/")[1:]
        if "/." in path and ("." in segments or ".." in segments):
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
            wake = self._wake
            if wake is not None and not wake.done():
                wake.set_result(None)
            else:
                self._server.loop.create_task(self._serve(), name=SERVING_TASK)
        elif len(self._queue) >= MAX_QUEUED and self._transport is not None:
            self._transport.pause_reading()  # a pipelining client waits for its answers

    # serving

    def _request(self, job: _Head, body: bytes, line: str) -> HotRequest:
        return HotRequest(
            app=self._server.app,
            method=job.method,
            path=job.path,
            query_string=job.query,
            headers=headers_of(self._headers),
            match_info=job.match,
            body=body,
            raw_line=line,
        )

    def _request_line(self, job: _Head) -> str:
        if self._server.access_log is None:
            return ""
        version = self._parser.get_http_version()
        return f"{job.method} {self._url.decode('latin-1')} HTTP/{version}"

    async def _serve(self) -> None:
        """Answer the queue, then wait for the next request while the connection stays
        ours; one task per connection, not one per request."""
        while True:
            await self._serve_queue()
            if self._gone or self._closing or self._handover or self._transport is None:
                return
            if self._queue:  # not reached: a request queued while serving was served
                continue
            wake = self._wake = self._server.loop.create_future()
            try:
                await wake
            finally:
                self._wake = None
            if not self._busy:  # released, not woken by a request
                return

    async def _serve_queue(self) -> None:
        try:
            while self._queue and not self._gone:
                request, handler, keep_alive = self._queue.popleft()
                t0 = time.perf_counter()
                try:
                    resp = await self._server.wrap(handler)(request)
                    self._answers_left -= 1
                    # stopping, or the last answer this connection may carry: say so
                    keep_alive = keep_alive and not self._closing and self._answers_left != 0
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
        self._release()
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


def _internal(request: InboundRequest) -> web.Response:
    return error_response(request, HandlerError(HandlerErrorType.INTERNAL, "internal error"))
