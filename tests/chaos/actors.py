"""The agents and the callback receiver the chaos load talks to (in the harness process).

The agent is a real ``AgentApp`` (it dedupes on Idempotency-Key and counts ``effects`` per
key). Faults are driven by the operation's own payload, so a run is reproducible per seed:

- ``gate_fail``: the first N dispatches of a key are refused with 503 UNAVAILABLE before the
  agent even looks at them (sync and async operations alike);
- ``retry_later``: a sync handler raises RetryLater on its first N runs for a key;
- ``sleep``: slow answers (sync) or slow completions (async);
- ``hang``: an async operation that is accepted and never completes (its schedule-to-close
  timeout must end it);
- ``broken``: a permanent OperationFailed (424).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from gateway.domain.specs import RetryPolicy
from gateway.sdk.agent import AgentApp, OpContext, OperationFailed, RetryLater
from gateway.security import webhooks

AGENT_NAME = "chaos"
CHAOS_RETRY = RetryPolicy(initial_s=0.1, max_s=0.5, jitter_s=0.05)

# operation name -> (expected final state, expected terminal event kind)
EXPECTED: dict[str, tuple[str, str]] = {
    "quick": ("succeeded", "operation.succeeded"),
    "slow": ("succeeded", "operation.succeeded"),
    "slow_async": ("succeeded", "operation.succeeded"),
    "broken": ("failed", "operation.failed"),
    "hang": ("failed", "operation.timed_out"),
}
HAS_EFFECT = {"quick", "slow", "slow_async", "broken"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class AgentStats:
    gate_refusals: int = 0
    retry_laters: int = 0
    handler_runs: dict[str, int] = field(default_factory=dict)


def chaos_agent(*, op_timeout_s: float, hang_timeout_s: float) -> tuple[AgentApp, AgentStats]:
    agent = AgentApp(AGENT_NAME, description="chaos test agent")
    stats = AgentStats()
    gate_seen: dict[str, int] = {}

    @web.middleware
    async def gate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method == "POST" and not request.path.endswith("/cancel"):
            key = request.headers.get("Idempotency-Key", "")
            try:
                payload = json.loads(await request.read())  # cached: the handler reads it too
            except ValueError:
                payload = None
            want = int(payload.get("gate_fail", 0)) if isinstance(payload, dict) else 0
            seen = gate_seen.get(key, 0)
            if seen < want:
                gate_seen[key] = seen + 1
                stats.gate_refusals += 1
                return web.json_response(
                    {
                        "message": "chaos: agent temporarily unavailable",
                        "metadata": {"type": "nexus.HandlerError"},
                        "details": {"type": "UNAVAILABLE", "retryableOverride": True},
                    },
                    status=503,
                )
        return await handler(request)

    agent.app.middlewares.append(gate)

    def run_counted(ctx: OpContext, payload: Any) -> None:
        n = stats.handler_runs[ctx.key] = stats.handler_runs.get(ctx.key, 0) + 1
        if n <= int(payload.get("retry_later", 0)):
            stats.retry_laters += 1
            raise RetryLater("chaos: not yet")

    common: dict[str, Any] = {
        "retry": CHAOS_RETRY,
        "timeout_s": op_timeout_s,
        "attempt_timeout_s": 5.0,
    }

    @agent.operation("quick", **common)
    async def quick(ctx: OpContext, payload: Any) -> Any:
        run_counted(ctx, payload)
        return {"i": payload["i"], "op": "quick"}

    @agent.operation("slow", **common)
    async def slow(ctx: OpContext, payload: Any) -> Any:
        run_counted(ctx, payload)
        await asyncio.sleep(float(payload["sleep"]))
        return {"i": payload["i"], "op": "slow"}

    @agent.operation("slow_async", mode="async", **common)
    async def slow_async(ctx: OpContext, payload: Any) -> Any:
        await asyncio.sleep(float(payload["sleep"]))
        return {"i": payload["i"], "op": "slow_async"}

    @agent.operation("broken", **common)
    async def broken(ctx: OpContext, payload: Any) -> Any:
        run_counted(ctx, payload)
        raise OperationFailed("chaos: this one always fails")

    @agent.operation(
        "hang",
        mode="async",
        retry=CHAOS_RETRY,
        timeout_s=hang_timeout_s,
        attempt_timeout_s=5.0,
    )
    async def hang(ctx: OpContext, payload: Any) -> Any:
        await asyncio.sleep(24 * 3600)  # never completes: the gateway's timeout must end it
        return None

    return agent, stats


@dataclass
class Arrival:
    webhook_id: str
    state: str
    at: float
    signed_ok: bool


class CallbackReceiver:
    """Records every callback (webhook-id per operation token); can be stopped and restarted
    on the same port; refuses a small, seeded fraction with 503."""

    def __init__(self, port: int, *, refuse_fraction: float, seed: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.secrets: list[str] = []  # the caller's signing secret(s), set once known
        self.refuse_fraction = refuse_fraction
        self.rng = random.Random(seed)
        self.arrivals: dict[str, list[Arrival]] = {}
        self.refused = 0
        self.bad_signatures: Counter[str] = Counter()  # reason -> count
        self.missing_token = 0
        self.drops = 0
        self.up = False
        self._runner: web.AppRunner | None = None

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self.handle)
        return app

    async def start(self) -> None:
        runner = web.AppRunner(self._app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self.port, reuse_address=True, shutdown_timeout=1.0)
        await site.start()
        self._runner = runner
        self.up = True

    async def stop(self) -> None:
        self.up = False
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        token = request.headers.get("Nexus-Operation-Token", "")
        signed_ok = True
        wid = request.headers.get("webhook-id", "")
        try:
            if not self.secrets:
                raise webhooks.WebhookVerificationError("receiver has no secret yet")
            wid = webhooks.verify(self.secrets, request.headers, body)
        except webhooks.WebhookVerificationError as exc:
            signed_ok = False
            self.bad_signatures[str(exc)] += 1
        if not token:
            self.missing_token += 1
        self.arrivals.setdefault(token, []).append(
            Arrival(
                webhook_id=wid,
                state=request.headers.get("Nexus-Operation-State", ""),
                at=time.time(),
                signed_ok=signed_ok,
            )
        )
        if self.rng.random() < self.refuse_fraction:
            self.refused += 1
            return web.Response(status=503, headers={"Retry-After": "0"})
        return web.Response(status=200)

    def ids_for(self, token: str) -> set[str]:
        return {a.webhook_id for a in self.arrivals.get(token, [])}

    @property
    def total_arrivals(self) -> int:
        return sum(len(v) for v in self.arrivals.values())
