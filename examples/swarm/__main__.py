"""Run the demo swarm: a gateway (SQLite file), seven agents, a crash in the middle.

make demo            # or: python -m examples.swarm
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
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
            return {"results": results, "ran_twice": twice, "elapsed_s": elapsed}
    finally:
        gw.terminate()
        for runner in runners:
            await runner.cleanup()


def main() -> int:
    outcome = asyncio.run(run_demo(ROOT / "var" / "demo"))
    ok = len(outcome["results"]) == len(TRIPS) and not outcome["ran_twice"]
    print("\ndemo OK" if ok else "\ndemo FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
