"""The demo swarm's agents (deterministic, no model weights)."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

from gateway.sdk import AgentApp, Client, OpContext, RetryLater, RetryPolicy

DEMO_RETRY = RetryPolicy(initial_s=0.2, max_s=2.0, jitter_s=0.1)
TRIP_SCHEMA = {
    "type": "object",
    "required": ["city", "nights"],
    "properties": {
        "city": {"type": "string", "minLength": 1},
        "nights": {"type": "integer", "minimum": 1, "maximum": 30},
    },
}


def _h(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


def research_agent() -> AgentApp:
    agent = AgentApp("research", description="Looks up facts about a destination")

    @agent.operation("brief", retry=DEMO_RETRY, input_schema=TRIP_SCHEMA)
    async def brief(ctx: OpContext, trip: Any) -> Any:
        await asyncio.sleep(0.1)
        sights = ["old town", "harbour", "museum", "market", "viewpoint"]
        pick = [sights[(_h(trip["city"]) + i) % len(sights)] for i in range(3)]
        return {"city": trip["city"], "sights": pick}

    return agent


def flights_agent() -> AgentApp:
    """Flaky: about a third of first attempts fail with 503 (retried by the gateway)."""
    agent = AgentApp("flights", description="Finds flights (flaky)")
    tried: set[str] = set()

    @agent.operation("search", retry=DEMO_RETRY, input_schema=TRIP_SCHEMA)
    async def search(ctx: OpContext, trip: Any) -> Any:
        await asyncio.sleep(0.2)
        if ctx.key not in tried and _h(ctx.key) % 3 == 0:
            tried.add(ctx.key)
            raise RetryLater("upstream airline API timed out")
        price = 80 + _h(trip["city"]) % 300
        return {"flight": f"SG{_h(ctx.key) % 900 + 100}", "price_eur": price}

    return agent


def hotels_agent() -> AgentApp:
    """Slow and asynchronous: accepts at once, completes through the gateway later."""
    agent = AgentApp("hotels", description="Books hotels (slow, async)")

    @agent.operation("book", mode="async", retry=DEMO_RETRY, input_schema=TRIP_SCHEMA)
    async def book(ctx: OpContext, trip: Any) -> Any:
        await asyncio.sleep(1.5)
        per_night = 60 + _h(trip["city"] + "h") % 140
        return {
            "hotel": f"Hotel {trip['city']} {chr(65 + _h(ctx.key) % 26)}",
            "total_eur": per_night * trip["nights"],
        }

    return agent


def summariser_agent() -> AgentApp:
    agent = AgentApp("summariser", description="Writes the trip summary")

    @agent.operation("summarise", retry=DEMO_RETRY)
    async def summarise(ctx: OpContext, parts: Any) -> Any:
        f, h, r, w = parts["flights"], parts["hotels"], parts["research"], parts["weather"]
        total = f["price_eur"] + h["total_eur"]
        return {
            "summary": f"{r['city']}: fly {f['flight']}, stay at {h['hotel']}, see "
            f"{', '.join(r['sights'])}; {w['forecast']}, {int(w['high_c'])} C; "
            f"total {total} EUR",
            "total_eur": total,
        }

    return agent


LOCAL_CURRENCY = {"Kyoto": "JPY", "Oslo": "NOK", "Lima": "PEN", "Cairo": "EGP"}


def planner_agent(gateway_url: str, token: str) -> AgentApp:
    """Fans out durable calls through the gateway to four agents (one speaks A2A), then asks
    the currency agent (an MCP server) for the local price; request ids
    derive from its own key, so a retried plan (or a gateway crash) never starts a sub-call
    twice."""
    agent = AgentApp("planner", description="Plans a trip by calling the other agents")

    @agent.operation(
        "plan_trip", mode="async", retry=DEMO_RETRY, input_schema=TRIP_SCHEMA, timeout_s=120
    )
    async def plan_trip(ctx: OpContext, trip: Any) -> Any:
        async with Client(gateway_url, token=token, retry_for_s=120) as gw:
            research, flights, hotels, weather = await asyncio.gather(
                gw.call("research", "brief", trip, request_id=f"{ctx.key}/research"),
                gw.call("flights", "search", trip, request_id=f"{ctx.key}/flights"),
                gw.call("hotels", "book", trip, request_id=f"{ctx.key}/hotels"),
                gw.call("weather", "forecast", trip, request_id=f"{ctx.key}/weather"),
            )
            summary = await gw.call(
                "summariser",
                "summarise",
                {"research": research, "flights": flights, "hotels": hotels, "weather": weather},
                request_id=f"{ctx.key}/summary",
            )
            # the currency agent is an MCP server: its tool is an operation like any other
            local = await gw.call(
                "currency",
                "convert",
                {"eur": summary["total_eur"], "currency": LOCAL_CURRENCY.get(trip["city"], "EUR")},
                request_id=f"{ctx.key}/currency",
            )
            return {**summary, "local_total": local}

    return agent
