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

from gateway.http.hotpath._request import HotRequest
from gateway.http.hotpath._routes import Handler, HotRoute, hot_routes
from gateway.http.hotpath._server import KEEPALIVE_S, HotServer

__all__ = ["KEEPALIVE_S", "Handler", "HotRequest", "HotRoute", "HotServer", "hot_routes"]
