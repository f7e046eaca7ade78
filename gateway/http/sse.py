"""Server-Sent Events of an operation's history (``GET /api/operations/{id}/stream``).

Events are durable and the ids of one operation ascend in commit order, so a client that
reconnects with ``Last-Event-ID`` (or ``?after=``) misses nothing, across a reconnect or a
gateway restart. The stream ends once the operation is closed and no callback delivery is
pending.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from gateway.domain.model import DeliveryState, Event
from gateway.domain.ports import Store
from gateway.http.wire import event_json

log = logging.getLogger("swarmgate.http")
HEARTBEAT_S = 15.0
HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


def frame(e: Event) -> bytes:
    """One event as an SSE frame (id, event kind, JSON data)."""
    return f"id: {e.id}\nevent: {e.kind}\ndata: {json.dumps(event_json(e))}\n\n".encode()


async def _finished(store: Store, op_id: str, after: int) -> bool:
    current = await store.get_operation(op_id)
    if current is None:
        return True
    if current.state.terminal:
        deliveries = await store.list_callbacks(op_id)
        if all(d.state is not DeliveryState.PENDING for d in deliveries):
            return not await store.list_events(op_id, after=after)
    return False


async def stream_events(
    request: web.Request,
    store: Store,
    op_id: str,
    *,
    after: int,
    wait_change: Callable[[str, float], Awaitable[object]],
    poll_s: float,
) -> web.StreamResponse:
    """Send the events after ``after`` as they commit, until the operation is finished."""
    resp = web.StreamResponse(headers=HEADERS)
    await resp.prepare(request)
    loop = asyncio.get_running_loop()
    try:
        await resp.write(b"retry: 1000\n\n")
        last_write = loop.time()
        while True:
            events = await store.list_events(op_id, after=after)
            for e in events:
                await resp.write(frame(e))
                after = e.id or after
                last_write = loop.time()
            if not events:
                if await _finished(store, op_id, after):
                    break
                if loop.time() - last_write >= HEARTBEAT_S:
                    await resp.write(b": keep-alive\n\n")
                    last_write = loop.time()
                await wait_change(op_id, poll_s)
        await resp.write_eof()
    except ConnectionResetError:
        _gone(request, op_id)
    return resp


def _gone(request: web.Request, op_id: str | None = None) -> None:
    """The client went away mid-stream: the normal end of a stream nobody reads any more
    (no error and no traceback per disconnect)."""
    log.debug("stream client gone", extra={"path": request.path, "operation_id": op_id})


async def relay(request: web.Request, frames: AsyncIterator[bytes | None]) -> web.StreamResponse:
    """Send SSE ``frames`` as they come; a ``None`` is an idle moment (a keep-alive comment
    once nothing was written for ``HEARTBEAT_S``). The A2A streams use this."""
    resp = web.StreamResponse(headers=HEADERS)
    await resp.prepare(request)
    loop = asyncio.get_running_loop()
    try:
        await resp.write(b"retry: 1000\n\n")
        last_write = loop.time()
        async for chunk in frames:
            if chunk is not None:
                await resp.write(chunk)
                last_write = loop.time()
            elif loop.time() - last_write >= HEARTBEAT_S:
                await resp.write(b": keep-alive\n\n")
                last_write = loop.time()
        await resp.write_eof()
    except ConnectionResetError:
        _gone(request)
        aclose = getattr(frames, "aclose", None)
        if aclose is not None:  # the frames' source stops now, not when collected
            await aclose()
    return resp
