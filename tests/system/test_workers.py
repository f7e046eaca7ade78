"""``SWARMGATE_WORKERS``: several gateway processes on one port, supervised."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp

from gateway.sdk.agent import AgentApp, OpContext
from gateway.testing import ROOT, eventually
from tests.conftest import free_port, serving_agent
from tests.procs import GatewayProcess, get_json


def children(pid: int) -> set[int]:
    out = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                raw = f.read()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            out.add(int(entry))
    return out


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            raw = f.read()
    except OSError:
        return False
    return raw[raw.rindex(")") + 2 :].split()[0] != "Z"


def echo_agent() -> AgentApp:
    agent = AgentApp("echo")

    @agent.operation("say")
    async def say(ctx: OpContext, payload: object) -> object:
        return payload

    return agent


@asynccontextmanager
async def two_workers(
    pg_db: str, tmp_path: Path, **env: str
) -> AsyncIterator[tuple[GatewayProcess, int]]:
    """A gateway with SWARMGATE_WORKERS=2, once both workers run (and the supervisor's pid);
    SIGTERM to the supervisor at the end."""
    gw = GatewayProcess(pg_db, free_port(), log=tmp_path / "gw.log", SWARMGATE_WORKERS="2", **env)
    await gw.start()
    assert gw.proc is not None
    supervisor = gw.proc.pid
    try:
        await eventually(lambda: len(children(supervisor)) == 2, timeout=20, what="2 workers")
        yield gw, supervisor
    finally:
        gw.terminate()


async def test_workers_share_one_port_and_each_runs_the_starts_it_takes(
    pg_db: str, tmp_path: Path
) -> None:
    agent = echo_agent()
    async with (
        serving_agent(agent) as agent_url,
        two_workers(pg_db, tmp_path, SWARMGATE_REPLICA_ID="pool") as (gw, supervisor),
    ):
        workers = children(supervisor)
        owners: set[str] = set()
        # A new connection per request: the kernel spreads connections over the workers.
        fresh = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=fresh) as http:
            async with http.post(f"{gw.url}/api/agents", json=agent.spec(agent_url).to_json()) as r:
                assert r.status == 201
            for i in range(40):
                async with http.post(f"{gw.url}/nexus/echo/say", json={"i": i}) as r:
                    assert r.status in (200, 201), await r.text()
                    token = r.headers["Nexus-Operation-Token"]
                got = await get_json(http, f"{gw.url}/api/operations/{token}/events")
                owners |= {
                    e["data"]["owner"] for e in got["events"] if e["kind"] == "attempt.started"
                }
                if owners == {"pool-w0", "pool-w1"}:
                    break
        assert owners == {"pool-w0", "pool-w1"}
    assert gw.proc is not None and gw.proc.returncode == 0
    assert not any(alive(p) for p in workers)  # SIGTERM reached every worker


async def test_a_worker_that_dies_is_started_again(pg_db: str, tmp_path: Path) -> None:
    async with two_workers(pg_db, tmp_path) as (gw, supervisor):
        first = children(supervisor)
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        await eventually(
            lambda: len(children(supervisor) - first) == 1 and victim not in children(supervisor),
            timeout=20,
            what="the killed worker replaced",
        )
        async with aiohttp.ClientSession() as http:
            assert (await get_json(http, f"{gw.url}/readyz"))["status"] == "ready"
    assert gw.proc is not None and gw.proc.returncode == 0


def test_workers_on_sqlite_are_refused_with_a_clear_message(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "SWARMGATE_DATABASE_URL": f"sqlite:///{tmp_path}/x.db",
        "SWARMGATE_WORKERS": "2",
    }
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "SWARMGATE_WORKERS > 1 needs PostgreSQL" in done.stderr
