"""Agent helper: a tiny aiohttp app that serves operations to a swarmgate gateway.

Handlers run once per idempotency key (the gateway's operation id): a retried dispatch gets the
stored answer back instead of a second effect. Async operations answer 201 at once and complete
later through the gateway's completion URL, retrying until the gateway accepts.

    agent = AgentApp("research")

    @agent.operation("search", mode="async")
    async def search(ctx: OpContext, payload: Any) -> Any:
        return {"hits": [...]}
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import aiohttp
from aiohttp import web

from gateway.domain.specs import AdapterKind, AgentSpec, OperationSpec, RetryPolicy

log = logging.getLogger("swarmgate.agent")


class OperationFailed(Exception):
    """The operation failed for good (the gateway records it as failed; no retry)."""


class RetryLater(Exception):
    """A transient problem: the gateway should retry the dispatch later (HTTP 503)."""


@dataclass(frozen=True, kw_only=True)
class OpContext:
    """What a handler learns about the call: operation, idempotency key, attempt, caller."""

    operation: str
    key: str  # idempotency key == gateway operation id
    attempt: int
    caller: str
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[OpContext, Any], Awaitable[Any]]


@dataclass
class _Op:
    name: str
    handler: Handler
    mode: Literal["sync", "async"]
    spec: OperationSpec


@dataclass
class _Job:
    task: asyncio.Task[None] | None = None
    status: int = 0
    body: bytes = b""
    state: str = "running"
    done: asyncio.Event = field(default_factory=asyncio.Event)


class AgentApp:
    """An agent's operations, served as an aiohttp app (``.app``) the gateway dispatches to.

    Args:
        name: the agent's name in the gateway's registry.
        description: shown in the registry and the A2A agent card.
        version: the agent's version.
    """

    def __init__(self, name: str, *, description: str = "", version: str = "1") -> None:
        self.name = name
        self.description = description
        self.version = version
        self._ops: dict[str, _Op] = {}
        self._jobs: dict[str, _Job] = {}
        self.effects: dict[str, int] = {}  # key -> times the handler body ran to completion
        self.calls = 0
        self.completions_sent: dict[str, int] = {}
        self.overlapping_calls = 0  # a key dispatched again while its first call still ran
        self.canceled: list[str] = []  # keys whose running work a cancel stopped
        self.app = web.Application()
        self.app.router.add_post("/{operation}", self._start)
        self.app.router.add_post("/{operation}/cancel", self._cancel)
        self.app.on_cleanup.append(self._cleanup)
        self._session: aiohttp.ClientSession | None = None

    def operation(
        self,
        name: str,
        *,
        mode: Literal["sync", "async"] = "sync",
        description: str = "",
        input_schema: dict[str, Any] | None = None,
        output_schema: dict[str, Any] | None = None,
        timeout_s: float = 3600.0,
        attempt_timeout_s: float = 10.0,
        retry: RetryPolicy | None = None,
    ) -> Callable[[Handler], Handler]:
        """Register the decorated handler as operation ``name``.

        A ``sync`` operation answers with the handler's result; an ``async`` one answers 201
        at once and completes later through the gateway's completion URL. Raise
        ``OperationFailed`` to fail the operation, ``RetryLater`` to have it dispatched again.
        """

        def register(fn: Handler) -> Handler:
            self._ops[name] = _Op(
                name=name,
                handler=fn,
                mode=mode,
                spec=OperationSpec(
                    name=name,
                    description=description or (fn.__doc__ or "").strip(),
                    input_schema=input_schema,
                    output_schema=output_schema,
                    timeout_s=timeout_s,
                    attempt_timeout_s=attempt_timeout_s,
                    retry=retry or RetryPolicy(initial_s=0.2, max_s=5.0, jitter_s=0.2),
                ),
            )
            return fn

        return register

    def spec(self, endpoint: str) -> AgentSpec:
        """The registration of this agent served at ``endpoint``."""
        return AgentSpec(
            name=self.name,
            endpoint=endpoint,
            version=self.version,
            description=self.description,
            operations={n: o.spec for n, o in self._ops.items()},
        )

    def pull_spec(self) -> AgentSpec:
        """The registration of this agent as a pull agent (no endpoint: workers poll)."""
        return replace(self.spec(""), adapter=AdapterKind.PULL)

    def run_worker(
        self,
        gateway_url: str,
        token: str,
        *,
        concurrency: int = 4,
        worker_id: str | None = None,
        wait_s: float = 20.0,
    ) -> None:
        """Serve the handlers as a pull worker until interrupted (see ``gateway.sdk.worker``)."""
        asyncio.run(
            self.run_worker_async(
                gateway_url, token, concurrency=concurrency, worker_id=worker_id, wait_s=wait_s
            )
        )

    async def run_worker_async(
        self,
        gateway_url: str,
        token: str,
        *,
        concurrency: int = 4,
        worker_id: str | None = None,
        wait_s: float = 20.0,
        stop: asyncio.Event | None = None,
    ) -> None:
        """Serve the handlers as a pull worker until ``stop`` is set.

        Polls the gateway for up to ``concurrency`` tasks at a time, heartbeats and
        completes them through it.
        """
        from gateway.sdk.worker import PullWorker

        worker = PullWorker(
            self,
            gateway_url,
            token,
            concurrency=concurrency,
            worker_id=worker_id,
            wait_s=wait_s,
        )
        try:
            await worker.run(stop)
        finally:
            if self._session is not None:
                await self._session.close()

    # -- serving ------------------------------------------------------------------------------

    async def _start(self, request: web.Request) -> web.Response:
        self.calls += 1
        op = self._ops.get(request.match_info["operation"])
        if op is None:
            return _failure(404, "NOT_FOUND", "no such operation")
        key = request.headers.get("Idempotency-Key") or request.headers.get("Nexus-Request-Id")
        if not key:
            return _failure(400, "BAD_REQUEST", "Idempotency-Key is required")
        body = await request.read()
        try:
            payload = json.loads(body) if body else None
        except ValueError:
            return _failure(400, "BAD_REQUEST", "body must be JSON")
        ctx = OpContext(
            operation=op.name,
            key=key,
            attempt=int(request.headers.get("Swarmgate-Attempt", "1")),
            caller=request.headers.get("Swarmgate-Caller", ""),
            headers=dict(request.headers),
        )
        job = self._jobs.get(key)
        if job is not None and job.status:  # already answered: same answer, no second effect
            return _stored(job)
        if op.mode == "sync":
            if job is not None:  # the first call for this key is still running: share it
                self.overlapping_calls += 1
                await job.done.wait()
                return _stored(job) if job.status != 503 else _unavailable(job)
            job = self._jobs[key] = _Job()
            try:
                await self._run(op, ctx, payload, job)
            finally:
                job.done.set()
                if job.status in (0, 503):
                    self._jobs.pop(key, None)  # transient: a retry runs the handler again
            if job.status == 503:
                return _unavailable(job)
            return _stored(job)
        if job is None:
            job = self._jobs[key] = _Job()
            callback = request.query.get("callback", "")
            auth = request.headers.get("Nexus-Callback-Authorization", "")
            job.task = asyncio.create_task(self._run_async(op, ctx, payload, job, callback, auth))
        return web.json_response({"token": key, "state": "running"}, status=201)

    async def _run(self, op: _Op, ctx: OpContext, payload: Any, job: _Job) -> None:
        try:
            result = await op.handler(ctx, payload)
        except RetryLater as exc:
            job.status, job.body = 503, str(exc).encode()
            return
        except OperationFailed as exc:
            self.effects[ctx.key] = self.effects.get(ctx.key, 0) + 1
            job.status, job.state = 424, "failed"
            job.body = json.dumps(
                {
                    "message": str(exc) or "operation failed",
                    "metadata": {"type": "nexus.OperationError"},
                    "details": {"state": "failed"},
                }
            ).encode()
            return
        self.effects[ctx.key] = self.effects.get(ctx.key, 0) + 1
        job.status, job.state, job.body = 200, "succeeded", json.dumps(result).encode()

    async def _run_async(
        self, op: _Op, ctx: OpContext, payload: Any, job: _Job, callback: str, auth: str
    ) -> None:
        while True:
            await self._run(op, ctx, payload, job)
            if job.status != 503:
                break
            await asyncio.sleep(0.2)
        if callback:
            await self._complete(callback, auth, job, ctx.key)

    async def _complete(self, url: str, auth: str, job: _Job, key: str) -> None:
        """Deliver the completion to the gateway, retrying while it is unreachable."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        headers = {
            "Nexus-Operation-State": job.state,
            "Content-Type": "application/json",
            "Authorization": auth,
        }
        delay = 0.1
        for _ in range(600):
            try:
                async with self._session.post(
                    url, data=job.body, headers=headers, timeout=aiohttp.ClientTimeout(total=5)
                ) as resp:
                    if resp.status < 500:
                        self.completions_sent[key] = self.completions_sent.get(key, 0) + 1
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def _cancel(self, request: web.Request) -> web.Response:
        key = request.headers.get("Nexus-Operation-Token", "")
        job = self._jobs.get(key)
        if job is None:
            return _failure(404, "NOT_FOUND", "unknown operation token")
        if job.task is not None and not job.task.done():
            job.task.cancel()
            self.canceled.append(key)
            job.status, job.state = 424, "canceled"
            job.body = json.dumps(
                {
                    "message": "canceled",
                    "metadata": {"type": "nexus.OperationError"},
                    "details": {"state": "canceled"},
                }
            ).encode()
        return web.Response(status=202)

    async def _cleanup(self, _app: web.Application) -> None:
        for job in self._jobs.values():
            if job.task is not None:
                job.task.cancel()
                with contextlib.suppress(BaseException):
                    await job.task
        if self._session is not None:
            await self._session.close()


def _stored(job: _Job) -> web.Response:
    headers = {"Content-Type": "application/json"}
    if job.status == 424:
        headers["Nexus-Operation-State"] = job.state
    return web.Response(status=job.status, body=job.body, headers=headers)


def _unavailable(job: _Job) -> web.Response:
    return _failure(503, "UNAVAILABLE", job.body.decode() or "retry later", retryable=True)


def _failure(status: int, etype: str, message: str, retryable: bool | None = None) -> web.Response:
    details: dict[str, Any] = {"type": etype}
    if retryable is not None:
        details["retryableOverride"] = retryable
    return web.json_response(
        {"message": message, "metadata": {"type": "nexus.HandlerError"}, "details": details},
        status=status,
    )
