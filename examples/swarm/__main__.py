"""Run the demo swarm: a gateway (SQLite file), seven agents, a crash in the middle.

Then an agent dies too: an instance of the durable itinerary agent is SIGKILLed in the middle
of a step; a fresh instance takes the task over from its last completed step.

make demo            # or: python -m examples.swarm
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from examples.swarm.a2a_weather import serve_weather, weather_spec
from examples.swarm.agents import (
    DEMO_RETRY,
    flights_agent,
    hotels_agent,
    planner_agent,
    research_agent,
    summariser_agent,
)
from examples.swarm.itinerary import itinerary_agent
from examples.swarm.mcp_currency import currency_server, currency_spec, serve_mcp
from gateway.sdk import AgentApp, Client
from gateway.testing import GatewayProcess, free_port
from registry.auth import AuthConfig, mint_token

ROOT = Path(__file__).resolve().parents[2]
TRIPS = [("Lisbon", 3), ("Porto", 2), ("Kyoto", 5), ("Oslo", 2), ("Lima", 4), ("Cairo", 3)]


async def serve(agent: AgentApp) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(agent.app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


async def run_demo(workdir: Path, *, kill_after_s: float = 1.0) -> dict[str, Any]:
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    port = free_port()
    jwt_secret = secrets.token_urlsafe(32)
    env = {
        **os.environ,
        "SWARMGATE_DATABASE_URL": f"sqlite:///{workdir / 'swarmgate.db'}",
        "SWARMGATE_PORT": str(port),
        "SWARMGATE_HOST": "127.0.0.1",
        "SWARMGATE_JWT_SECRET": jwt_secret,
        "SWARMGATE_ALLOW_CIDRS": "127.0.0.0/8,::1/128",  # the demo's agents live on loopback
        "SWARMGATE_LEASE_S": "3",
        "SWARMGATE_POLL_S": "0.1",
        "SWARMGATE_CALLBACK_RETRY_INITIAL_S": "0.2",
        "SWARMGATE_CALLBACK_RETRY_MAX_S": "1",
    }
    auth = AuthConfig(mode="hs256", secret=jwt_secret, issuer="swarmgate", audience="swarmgate")
    admin = mint_token(auth, "demo-admin", ["admin"])
    planner_token = mint_token(auth, "planner", ["ops:start:*", "ops:read"])
    gw = GatewayProcess(env, port, log=workdir / "gateway.log")
    agents = [
        research_agent(),
        flights_agent(),
        hotels_agent(),
        summariser_agent(),
        planner_agent(gw.url, planner_token),
    ]
    runners = []
    await gw.start()
    print(f"gateway up at {gw.url} (SQLite: {workdir / 'swarmgate.db'})")
    try:
        async with (
            Client(gw.url, token=admin, retry_for_s=60) as client,
            serve_weather(free_port()) as (weather_url, weather),
            serve_mcp(currency_server(), free_port()) as currency_url,
        ):
            for agent in agents:
                runner, url = await serve(agent)
                runners.append(runner)
                await client.register(agent.spec(url).to_json())
                print(f"  registered agent {agent.name:<11} at {url}")
            await client.register(weather_spec(weather_url, DEMO_RETRY).to_json())
            print(f"  registered agent {'weather':<11} at {weather_url} (A2A JSON-RPC)")
            only = {"convert": {"retry": DEMO_RETRY.to_json()}}
            await client.register({**currency_spec("currency", currency_url), "operations": only})
            print(f"  registered agent {'currency':<11} at {currency_url} (MCP, tools listed)")
            t0 = time.monotonic()
            started = {}
            for city, nights in TRIPS:
                s = await client.start(
                    "planner",
                    "plan_trip",
                    {"city": city, "nights": nights},
                    request_id=f"trip-{city}",
                )
                started[city] = s.token
            print(f"started {len(started)} trip plans; each fans out to 5 agents")
            await asyncio.sleep(kill_after_s)
            gw.kill()
            print("*** gateway killed with SIGKILL mid-run ***")
            await asyncio.sleep(0.5)
            await gw.start()
            print("gateway restarted; in-flight work resumes from the database")
            results = {}
            for city, token in started.items():
                results[city] = await client.result("planner", "plan_trip", token, wait_s=20)
            elapsed = time.monotonic() - t0
            print(f"\nall {len(results)} trips completed in {elapsed:.1f} s:")
            for city, res in results.items():
                local = res["local_total"]
                print(f"  {city:<7} {res['summary']} ({local['amount']} {local['currency']})")
            effects = {a.name: a.effects for a in agents}
            effects["weather"] = weather.effects
            twice = {n: {k: v for k, v in e.items() if v != 1} for n, e in effects.items()}
            twice = {n: e for n, e in twice.items() if e}
            print("\neffects per agent (each must be exactly once):")
            for name, eff in effects.items():
                print(
                    f"  {name:<11} {len(eff)} operations, max runs per operation "
                    f"{max(eff.values()) if eff else 0}"
                )
            print("nothing ran twice" if not twice else f"RAN TWICE: {twice}")
            token, title = started["Lisbon"], "planner/plan_trip"
            flights_ops = await client.operations(service="flights", limit=100)
            retried = [o for o in flights_ops if o["attempts"] > 1]
            if retried:  # show one the flaky agent made the gateway retry
                token, title = retried[0]["id"], "flights/search (retried)"
            print(f"\nhistory of {title} {token}:")
            for ev in await client.history(token):
                data = {k: v for k, v in ev["data"].items() if v not in (None, "")}
                print(f"  #{ev['id']:<4} {ev['at'][11:23]}  {ev['kind']:<22} {json.dumps(data)}")
            agent_kill = await kill_an_agent(client, workdir)
            return {
                "results": results,
                "ran_twice": twice,
                "elapsed_s": elapsed,
                "agent_kill": agent_kill,
            }
    finally:
        gw.terminate()
        for runner in runners:
            await runner.cleanup()


def spawn_itinerary(
    port: int, effects: Path, instance: str, days_s: float
) -> subprocess.Popen[bytes]:
    env = {**os.environ, "ITINERARY_DAYS_S": str(days_s), "PYTHONPATH": str(ROOT)}
    args = [sys.executable, "-m", "examples.swarm.itinerary", str(port), str(effects), instance]
    return subprocess.Popen(args, cwd=ROOT, env=env)


async def _listening(port: int, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def kill_an_agent(client: Client, workdir: Path) -> dict[str, Any]:
    """Act two: SIGKILL an agent instance mid-step; a fresh one resumes from the journal."""
    effects = workdir / "itinerary-effects.txt"
    port = free_port()
    print("\nagents die too: the durable itinerary agent, killed in the middle of a step")
    first = spawn_itinerary(port, effects, "itinerary-1", days_s=60)
    second: subprocess.Popen[bytes] | None = None
    try:
        await _listening(port)
        url = f"http://127.0.0.1:{port}"
        await client.register(itinerary_agent(effects).spec(url).to_json())
        print(f"  registered agent itinerary   at {url} (instance itinerary-1, pid {first.pid})")
        s = await client.start(
            "itinerary", "draft", {"city": "Lisbon", "nights": 3}, request_id="itinerary-Lisbon"
        )
        while "start days itinerary-1" not in _lines(effects):
            await asyncio.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        print("*** agent instance itinerary-1 killed with SIGKILL in the middle of step 'days' ***")
        second = spawn_itinerary(port, effects, "itinerary-2", days_s=0.2)
        print(f"  started a fresh instance itinerary-2 on the same URL (pid {second.pid})")
        result = await client.result("itinerary", "draft", s.token, wait_s=30)
        history = await client.history(s.token)
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(10)
    print(f"\nhistory of itinerary/draft {s.token}:")
    for ev in history:
        data = {k: v for k, v in ev["data"].items() if v not in (None, "")}
        print(f"  #{ev['id']:<4} {ev['at'][11:23]}  {ev['kind']:<26} {json.dumps(data)}")
    lines = _lines(effects)
    done = {
        step: sum(ln.startswith(f"done {step} ") for ln in lines)
        for step in ("sights", "days", "polish")
    }
    ran_twice = {step: n for step, n in done.items() if n != 1}
    print("\nsteps completed (each must be exactly once):")
    for step, by in result["steps_by"].items():
        print(f"  {step:<7} completed {done[step]}x, by {by}")
    kinds = [ev["kind"] for ev in history]
    resumed = "attempt.heartbeat_timeout" in kinds and result["steps_by"]["polish"] == "itinerary-2"
    print(
        "resumed on another instance from the last completed step; no completed step ran again"
        if resumed and not ran_twice
        else f"RESUME FAILED: {ran_twice or kinds}"
    )
    return {
        "result": result,
        "kinds": kinds,
        "completed": done,
        "ran_twice": ran_twice,
        "resumed": resumed,
    }


def _lines(effects: Path) -> list[str]:
    return effects.read_text().splitlines() if effects.exists() else []


def main() -> int:
    outcome = asyncio.run(run_demo(ROOT / "var" / "demo"))
    ok = (
        len(outcome["results"]) == len(TRIPS)
        and not outcome["ran_twice"]
        and outcome["agent_kill"]["resumed"]
        and not outcome["agent_kill"]["ran_twice"]
    )
    print("\ndemo OK" if ok else "\ndemo FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
