"""The demanding user next to the measured load (``--side-rate R``), and many callers.

While a scenario runs, :class:`SideLoad` sends ``R`` extra requests per second (open loop),
taking turns between the read paths and the paths that tend to leave state behind:

info      ``GET /nexus/bench/echo?token=`` of a recent lifecycle operation
result    ``GET /nexus/bench/echo/result?token=`` of one (200, or 412 while running)
show      ``GET /api/operations/{id}`` of one
longpoll  start a ``hold`` operation (the echo agent answers it after ``--hold-s``), then
          long-poll its result with ``wait=200ms``: the poll times out (408)
sse       open ``GET /api/operations/{id}/stream`` of a held operation, read the first frame
          and disconnect while the operation still runs

Every request of a unit (and with ``--callers N`` every lifecycle start) carries the token of
caller ``seq % N`` (``--auth hs256``): N distinct principals, each with its own verified-JWT
cache entry and callback signing secret. Counts per action and status go into the result.
"""

from __future__ import annotations

import asyncio
import collections
import json
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from adapters.transport import HttpTransport
from gateway.domain.dispatch import TransportError
from gateway.security.netguard import OutboundPolicy
from registry.auth import AuthConfig, mint_token

ACTIONS = ("info", "result", "show", "longpoll", "sse")
HOLD_OPERATION = "hold"
LONGPOLL_WAIT = "200ms"


class Callers:
    """Bearer headers of caller ``seq % n`` (minted on first use, kept: at most ``n``)."""

    def __init__(self, cfg: AuthConfig | None, n: int, scopes: tuple[str, ...]) -> None:
        self.cfg = cfg
        self.n = max(1, n)
        self.scopes = scopes
        self._headers: dict[int, dict[str, str]] = {}

    def headers(self, seq: int) -> dict[str, str]:
        if self.cfg is None:
            return {}
        k = seq % self.n
        found = self._headers.get(k)
        if found is None:
            sub = "bench" if self.n == 1 else f"bench-caller-{k}"
            token = mint_token(self.cfg, sub, self.scopes, ttl_s=4 * 3600)
            found = self._headers[k] = {"Authorization": "Bearer " + token}
        return found


@dataclass
class SideLoad:
    """Open-loop side requests at ``rate`` per second until :meth:`stop`."""

    gw_url: str
    rate: float
    callers: Callers
    run_id: str
    timeout_s: float = 30.0
    max_outstanding: int = 256
    recent: collections.deque[tuple[str, int]] = field(
        default_factory=lambda: collections.deque(maxlen=4096)
    )
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    _stop: bool = False
    _cursor: int = 0

    def started(self, seq: int, body: bytes) -> None:
        """A lifecycle start answered: remember its id (and caller) for the read paths."""
        try:
            op_id = json.loads(body)["id"]
        except (ValueError, KeyError, TypeError):
            return
        self.recent.append((str(op_id), seq))

    def stop(self) -> None:
        self._stop = True

    def _count(self, action: str, outcome: str) -> None:
        per = self.counts.setdefault(action, {})
        per[outcome] = per.get(outcome, 0) + 1

    def _pick(self) -> tuple[str, int] | None:
        if not self.recent:
            return None
        self._cursor = (self._cursor + 7919) % len(self.recent)
        return self.recent[self._cursor]

    async def run(self) -> None:
        http = HttpTransport(OutboundPolicy.loopback_allowed(), limit=self.max_outstanding)
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=self.max_outstanding))
        slots = asyncio.Semaphore(self.max_outstanding)
        tasks: set[asyncio.Task[None]] = set()
        t0 = time.perf_counter()
        seq = 0
        try:
            while not self._stop:
                delay = t0 + seq / self.rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                    continue
                if slots.locked():
                    self._count("_dropped", "no slot")
                    seq += 1
                    continue
                await slots.acquire()
                action = ACTIONS[seq % len(ACTIONS)]
                task = asyncio.create_task(self._one(http, session, action, seq, slots))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                seq += 1
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            await http.close()
            await session.close()

    async def _one(
        self,
        http: HttpTransport,
        session: aiohttp.ClientSession,
        action: str,
        seq: int,
        slots: asyncio.Semaphore,
    ) -> None:
        try:
            outcome = await self._act(http, session, action, seq)
        except (TransportError, aiohttp.ClientError, TimeoutError) as exc:
            outcome = type(exc).__name__
        finally:
            slots.release()
        self._count(action, outcome)

    async def _get(self, http: HttpTransport, url: str, headers: dict[str, str]) -> str:
        r = await http.request("GET", url, headers=headers, body=None, timeout_s=self.timeout_s)
        return str(r.status)

    async def _act(
        self, http: HttpTransport, session: aiohttp.ClientSession, action: str, seq: int
    ) -> str:
        base = f"{self.gw_url}/nexus/bench"
        if action in ("info", "result", "show"):
            picked = self._pick()
            if picked is None:
                return "no operation yet"
            op_id, owner = picked
            headers = self.callers.headers(owner)
            if action == "info":
                return await self._get(http, f"{base}/echo?token={op_id}", headers)
            if action == "result":
                return await self._get(http, f"{base}/echo/result?token={op_id}", headers)
            return await self._get(http, f"{self.gw_url}/api/operations/{op_id}", headers)
        headers = self.callers.headers(seq)
        start = await http.request(
            "POST",
            f"{base}/{HOLD_OPERATION}",
            headers={
                **headers,
                "Content-Type": "application/json",
                "Nexus-Request-Id": f"{self.run_id}-side-{seq}",
            },
            body=b'{"hold": true}',
            timeout_s=self.timeout_s,
        )
        if start.status != 201:
            return f"start {start.status}"
        op_id = json.loads(start.body)["id"]
        if action == "longpoll":
            url = f"{base}/{HOLD_OPERATION}/result?token={op_id}&wait={LONGPOLL_WAIT}"
            return await self._get(http, url, headers)
        url = f"{self.gw_url}/api/operations/{op_id}/stream"
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        async with session.get(url, headers=headers, timeout=timeout) as r:
            if r.status != 200:
                return str(r.status)
            while True:  # up to the first event frame, then leave (the connection closes)
                line = await r.content.readline()
                if not line or line.startswith(b"event:"):
                    break
            r.close()
        return "read one frame, disconnected"

    def summary(self) -> dict[str, Any]:
        return {"rate_per_s": self.rate, "callers": self.callers.n, "counts": self.counts}
