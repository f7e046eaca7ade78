"""The callback receiver's lean server: a bare asyncio protocol on httptools.

The harness shares the box with the system it measures (2 cores here), so what it spends
receiving callbacks is taken from the gateway, the agent and PostgreSQL. On aiohttp's server
the receiver was ~37% of the harness's CPU at 64 callers (py-spy: ``RequestHandler`` and the
response writer); this server parses a callback's request line and one header and answers
``200`` from a constant. ``--receiver aiohttp`` keeps the aiohttp receiver (the same
:class:`~bench.scenarios.Receiver` bookkeeping either way), for comparing the two.

Only what the bench's callbacks are is served: ``POST /cb/{rid}`` (any other request is
answered 404); keep-alive unless the request says otherwise; a request it cannot parse is
answered 400 and its connection closed.
"""

from __future__ import annotations

import asyncio
import time
from typing import cast
from urllib.parse import unquote

import httptools

from bench.scenarios import Receiver

_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
_OK_CLOSE = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
_NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
_BAD = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
_STATE = b"nexus-operation-state"


class _Callbacks(asyncio.Protocol):
    def __init__(self, receiver: Receiver) -> None:
        self._receiver = receiver
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._state = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # (uvloop's is not a subclass)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            if self._transport is not None:
                self._transport.write(_BAD)
                self._transport.close()

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._url = b""
        self._state = ""

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) == len(_STATE) and name.lower() == _STATE:
            self._state = value.decode("latin-1")

    def on_message_complete(self) -> None:
        now = time.perf_counter()
        transport = self._transport
        if transport is None:
            return
        path = self._url.partition(b"?")[0]
        if self._parser.get_method() != b"POST" or not path.startswith(b"/cb/") or len(path) < 5:
            transport.write(_NOT_FOUND)
            return
        rid = path[4:].decode("latin-1")
        self._receiver.arrived(unquote(rid) if "%" in rid else rid, now, self._state)
        if self._parser.should_keep_alive():
            transport.write(_OK)
        else:
            transport.write(_OK_CLOSE)
            transport.close()


async def serve(receiver: Receiver, host: str, port: int) -> asyncio.Server:
    """Listen for ``receiver``'s callbacks on ``host:port``."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: _Callbacks(receiver), host, port, reuse_address=True, backlog=1024
    )


__all__ = ["serve"]
