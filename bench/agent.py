"""The echo agent: a bare aiohttp server on loopback, run as its own subprocess.

It is both the baseline target (the caller POSTs to it directly, nothing durable) and the agent
the gateway dispatches to (``POST /echo?callback=...`` answered ``200`` with the input), so the
two measurements hit the very same handler.

    python -m bench.agent --port 9001 [--max-seconds 3600]

It exits when its standard input closes (the harness died) or after ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading

import uvloop
from aiohttp import web


async def echo(request: web.Request) -> web.Response:
    body = await request.read()
    return web.Response(body=body or b"null", content_type="application/json")


HOLD_S = 2.0  # how long ``POST /hold`` takes to answer by default (``--hold-s``)
HOLD_KEY = web.AppKey("hold_s", float)


async def hold(request: web.Request) -> web.Response:
    """An operation that stays running for a while (long-polls time out on it)."""
    body = await request.read()
    await asyncio.sleep(request.app[HOLD_KEY])
    return web.Response(body=body or b"null", content_type="application/json")


async def healthz(_request: web.Request) -> web.Response:
    return web.Response(text="ok")


def make_app(hold_s: float = HOLD_S) -> web.Application:
    app = web.Application()
    app[HOLD_KEY] = hold_s
    app.router.add_post("/echo", echo)
    app.router.add_post("/hold", hold)
    app.router.add_get("/healthz", healthz)
    return app


def watch_parent(stop: asyncio.Event, loop: asyncio.AbstractEventLoop) -> None:
    """Set ``stop`` once standard input reaches EOF (the parent closed it or died)."""

    def run() -> None:
        try:
            while sys.stdin.buffer.read(4096):
                pass
        except (OSError, ValueError):
            pass
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=run, name="parent-watch", daemon=True).start()


async def serve(port: int, max_seconds: float, hold_s: float = HOLD_S) -> None:
    runner = web.AppRunner(make_app(hold_s), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, reuse_address=True, backlog=1024)
    await site.start()
    print(f"bench agent listening on 127.0.0.1:{port}", flush=True)
    stop = asyncio.Event()
    watch_parent(stop, asyncio.get_running_loop())
    try:
        await asyncio.wait_for(stop.wait(), max_seconds)
    except TimeoutError:
        pass
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.agent")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-seconds", type=float, default=3600.0)
    parser.add_argument("--hold-s", type=float, default=HOLD_S)
    args = parser.parse_args(argv)
    uvloop.run(serve(args.port, args.max_seconds, args.hold_s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
