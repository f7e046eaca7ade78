"""A durable agent process for kill tests: ``python -m tests.system.durable_agent PORT FILE``.

Operation ``task`` (async, heartbeating every third of a second) runs three steps; each
appends a line to FILE when it starts and when it finishes, so the test counts effects across
processes. Step ``b`` takes ``B_SLEEP_S`` seconds (environment), long enough for a SIGKILL to
land in the middle of it. Operation ``charge`` has one effect and no steps; with
``DIE_BEFORE_COMPLETE=1`` the process SIGKILLs itself after the answer is recorded in the
journal and before the completion reaches the gateway.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.domain.specs import RetryPolicy
from gateway.sdk import AgentApp, OpContext


class DyingAgentApp(AgentApp):
    """Dies (SIGKILL, no clean-up) at the worst moment: answer recorded, not yet delivered."""

    async def _complete(self, url: str, auth: str, job: Any, key: str) -> None:
        if os.environ.get("DIE_BEFORE_COMPLETE") == "1":
            os.kill(os.getpid(), signal.SIGKILL)
        await super()._complete(url, auth, job, key)


def build(effects: Path) -> AgentApp:
    agent = DyingAgentApp("durable")
    pid = os.getpid()

    def note(line: str) -> None:
        with effects.open("a") as f:
            f.write(f"{line} {pid}\n")

    async def work(name: str, seconds: float, value: Any) -> Any:
        note(f"start {name}")
        await asyncio.sleep(seconds)
        note(f"done {name}")
        return value

    @agent.operation(
        "task",
        mode="async",
        heartbeat_timeout_s=1.0,
        retry=RetryPolicy(initial_s=0.1, max_s=0.5, jitter_s=0.05),
    )
    async def task(ctx: OpContext, payload: Any) -> Any:
        a = await ctx.step("a", work, "a", 0.05, {"a": payload["n"]})
        ctx.heartbeat({"after": "a"})
        b = await ctx.step("b", work, "b", float(os.environ.get("B_SLEEP_S", "0.05")), [1, 2])
        ctx.heartbeat({"after": "b"})
        c = await ctx.step("c", work, "c", 0.05, "c")
        return {"a": a, "b": b, "c": c, "previous": ctx.heartbeat_details}

    @agent.operation(
        "charge",
        mode="async",
        heartbeat_timeout_s=1.0,
        retry=RetryPolicy(initial_s=0.1, max_s=0.5, jitter_s=0.05),
    )
    async def charge(ctx: OpContext, payload: Any) -> Any:
        note("charged")
        return {"charged": payload["n"]}

    return agent


def main() -> None:
    port, effects = int(sys.argv[1]), Path(sys.argv[2])
    web.run_app(build(effects).app, host="127.0.0.1", port=port, print=None)


if __name__ == "__main__":
    main()
