"""A pull worker process for the kill tests: ``python -m tests.system.pull_worker_proc
<gateway_url> <token> <worker_id> <sleep_s> <log_file>``. Its one operation, ``score``, writes
``start <op> <worker>`` to the log, sleeps, writes ``done <op> <worker>`` and answers."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

from gateway.domain.specs import RetryPolicy
from gateway.sdk.agent import AgentApp, OpContext

HEARTBEAT_TIMEOUT_S = 1.0


def build(worker_id: str, sleep_s: float, log: Path) -> AgentApp:
    agent = AgentApp("batch")

    def note(line: str) -> None:
        with log.open("a") as f:
            f.write(line + "\n")

    @agent.operation(
        "score",
        mode="async",
        heartbeat_timeout_s=HEARTBEAT_TIMEOUT_S,
        retry=RetryPolicy(initial_s=0.1, max_s=0.2, jitter_s=0.0),
    )
    async def score(ctx: OpContext, payload: Any) -> Any:
        note(f"start {ctx.key} {worker_id}")
        await asyncio.sleep(sleep_s)
        note(f"done {ctx.key} {worker_id}")
        return {"n": payload["n"], "worker": worker_id, "attempt": ctx.attempt}

    return agent


def main() -> None:
    url, token, worker_id, sleep_s, log = sys.argv[1:6]
    agent = build(worker_id, float(sleep_s), Path(log))
    agent.run_worker(url, token, concurrency=8, worker_id=worker_id, wait_s=2.0)


if __name__ == "__main__":
    main()
