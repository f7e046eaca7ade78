"""The itinerary agent: a durable, heartbeating agent that the demo kills mid-task.

Run as its own process (``python -m examples.swarm.itinerary PORT EFFECTS INSTANCE``), so the
demo can SIGKILL it. ``draft`` runs three steps through ``ctx.step``; each writes a line to the
EFFECTS file when it starts and when it finishes (the paid work: model calls, tool calls), so
the demo counts how often each one ran across instances. Step ``days`` takes
``ITINERARY_DAYS_S`` seconds: the first instance is slow enough to be killed in the middle.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.sdk import AgentApp, OpContext, RetryPolicy


def itinerary_agent(effects: Path, instance: str = "itinerary") -> AgentApp:
    agent = AgentApp("itinerary", description="Drafts a day-by-day itinerary (durable steps)")
    days_s = float(os.environ.get("ITINERARY_DAYS_S", "0.2"))

    async def work(step: str, seconds: float, value: Any) -> Any:
        with effects.open("a") as f:
            f.write(f"start {step} {instance}\n")
        await asyncio.sleep(seconds)  # the paid work (an LLM or tool call)
        with effects.open("a") as f:
            f.write(f"done {step} {instance}\n")
        return {"value": value, "by": instance}

    @agent.operation(
        "draft",
        mode="async",
        heartbeat_timeout_s=1.0,
        timeout_s=120,
        retry=RetryPolicy(initial_s=0.2, max_s=1.0, jitter_s=0.1),
    )
    async def draft(ctx: OpContext, trip: Any) -> Any:
        city, nights = trip["city"], int(trip["nights"])
        sights = await ctx.step("sights", work, "sights", 0.2, ["old town", "harbour"])
        ctx.heartbeat({"done": ["sights"]})
        days = await ctx.step(
            "days", work, "days", days_s, [f"day {d + 1} in {city}" for d in range(nights)]
        )
        ctx.heartbeat({"done": ["sights", "days"]})
        polish = await ctx.step("polish", work, "polish", 0.1, f"{nights} nights in {city}")
        return {
            "title": polish["value"],
            "days": days["value"],
            "sights": sights["value"],
            "steps_by": {"sights": sights["by"], "days": days["by"], "polish": polish["by"]},
        }

    return agent


def main() -> None:
    port, effects, instance = int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    web.run_app(itinerary_agent(effects, instance).app, host="127.0.0.1", port=port, print=None)


if __name__ == "__main__":
    main()
