"""The three measured units of work and the loopback callback receiver.

baseline   caller -> echo agent, a plain aiohttp POST (nothing durable)
start      caller -> gateway ``POST /nexus/bench/echo`` with ``Nexus-Request-Id``; answered 201
           right after the start commits (``SWARMGATE_SYNC_WAIT_S=0``). The dispatch to the
           agent and the completion still run inside the gateway in the background.
lifecycle  start with ``?callback=`` -> dispatch -> agent result -> terminal state -> callback
           delivered to the receiver in this process; the unit ends when the callback arrives
           (end-to-end latency: start sent -> callback received).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import quote

from aiohttp import web

from bench.load import OpFn, Sample
from gateway.domain.dispatch import Transport, TransportError

SCENARIOS = ("baseline", "start", "lifecycle")
SERVICE, OPERATION = "bench", "echo"


def payload(size: int, seq: int) -> bytes:
    head = f'{{"seq": {seq}, "pad": "'
    tail = '"}'
    return (head + "x" * max(0, size - len(head) - len(tail)) + tail).encode()


@dataclass
class Receiver:
    """Callback receiver: resolves the future registered for each request id."""

    pending: dict[str, asyncio.Future[tuple[float, str]]] = field(default_factory=dict)
    received: int = 0
    unexpected: int = 0  # duplicates (at-least-once) or callbacks after the unit gave up

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/cb/{rid}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        now = time.perf_counter()
        await request.read()
        self.arrived(
            request.match_info["rid"], now, request.headers.get("Nexus-Operation-State", "")
        )
        return web.Response(status=200)

    def arrived(self, rid: str, at: float, state: str) -> None:
        """A callback for unit ``rid`` arrived at ``at`` (``perf_counter``) saying ``state``."""
        self.received += 1
        fut = self.pending.pop(rid, None)
        if fut is None or fut.done():
            self.unexpected += 1
        else:
            fut.set_result((at, state))

    def expect(self, rid: str) -> asyncio.Future[tuple[float, str]]:
        fut: asyncio.Future[tuple[float, str]] = asyncio.get_running_loop().create_future()
        self.pending[rid] = fut
        return fut


def _fail(intended: float, error: str) -> Sample:
    return Sample(intended=intended, done=time.perf_counter(), ok=False, error=error)


def baseline_op(http: Transport, agent_url: str, size: int, timeout_s: float) -> OpFn:
    url = f"{agent_url}/echo"
    headers = {"Content-Type": "application/json"}

    async def op(seq: int, intended: float) -> Sample:
        try:
            r = await http.request(
                "POST", url, headers=headers, body=payload(size, seq), timeout_s=timeout_s
            )
            status = r.status
        except TransportError as exc:
            return _fail(intended, f"{type(exc).__name__}: {exc}")
        done = time.perf_counter()
        if status != 200:
            return Sample(intended, done, False, error=f"HTTP {status}")
        return Sample(intended, done, True, {"latency": done - intended})

    return op


AuthFor = Callable[[int], dict[str, str]]  # the caller's headers for unit ``seq``
Started = Callable[[int, bytes], None]  # unit ``seq`` got its 201 with this body


def start_op(
    http: Transport,
    gw_url: str,
    run_id: str,
    size: int,
    timeout_s: float,
    auth: AuthFor,
) -> OpFn:
    url = f"{gw_url}/nexus/{SERVICE}/{OPERATION}"

    async def op(seq: int, intended: float) -> Sample:
        headers = {
            "Content-Type": "application/json",
            "Nexus-Request-Id": f"{run_id}-{seq}",
            **auth(seq),
        }
        try:
            r = await http.request(
                "POST", url, headers=headers, body=payload(size, seq), timeout_s=timeout_s
            )
            status = r.status
        except TransportError as exc:
            return _fail(intended, f"{type(exc).__name__}: {exc}")
        done = time.perf_counter()
        if status not in (200, 201):
            return Sample(intended, done, False, error=f"HTTP {status}")
        return Sample(intended, done, True, {"start": done - intended})

    return op


def lifecycle_op(
    http: Transport,
    gw_url: str,
    receiver: Receiver,
    receiver_url: str,
    run_id: str,
    size: int,
    timeout_s: float,
    auth: AuthFor,
    on_started: Started | None = None,
) -> OpFn:
    url = f"{gw_url}/nexus/{SERVICE}/{OPERATION}"

    async def op(seq: int, intended: float) -> Sample:
        rid = f"{run_id}-{seq}"
        headers = {"Content-Type": "application/json", "Nexus-Request-Id": rid, **auth(seq)}
        callback = quote(f"{receiver_url}/cb/{rid}", safe="")
        fut = receiver.expect(rid)
        try:
            r = await http.request(
                "POST",
                f"{url}?callback={callback}",
                headers=headers,
                body=payload(size, seq),
                timeout_s=timeout_s,
            )
            status = r.status
        except TransportError as exc:
            receiver.pending.pop(rid, None)
            return _fail(intended, f"start {type(exc).__name__}: {exc}")
        started = time.perf_counter()
        if status not in (200, 201):
            receiver.pending.pop(rid, None)
            return Sample(intended, started, False, error=f"start HTTP {status}")
        if on_started is not None:
            on_started(seq, r.body)
        try:
            arrived, state = await asyncio.wait_for(fut, timeout_s)
        except TimeoutError:
            receiver.pending.pop(rid, None)
            return _fail(intended, "callback timed out")
        if state != "succeeded":
            return Sample(intended, arrived, False, error=f"callback state {state!r}")
        return Sample(
            intended, arrived, True, {"start": started - intended, "e2e": arrived - intended}
        )

    return op
