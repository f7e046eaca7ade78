"""Outbound HTTP for adapters and callback delivery.

HTTP/1.1 over pooled keep-alive connections, responses parsed by httptools (llhttp, the parser
uvicorn uses). Every destination is screened (SSRF rules, :mod:`gateway.security.netguard`):
IP literals by :func:`check_url`, names by the :class:`ScreeningResolver` once per new
connection, and the connection goes to exactly the address that was checked. Redirects are
never followed (a 3xx is returned as it is), no cookies, no proxies, no ``Expect``; one timer
bounds the whole exchange, connect included.

Why not aiohttp's client (which the gateway used before): per request it cost about three times
the CPU of this one (measured against the bench echo agent; figures in bench/README.md),
and the gateway makes two outbound requests per operation. The
part that has to be exact, parsing what the other side sends, is httptools'.

A request that was sent on a reused keep-alive connection which the server closed before any
byte of a response came back is sent once more on a new connection (the server closed an idle
connection as we wrote). That is safe for what the gateway sends: dispatches carry a stable
``Idempotency-Key`` and callbacks a stable ``webhook-id``.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import ipaddress
import re
import socket
import ssl
import zlib
from collections.abc import Mapping
from typing import cast
from urllib.parse import quote

import httptools
import yarl
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.domain.deadlines import deadline
from gateway.domain.dispatch import HttpResponse, TransportError
from gateway.security.netguard import (
    BlockedDestination,
    OutboundPolicy,
    ScreeningResolver,
    UnresolvableDestination,
    check_url,
)

DEFAULT_MAX_RESPONSE_BYTES = 16 * 1024 * 1024
MAX_HEADER_BYTES = 64 * 1024  # all of a response's header lines together
MAX_HEADER_LINE_BYTES = 16 * 1024  # one header line (name and value)
_AUTHORITY_END = re.compile(r"[/?#]")
_UNSAFE_IN_TARGET = re.compile(r"[^\x21-\x7e]")  # controls, spaces, non-ASCII
_TARGET_SAFE = "!$&'()*+,;=:@/?%-._~[]"  # kept as they are when a target has to be quoted
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Framing and connection management are this module's business: a caller's value for one of
# these could desynchronise the connection (request smuggling), so they are not sent.
_OWN_HEADERS = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "te", "upgrade"}
    | {"trailer", "proxy-connection", "expect"}
)
_MAX_ORIGINS_CACHED = 10_000
_WRITE_JOINED_BELOW = 64 * 1024  # head and body in one buffer (one send) when the body is small


class _ClosedEarly(Exception):
    """The connection closed before any byte of the response arrived."""


@functools.lru_cache(maxsize=1024)
def _is_header_name(name: str) -> bool:
    return _HEADER_NAME.fullmatch(name) is not None


class _Progress:
    """How far an exchange got, for the message when it times out."""

    __slots__ = ("conn", "stage")

    def __init__(self) -> None:
        self.stage = "waiting for a free connection slot"
        self.conn: _Connection | None = None

    def __str__(self) -> str:
        if self.conn is not None and self.conn.got_bytes:
            return "(reading the answer)"
        return f"({self.stage})"


class _Origin:
    __slots__ = ("authorization", "host", "host_header", "key", "port", "tls")

    def __init__(self, key: str, policy: OutboundPolicy) -> None:
        try:
            check_url(key, policy)
            url = yarl.URL(key)
            port = url.port
        except (BlockedDestination, ValueError) as exc:
            raise TransportError(f"destination refused: {exc}", retryable=False) from None
        host = url.raw_host or ""
        if port is None or not host:
            raise TransportError("destination refused: malformed URL", retryable=False)
        self.key = key
        self.tls = url.scheme.lower() == "https"
        self.host = host.strip("[]")
        self.port = port
        shown = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = shown if url.explicit_port is None else f"{shown}:{port}"
        self.authorization: str | None = None
        if url.user is not None:
            pair = f"{url.user}:{url.password or ''}".encode()
            self.authorization = "Basic " + base64.b64encode(pair).decode()


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one exchange at a time."""

    def __init__(self, max_body: int) -> None:
        self._max_body = max_body
        self._max_head = min(MAX_HEADER_BYTES, max_body)  # headers count against the cap too
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[tuple[int, CIMultiDict[str], bytes]] | None = None
        self._status = 0
        self._headers: CIMultiDict[str] = CIMultiDict()
        self._chunks: list[bytes] = []
        self._size = 0
        self._head_bytes = 0  # of the status line and headers, fed to the parser so far
        self.got_bytes = False
        self._headers_done = False
        self._framed = False
        self._error: TransportError | None = None
        self.keep_alive = False
        self.closed = False
        self.idle_since = 0.0
        self.pool: list[_Connection] | None = None

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        if self._waiter is None or self._waiter.done():
            self.close()  # nothing was asked: a confused or hostile peer
            return
        self.got_bytes = True
        try:
            while data and not self._headers_done:
                # the head is fed at most MAX_HEADER_BYTES (+1) at a time: httptools collects
                # a header line in memory until it ends, so an endless one must stop here
                room = self._max_head + 1 - self._head_bytes
                part, data = data[:room], data[room:]
                self._head_bytes += len(part)
                self._parser.feed_data(part)
                if not self._headers_done and self._head_bytes > self._max_head:
                    self._error = TransportError(
                        f"response headers larger than {self._max_head} bytes", retryable=False
                    )
                    raise self._error
            if data:
                self._parser.feed_data(data)
        except TransportError as exc:
            self._fail(exc)
        except httptools.HttpParserError as exc:
            self._fail(self._error or TransportError(f"malformed response: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.pool is not None:
            if self in self.pool:
                self.pool.remove(self)
            self.pool = None
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if self._headers_done and not self._framed:  # the body ran until the connection closed
            self.keep_alive = False
            waiter.set_result((self._status, self._headers, b"".join(self._chunks)))
        elif not self.got_bytes:
            waiter.set_exception(_ClosedEarly())
        else:
            waiter.set_exception(TransportError("connection closed mid-response"))

    # -- httptools callbacks -----------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) + len(value) > MAX_HEADER_LINE_BYTES:
            self._error = TransportError(
                f"response header line longer than {MAX_HEADER_LINE_BYTES} bytes", retryable=False
            )
            raise self._error
        self._headers.add(name.decode("latin-1"), value.decode("latin-1"))

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()
        self._headers_done = True
        h = self._headers
        self._framed = "Content-Length" in h or "Transfer-Encoding" in h
        if self._status in (204, 304) or 100 <= self._status < 200:
            self._framed = True
        length = h.get("Content-Length", "")
        if length.isdigit() and int(length) > self._max_body:
            self._too_large()

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > self._max_body:
            self._too_large()
        self._chunks.append(body)

    def on_message_complete(self) -> None:
        if 100 <= self._status < 200:  # an interim response: the real one follows
            self._reset()
            return
        waiter = self._waiter
        if waiter is None or waiter.done():
            self.close()
            return
        self.keep_alive = self._parser.should_keep_alive()
        waiter.set_result((self._status, self._headers, b"".join(self._chunks)))

    # -- use -----------------------------------------------------------------------------------

    def _reset(self) -> None:
        self._status = 0
        self._headers = CIMultiDict()
        self._chunks = []
        self._size = 0
        self._head_bytes = 0
        self._headers_done = False
        self._framed = False

    def _too_large(self) -> None:
        self._error = TransportError(
            f"response larger than {self._max_body} bytes", retryable=False
        )
        raise self._error  # httptools stops parsing and raises HttpParserCallbackError

    def _fail(self, exc: Exception) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)
        self.close()

    def send(
        self, head: bytes, body: bytes | None
    ) -> asyncio.Future[tuple[int, CIMultiDict[str], bytes]]:
        assert self._transport is not None
        self._reset()
        self.got_bytes = False
        self._error = None
        self._waiter = asyncio.get_running_loop().create_future()
        if not body:
            self._transport.write(head)
        elif len(body) < _WRITE_JOINED_BELOW:
            self._transport.write(head + body)
        else:
            self._transport.writelines((head, body))
        return self._waiter

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.abort()


class HttpTransport:
    """Outbound HTTP/1.1 with keep-alive pools per origin (see the module docstring)."""

    def __init__(
        self,
        policy: OutboundPolicy,
        *,
        limit: int = 512,
        idle_s: float = 10.0,
        max_idle_per_origin: int = 256,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        ssl_context: ssl.SSLContext | None = None,
        resolver: ScreeningResolver | None = None,
        user_agent: str = "swarmgate",
    ) -> None:
        self.policy = policy
        self._slots = asyncio.Semaphore(limit)  # connections in use at once
        self._idle_s = idle_s
        self._max_idle = max_idle_per_origin
        self._max_body = max_response_bytes
        self._ssl = ssl_context
        self._resolver = resolver
        self._user_agent = user_agent
        self._origins: dict[str, _Origin] = {}
        self._idle: dict[str, list[_Connection]] = {}
        self._next_sweep = 0.0
        self.connections_opened = 0  # for tests and metrics

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        body: bytes | None,
        timeout_s: float,
    ) -> HttpResponse:
        origin, target = self._split(url)
        head = self._head(method, origin, target, headers, body)
        progress = _Progress()
        try:
            with deadline(timeout_s):  # coarse: one loop timer for every request's deadline
                async with self._slots:
                    status, resp_headers, data = await self._exchange(origin, head, body, progress)
        except TimeoutError as exc:
            raise TransportError(f"timed out after {timeout_s:g}s {progress}") from exc
        if "Content-Encoding" in resp_headers:
            data = self._decoded(resp_headers["Content-Encoding"], data)
        return HttpResponse(status=status, headers=CIMultiDictProxy(resp_headers), body=data)

    async def close(self) -> None:
        pools, self._idle = self._idle, {}
        for pool in pools.values():
            for conn in list(pool):
                conn.close()
        if self._resolver is not None:
            await self._resolver.close()

    # -- parts -------------------------------------------------------------------------------

    def _split(self, url: str) -> tuple[_Origin, str]:
        start = url.find("://")
        if start < 0:
            raise TransportError("destination refused: malformed URL", retryable=False)
        end = _AUTHORITY_END.search(url, start + 3)
        cut = end.start() if end is not None else len(url)
        key = url[:cut]
        origin = self._origins.get(key)
        if origin is None:
            origin = _Origin(key, self.policy)
            if len(self._origins) < _MAX_ORIGINS_CACHED:
                self._origins[key] = origin
        target = url[cut:].split("#", 1)[0]
        if not target.startswith("/"):
            target = "/" + target
        if _UNSAFE_IN_TARGET.search(target) is not None:
            target = quote(target, safe=_TARGET_SAFE)
        return origin, target

    def _head(
        self,
        method: str,
        origin: _Origin,
        target: str,
        headers: Mapping[str, str],
        body: bytes | None,
    ) -> bytes:
        if not _is_header_name(method):
            raise TransportError(f"invalid HTTP method {method!r}", retryable=False)
        lines = [f"{method} {target} HTTP/1.1\r\nHost: {origin.host_header}\r\n"]
        given: set[str] = set()
        for name, value in headers.items():
            lower = name.lower()
            if lower in _OWN_HEADERS:
                continue
            if not _is_header_name(name) or "\n" in value or "\r" in value or "\0" in value:
                raise TransportError(f"invalid HTTP header {name!r}", retryable=False)
            given.add(lower)
            lines.append(f"{name}: {value}\r\n")
        if origin.authorization is not None and "authorization" not in given:
            lines.append(f"Authorization: {origin.authorization}\r\n")
        if "user-agent" not in given:
            lines.append(f"User-Agent: {self._user_agent}\r\n")
        if body is not None or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body or b'')}\r\n")
        lines.append("\r\n")
        return "".join(lines).encode()

    async def _exchange(
        self, origin: _Origin, head: bytes, body: bytes | None, progress: _Progress
    ) -> tuple[int, CIMultiDict[str], bytes]:
        for fresh_only in (False, True):
            conn = None if fresh_only else self._take_idle(origin.key)
            reused = conn is not None
            if conn is None:
                progress.stage = "connecting"
                conn = await self._connect(origin)
            kind = "reused" if reused else "new"
            progress.stage = f"waiting for the answer on a {kind} connection"
            progress.conn = conn
            try:
                status, headers, data = await conn.send(head, body)
            except _ClosedEarly:
                conn.close()
                if reused:
                    continue  # the server dropped an idle connection as we wrote
                raise TransportError("connection closed before a response") from None
            except BaseException:
                conn.close()  # cancelled or failed mid-exchange: never reused
                raise
            if conn.keep_alive and not conn.closed:
                self._put_idle(origin.key, conn)
            else:
                conn.close()
            return status, headers, data
        raise AssertionError("unreachable")  # pragma: no cover

    def _take_idle(self, key: str) -> _Connection | None:
        pool = self._idle.get(key)
        if not pool:
            return None
        oldest = asyncio.get_running_loop().time() - self._idle_s
        while pool:
            conn = pool.pop()
            if not conn.closed and conn.idle_since >= oldest:
                conn.pool = None
                return conn
            conn.pool = None
            conn.close()
        return None

    def _put_idle(self, key: str, conn: _Connection) -> None:
        pool = self._idle.setdefault(key, [])
        if len(pool) >= self._max_idle:
            conn.close()
            return
        now = asyncio.get_running_loop().time()
        conn.idle_since = now
        conn.pool = pool
        pool.append(conn)
        if now >= self._next_sweep:
            self._sweep(now)

    def _sweep(self, now: float) -> None:
        """Close connections idle longer than ``idle_s`` in every pool and forget empty pools:
        callbacks go to many origins, most of which are never asked again."""
        self._next_sweep = now + self._idle_s
        oldest = now - self._idle_s
        for key, pool in list(self._idle.items()):
            for conn in [c for c in pool if c.idle_since < oldest or c.closed]:
                pool.remove(conn)
                conn.pool = None
                conn.close()
            if not pool:
                del self._idle[key]

    async def _connect(self, origin: _Origin) -> _Connection:
        loop = asyncio.get_running_loop()
        addresses = await self._addresses(origin)
        context: ssl.SSLContext | None = None
        if origin.tls:
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            context = self._ssl
        failure: BaseException | None = None
        for address in addresses:
            try:
                _, conn = await loop.create_connection(
                    lambda: _Connection(self._max_body),
                    host=address,
                    port=origin.port,
                    ssl=context,
                    server_hostname=origin.host if context is not None else None,
                )
            except (OSError, ssl.SSLError) as exc:
                failure = exc
                continue
            self.connections_opened += 1
            return conn
        raise TransportError(f"connection failed: {failure}")

    async def _addresses(self, origin: _Origin) -> list[str]:
        if _is_ip_literal(origin.host):
            return [origin.host]  # screened with the URL (check_url)
        if self._resolver is None:
            self._resolver = ScreeningResolver(self.policy)
        try:
            found = await self._resolver.resolve(origin.host, origin.port, family=socket.AF_UNSPEC)
        except BlockedDestination as exc:
            raise TransportError(f"destination refused: {exc}", retryable=False) from None
        except UnresolvableDestination as exc:
            raise TransportError(f"connection failed: {exc}") from None
        return [r["host"] for r in found]

    def _decoded(self, encoding: str, data: bytes) -> bytes:
        enc = encoding.strip().lower()
        if enc in ("gzip", "x-gzip"):
            wbits = 16 + zlib.MAX_WBITS
        elif enc == "deflate":
            wbits = zlib.MAX_WBITS
        else:
            return data  # identity, or a coding we do not decode: handed on as it came
        try:
            inflater = zlib.decompressobj(wbits)
            out = inflater.decompress(data, self._max_body)
        except zlib.error as exc:
            raise TransportError(f"malformed {enc} response body: {exc}") from None
        if inflater.unconsumed_tail:
            raise TransportError(f"response larger than {self._max_body} bytes", retryable=False)
        return out


def _is_ip_literal(host: str) -> bool:
    """True only for what ``ipaddress`` parses exactly: ``9.9.9.9.9`` is a name (resolved and
    screened), not an address the OS resolver may make something of."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


__all__ = [
    "DEFAULT_MAX_RESPONSE_BYTES",
    "MAX_HEADER_BYTES",
    "MAX_HEADER_LINE_BYTES",
    "HttpTransport",
]
