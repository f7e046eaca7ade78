"""A keep-alive request limit for the connections aiohttp serves (``SWARMGATE_KEEPALIVE_REQUESTS``).

The hot path closes its own connections after that many answers (``hotpath._connection``);
this middleware does the same for aiohttp's: connections that ask for other routes from their
first request, those handed over from the hot path (which then count afresh, so one connection
carries fewer than twice the limit), and every connection when the hot path is off. With
SO_REUSEPORT workers the kernel picks a worker per connection, so a client that polls results
or reads the console over kept connections spreads over the workers again after a restart.
"""

from __future__ import annotations

import asyncio
import weakref

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware


def keepalive_limit(limit: int) -> Middleware:
    """A middleware that answers a connection's ``limit``-th request with ``Connection:
    close`` and closes the connection after it (``limit`` >= 1)."""
    if limit < 1:
        raise ValueError("a keep-alive request limit is 1 or more")
    # per transport, gone with it: a dict keyed by id() would outlive closed connections
    answered: weakref.WeakKeyDictionary[asyncio.BaseTransport, int] = weakref.WeakKeyDictionary()

    @web.middleware
    async def limit_keepalive(request: web.Request, handler: Handler) -> web.StreamResponse:
        resp = await handler(request)
        # the hot path runs the app's middlewares around its routes and keeps its own count
        transport = request.transport if isinstance(request, web.BaseRequest) else None
        if transport is not None:
            n = answered.get(transport, 0) + 1
            if n >= limit:
                answered.pop(transport, None)
                resp.force_close()
            else:
                answered[transport] = n
        return resp

    return limit_keepalive
