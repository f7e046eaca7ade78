"""Targeted chaos scenarios, each on its own small set-up, each ending in checks:

- ``idempotency_kill``: SIGKILL between a start's commit and its answer (the gateway's
  test-only fault point), then retries with the same ``Idempotency-Key`` (SQLite);
- ``frozen_replica``: a replica SIGSTOPped for longer than its lease while an attempt is in
  flight, another takes the work over, then SIGCONT: the frozen one must not write anything
  after losing its lease (fencing) (a throw-away PostgreSQL, two replicas);
- ``fault_proxy``: a TCP proxy between the gateway and the agent that delays, resets and
  blackholes connections; every operation still succeeds exactly once (SQLite);
- ``disk_full``: the SQLite database on a size-limited tmpfs that fills up: 503 with
  Retry-After (never 500), ``/readyz`` failing, recovery when space returns (needs root to
  mount; reported as skipped otherwise).

``python -m tests.chaos`` runs them after the main run; ``--scenarios-only`` runs only them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from gateway.domain.specs import RetryPolicy
from gateway.sdk.agent import AgentApp, OpContext
from tests.chaos.cluster import Replica
from tests.chaos.pg import ThrowawayPostgres, find_pg_bin, free_port
from tests.chaos.proxy import FaultProxy

TERMINAL = {"operation.succeeded", "operation.failed", "operation.canceled", "operation.timed_out"}
FAST = RetryPolicy(initial_s=0.05, max_s=0.3, jitter_s=0.02)
BASE_ENV = {
    "SWARMGATE_AUTH_MODE": "none",
    "SWARMGATE_ALLOW_CIDRS": "127.0.0.0/8",
    "SWARMGATE_POLL_S": "0.05",
    "SWARMGATE_LEASE_S": "1",
    "SWARMGATE_BREAKER_COOLDOWN_S": "0.5",
    "SWARMGATE_SYNC_WAIT_S": "0",
    "SWARMGATE_SQLITE_SYNCHRONOUS": "NORMAL",
    "SWARMGATE_CALLBACK_TIMEOUT_S": "2",
}


@dataclass
class Outcome:
    name: str
    ok: bool
    detail: str
    elapsed_s: float = 0.0
    skipped: bool = False
    numbers: dict[str, Any] = field(default_factory=dict)


class Failed(AssertionError):
    """A scenario's check failed."""


def check(cond: bool, what: str) -> None:
    if not cond:
        raise Failed(what)


async def until(
    fn: Callable[[], Awaitable[Any]], what: str, timeout: float = 20.0, interval: float = 0.05
) -> Any:
    """Poll ``fn`` until it returns something truthy (errors count as "not yet")."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: Any = None
    while True:
        try:
            last = await fn()
            if last:
                return last
        except (aiohttp.ClientError, OSError, KeyError, TimeoutError) as exc:
            last = exc
        if loop.time() > deadline:
            raise Failed(f"{what} not reached within {timeout:g}s (last: {last!r})")
        await asyncio.sleep(interval)


def scenario_agent() -> tuple[AgentApp, set[str]]:
    agent = AgentApp("scn")
    inflight: set[str] = set()

    @agent.operation("quick", retry=FAST, attempt_timeout_s=1)
    async def quick(ctx: OpContext, payload: Any) -> Any:
        return {"n": (payload or {}).get("n")}

    @agent.operation("hold", retry=FAST, attempt_timeout_s=30)
    async def hold(ctx: OpContext, payload: Any) -> Any:
        inflight.add(ctx.key)
        try:
            await asyncio.sleep(float(payload["sleep"]))  # the stimulus: in flight meanwhile
        finally:
            inflight.discard(ctx.key)
        return {"held": payload["sleep"]}

    return agent, inflight


class Setup:
    """The agent (in this process), a work dir, and the replicas started; torn down after."""

    def __init__(self, name: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=f"swarmgate-scn-{name}-"))
        self.agent, self.inflight = scenario_agent()
        self.replicas: list[Replica] = []
        self._runner: web.AppRunner | None = None
        self.agent_url = ""
        self.http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Setup:
        self._runner = web.AppRunner(self.agent.app, access_log=None)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.agent_url = f"http://127.0.0.1:{port}"
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        return self

    async def __aexit__(self, *exc: object) -> None:
        for r in self.replicas:
            if r.proc is not None and r.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    r.proc.send_signal(signal.SIGCONT)
            r.kill()
        if self.http is not None:
            await self.http.close()
        if self._runner is not None:
            await self._runner.cleanup()
        if exc[0] is None:
            shutil.rmtree(self.dir, ignore_errors=True)

    def replica(self, db_url: str, **env: str) -> Replica:
        r = Replica(len(self.replicas), free_port(), db_url, self.dir, {**BASE_ENV, **env})
        self.replicas.append(r)
        return r

    async def register(self, replica: Replica, endpoint: str | None = None) -> None:
        assert self.http is not None
        spec = self.agent.spec(endpoint or self.agent_url).to_json()
        async with self.http.post(f"{replica.url}/api/agents", json=spec) as r:
            check(r.status == 201, f"registration answered {r.status}: {await r.text()}")

    async def start(
        self, replica: Replica, op: str, payload: Any, headers: dict[str, str] | None = None
    ) -> tuple[int, str]:
        assert self.http is not None
        async with self.http.post(
            f"{replica.url}/nexus/scn/{op}", json=payload, headers=headers or {}
        ) as r:
            return r.status, r.headers.get("Nexus-Operation-Token", "")

    async def op(self, replica: Replica, token: str) -> dict[str, Any]:
        assert self.http is not None
        async with self.http.get(f"{replica.url}/api/operations/{token}") as r:
            r.raise_for_status()
            body: dict[str, Any] = await r.json()
            return body

    async def events(self, replica: Replica, token: str) -> list[dict[str, Any]]:
        assert self.http is not None
        async with self.http.get(f"{replica.url}/api/operations/{token}/events") as r:
            r.raise_for_status()
            return list((await r.json())["events"])

    async def all_terminal(self, replica: Replica, tokens: list[str]) -> list[dict[str, Any]]:
        ops = [await self.op(replica, t) for t in tokens]
        return ops if all(o["state"] != "running" for o in ops) else []


# -- the scenarios ------------------------------------------------------------------------------


async def idempotency_kill(keys: int = 2) -> dict[str, Any]:
    async with Setup("idem") as s:
        db = f"sqlite:///{s.dir}/gw.db"
        gw = s.replica(db)
        await gw.start()
        await s.register(gw)
        tokens = []
        for i in range(keys):
            gw.base_env["SWARMGATE_TEST_FAULT"] = "after-start-commit"
            gw.kill()
            await gw.start()
            headers = {"Idempotency-Key": f"scn-key-{i}"}
            try:
                status, _ = await s.start(gw, "quick", {"n": i}, headers)
                raise Failed(f"the armed gateway answered {status} instead of dying")
            except aiohttp.ClientError:
                pass  # killed between the commit and the answer
            assert gw.proc is not None
            gw.proc.wait(10)
            del gw.base_env["SWARMGATE_TEST_FAULT"]
            await gw.start()
            status, token = await s.start(gw, "quick", {"n": i}, headers)
            check(status in (200, 201), f"retry with key {i} answered {status}, not the operation")
            again, token2 = await s.start(gw, "quick", {"n": i}, headers)
            check(again in (200, 201) and token2 == token, "a second retry got another answer")
            tokens.append(token)
        ops = await until(lambda: s.all_terminal(gw, tokens), "all operations closed")
        check(all(o["state"] == "succeeded" for o in ops), f"states {[o['state'] for o in ops]}")
        check(all(s.agent.effects.get(t) == 1 for t in tokens), f"effects {s.agent.effects}")
        assert s.http is not None
        async with s.http.get(f"{gw.url}/api/operations", params={"limit": 100}) as r:
            listed = (await r.json())["operations"]
        check(len(listed) == keys, f"{len(listed)} operations stored for {keys} keys")
        return {"kills": keys, "retries_answered": keys}


async def frozen_replica(lease_s: float = 1.0) -> dict[str, Any]:
    bin_dir = find_pg_bin()
    if bin_dir is None:
        raise Skipped("PostgreSQL server binaries not installed")
    pg = ThrowawayPostgres(bin_dir, max_connections=80)
    await pg.create()
    await pg.start()
    try:
        db = await pg.create_database("frozen")
        async with Setup("frozen") as s:
            env = {"SWARMGATE_LEASE_S": str(lease_s)}
            a, b = s.replica(db, **env), s.replica(db, **env)
            await a.start()
            await b.start()
            await s.register(a)
            hold = 3 * lease_s
            status, token = await s.start(a, "hold", {"sleep": hold})
            check(status == 201, f"start answered {status}")
            await until(lambda: _true(token in s.inflight), "the attempt in flight at the agent")
            assert a.proc is not None
            frozen_at = time.time()
            a.proc.send_signal(signal.SIGSTOP)
            a_owner, b_owner = a.owner, b.owner

            async def taken_over() -> bool:
                evs = await s.events(b, token)
                return any(
                    e["kind"] == "attempt.started" and e["data"].get("owner") == b_owner
                    for e in evs
                )

            await until(taken_over, "the work taken over by the other replica", timeout=20)
            done = await until(lambda: s.all_terminal(b, [token]), "the operation closed")
            frozen_for = time.time() - frozen_at
            a.proc.send_signal(signal.SIGCONT)  # it wakes with its attempt's answer at hand
            await until(lambda: _ready(s, a), "the thawed replica ready again")
            # Its answer was read; whatever it writes now must be refused (it lost the lease).
            await until(lambda: _true(s.agent.effects.get(token) == 1), "the agent's one effect")
            await _settled(s, a)
            evs = await s.events(b, token)
            takeover_at = min(
                datetime.fromisoformat(e["at"]).timestamp()
                for e in evs
                if e["kind"] == "attempt.started" and e["data"].get("owner") == b_owner
            )
            late = [
                e
                for e in evs
                if datetime.fromisoformat(e["at"]).timestamp() > takeover_at
                and a_owner in str(e["data"])
            ]
            terminal = [e for e in evs if e["kind"] in TERMINAL]
            check(frozen_for > lease_s, f"frozen only {frozen_for:.1f}s")
            check(done[0]["state"] == "succeeded", f"state {done[0]['state']}")
            check(not late, f"the frozen replica wrote after losing its lease: {late}")
            check(len(terminal) == 1, f"{len(terminal)} terminal events")
            return {"frozen_s": round(frozen_for, 2), "lease_s": lease_s}
    finally:
        await pg.stop()
        pg.remove()


async def fault_proxy(per_mode: int = 4) -> dict[str, Any]:
    async with Setup("proxy") as s:
        port = int(s.agent_url.rsplit(":", 1)[1])
        proxy = FaultProxy("127.0.0.1", port, delay_s=0.2)
        await proxy.start()
        try:
            gw = s.replica(f"sqlite:///{s.dir}/gw.db")
            await gw.start()
            await s.register(gw, proxy.url)
            tokens: dict[str, list[str]] = {}
            for mode in ("delay", "reset", "blackhole"):
                proxy.set_mode(mode)
                batch = []
                for i in range(per_mode):
                    status, token = await s.start(gw, "quick", {"n": i, "mode": mode})
                    check(status == 201, f"{mode}: start answered {status}")
                    batch.append(token)
                tokens[mode] = batch
                if mode != "delay":  # every operation saw the fault before the network heals
                    await until(
                        lambda b=batch: _all_failed_once(s, gw, b),  # type: ignore[misc]
                        f"{mode}: a failed attempt for each operation",
                    )
                    proxy.set_mode("pass")
                await until(lambda b=batch: s.all_terminal(gw, b), f"{mode}: all closed")
            every = [t for b in tokens.values() for t in b]
            ops = [await s.op(gw, t) for t in every]
            check(all(o["state"] == "succeeded" for o in ops), "an operation did not succeed")
            check(all(s.agent.effects.get(t) == 1 for t in every), f"effects {s.agent.effects}")
            retried: dict[str, int] = {}
            for m, b in tokens.items():
                retried[m] = sum([(await s.op(gw, t))["attempts"] >= 2 for t in b])
            check(retried["reset"] == per_mode and retried["blackhole"] == per_mode, f"{retried}")
            return {"ops": len(every), "retried": retried, "accepted": dict(proxy.accepted)}
        finally:
            await proxy.stop()


async def disk_full() -> dict[str, Any]:
    if os.geteuid() != 0:
        raise Skipped("mounting a tmpfs needs root")
    async with Setup("disk") as s:
        mnt = s.dir / "disk"
        mnt.mkdir()
        done = await asyncio.to_thread(
            subprocess.run,
            ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)],
            capture_output=True,
            check=False,
        )
        if done.returncode != 0:
            raise Skipped(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
        try:
            gw = s.replica(f"sqlite:///{mnt}/gw.db")
            await gw.start()
            await s.register(gw)
            filler = mnt / "filler"
            with contextlib.suppress(OSError), filler.open("wb") as f:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            statuses: list[int] = []

            async def refused() -> bool:
                status, _ = await s.start(gw, "quick", {"pad": "x" * 20000})
                statuses.append(status)
                check(status in (200, 201, 503), f"a start answered {status} on a full disk")
                return status == 503

            await until(refused, "a start refused with 503")
            assert s.http is not None
            async with s.http.get(f"{gw.url}/readyz") as r:
                check(r.status == 503, f"/readyz answered {r.status} on a full disk")
            filler.unlink()

            async def recovered() -> bool:
                status, _ = await s.start(gw, "quick", {})
                async with s.http.get(f"{gw.url}/readyz") as r:  # type: ignore[union-attr]
                    return status in (200, 201) and r.status == 200

            await until(recovered, "writes and readiness back", timeout=20)
            log = gw.log.read_text(errors="replace")
            check(log.count("database disk is full") == 1, "not exactly one disk-full log line")
            check(500 not in statuses, "a 500 on a full disk")
            return {"starts_until_refused": len(statuses)}
        finally:
            gw.kill()
            await asyncio.to_thread(subprocess.run, ["umount", "-l", str(mnt)], check=False)


class Skipped(Exception):
    """The scenario cannot run here (no PostgreSQL binaries, not root)."""


async def _true(value: bool) -> bool:
    return value


async def _ready(s: Setup, r: Replica) -> bool:
    assert s.http is not None
    async with s.http.get(f"{r.url}/readyz") as resp:
        return resp.status == 200


async def _settled(s: Setup, r: Replica) -> None:
    """Until the replica has nothing in flight (its attempt's answer was applied or refused)."""

    async def idle() -> bool:
        assert s.http is not None
        async with s.http.get(f"{r.url}/metrics") as resp:
            text = await resp.text()
        for line in text.splitlines():
            if line.startswith("swarmgate_inflight "):
                return float(line.split()[1]) == 0
        return True  # no such gauge: nothing more to wait for

    await until(idle, "the thawed replica idle")


async def _all_failed_once(s: Setup, gw: Replica, tokens: list[str]) -> bool:
    for t in tokens:
        evs = await s.events(gw, t)
        if not any(e["kind"] == "attempt.failed" for e in evs):
            return False
    return True


SCENARIOS: dict[str, Callable[[], Awaitable[dict[str, Any]]]] = {
    "idempotency_kill": idempotency_kill,
    "frozen_replica": frozen_replica,
    "fault_proxy": fault_proxy,
    "disk_full": disk_full,
}


async def run_scenarios(names: list[str] | None = None, limit_s: float = 60.0) -> list[Outcome]:
    out = []
    for name in names or list(SCENARIOS):
        t0 = time.monotonic()
        try:
            numbers = await asyncio.wait_for(SCENARIOS[name](), limit_s)
            out.append(Outcome(name, True, "ok", time.monotonic() - t0, numbers=numbers))
        except Skipped as exc:
            out.append(Outcome(name, True, f"skipped: {exc}", time.monotonic() - t0, True))
        except (Failed, TimeoutError) as exc:
            out.append(Outcome(name, False, str(exc) or "timed out", time.monotonic() - t0))
        print(
            f"scenario {name:<18} {'ok  ' if out[-1].ok else 'FAIL'} "
            f"{out[-1].elapsed_s:5.1f}s  {out[-1].detail} {out[-1].numbers or ''}",
            flush=True,
        )
    return out
