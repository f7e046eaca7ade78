"""Agent helper: a tiny aiohttp app that serves operations to a swarmgate gateway.

Handlers run once per idempotency key (the gateway's operation id): a retried dispatch gets the
stored answer back instead of a second effect. Async operations answer 201 at once and complete
later through the gateway's completion URL, retrying until the gateway accepts.

Durable handlers survive the agent process (see ``_durable.py``): ``await ctx.step("name", fn,
*args)`` runs ``fn`` once per operation (its JSON result is recorded in the gateway before the
handler goes on; a later attempt, on any instance, gets the recorded result back), the final
answer of a durable operation is recorded as the journal's ``$result`` entry (a retried dispatch
after a restart gets it with no second effect), and an operation with ``heartbeat_timeout_s``
heartbeats by itself while it runs (``ctx.heartbeat(details)`` adds a checkpoint, which the next
attempt reads as ``ctx.heartbeat_details``).

    agent = AgentApp("research")

    @agent.operation("search", mode="async", heartbeat_timeout_s=30)
    async def search(ctx: OpContext, payload: Any) -> Any:
        pages = await ctx.step("fetch", fetch_pages, payload["q"])
        ctx.heartbeat({"fetched": len(pages)})
        return await ctx.step("summarize", summarize, pages)
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import aiohttp
from aiohttp import web

from gateway.domain.dispatch import RESULT_STEP
from gateway.domain.specs import AdapterKind, AgentSpec, OperationSpec, RetryPolicy
from gateway.sdk._durable import (
    LRU,
    Attempt,
    GatewayRefused,
    InputRequested,
    Stopped,
    run_handler,
)

log = logging.getLogger("swarmgate.agent")
DEFAULT_GATEWAY = "http://127.0.0.1:8080"


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
    link: Attempt | None = field(default=None, repr=False, compare=False)

    @property
    def heartbeat_details(self) -> Any:
        """The last checkpoint an earlier attempt sent with a heartbeat (None if none)."""
        return self.link.previous_details if self.link else None

    def heartbeat(self, details: Any = None) -> None:
        """Heartbeat now, with ``details`` (JSON) as the checkpoint the next attempt gets."""
        if self.link is not None:
            self.link.add_details(details)

    async def step(self, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` (sync or async) once per operation.

        A step an earlier attempt completed returns its recorded result without running
        ``fn``; otherwise the result (JSON) is recorded in the gateway before this returns.
        A step that raises records nothing.
        """
        if self.link is None:
            value = fn(*args)
            return await value if inspect.isawaitable(value) else value
        return await self.link.step(name, fn, *args)

    async def ask(
        self, prompt: str, schema: dict[str, Any] | None = None, *, name: str | None = None
    ) -> Any:
        """Ask the caller for input and return its answer (JSON, valid against ``schema``).

        Durable: the question is recorded in the gateway, this attempt ends (nothing is held
        while the caller takes its time: no connection, no heartbeat), and the caller's answer
        dispatches the operation again; the handler then runs again from the start and this
        call returns the answer. Wrap the work before it in ``ctx.step`` so it is not run
        twice. Questions are named by their order in the handler (``name`` overrides it).
        """
        if self.link is None:
            raise RuntimeError("ctx.ask needs a dispatch from a gateway")
        return await self.link.ask(prompt, schema, name)


Handler = Callable[[OpContext, Any], Awaitable[Any]]


@dataclass
class _Op:
    name: str
    handler: Handler
    mode: Literal["sync", "async"]
    spec: OperationSpec
    durable: bool = False


@dataclass
class _Job:
    task: asyncio.Task[None] | None = None
    status: int = 0
    body: bytes = b""
    state: str = "running"
    done: asyncio.Event = field(default_factory=asyncio.Event)
    link: Attempt | None = None
    asked: bool = False  # the handler asked its caller for input: no answer from this attempt


class AgentApp:
    """An agent's operations, served as an aiohttp app (``.app``) the gateway dispatches to.

    Args:
        name: the agent's name in the gateway's registry.
        description: shown in the registry and the A2A agent card.
        version: the agent's version.
    """

    def __init__(
        self, name: str, *, description: str = "", version: str = "1", max_jobs: int = 10_000
    ) -> None:
        self.name = name
        self.description = description
        self.version = version
        self._ops: dict[str, _Op] = {}
        # answers kept per key (the least recently used go first; running jobs stay)
        self._jobs: LRU[str, _Job] = LRU(max_jobs, keep=lambda j: not j.status)
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
        heartbeat_timeout_s: float | None = None,
        durable: bool | None = None,
    ) -> Callable[[Handler], Handler]:
        """Register the decorated handler as operation ``name``.

        A ``sync`` operation answers with the handler's result; an ``async`` one answers 201
        at once and completes later through the gateway's completion URL. Raise
        ``OperationFailed`` to fail the operation, ``RetryLater`` to have it dispatched again.
        With ``heartbeat_timeout_s`` the gateway expects a heartbeat at least that often while
        an async handler runs (sent by the app every third of it) and dispatches the operation
        again when they stop. A ``durable`` operation (default: the async ones) records its
        final answer in the gateway's journal, so it survives an agent restart.
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
                    heartbeat_timeout_s=heartbeat_timeout_s,
                ),
                durable=(mode == "async") if durable is None else durable,
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

    def run(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 9000,
        register: bool = True,
        gateway: str | None = None,
        token: str | None = None,
        endpoint: str | None = None,
    ) -> None:
        """Serve this agent until Ctrl-C or SIGTERM.

        With ``register`` (the default) it first registers itself, with every operation, at the
        gateway ``gateway`` (default ``SWARMGATE_URL``, else ``http://127.0.0.1:8080``) using the
        bearer ``token`` (default ``SWARMGATE_TOKEN``); it waits up to a minute for the gateway
        to come up. ``endpoint`` is the URL the gateway calls (default ``http://host:port``).
        Prints one line once it is listening.
        """
        url = (gateway or os.environ.get("SWARMGATE_URL") or DEFAULT_GATEWAY).rstrip("/")
        bearer = token or os.environ.get("SWARMGATE_TOKEN") or None
        base = endpoint or f"http://{host}:{port}"

        async def main() -> None:
            runner = web.AppRunner(self.app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, host, port)
            await site.start()
            where = f"agent {self.name} listening on {base}"
            try:
                if register:
                    from gateway.sdk.client import Client, GatewayError

                    try:
                        async with Client(url, token=bearer) as gw:
                            await gw.register(self.spec(base).to_json())
                    except GatewayError as exc:
                        raise SystemExit(f"agent {self.name}: {url} refused it: {exc}") from None
                    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                        raise SystemExit(f"agent {self.name}: cannot reach {url}: {exc}") from None
                    where += f", registered with {url}"
                print(where, flush=True)
                stop = asyncio.Event()
                loop = asyncio.get_running_loop()
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.add_signal_handler(sig, stop.set)
                await stop.wait()
            finally:
                await runner.cleanup()

        asyncio.run(main())

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
        link = Attempt(request.headers, self._http)
        ctx = OpContext(
            operation=op.name,
            key=key,
            attempt=link.attempt,
            caller=request.headers.get("Swarmgate-Caller", ""),
            headers=dict(request.headers),
            link=link,
        )
        job = self._jobs.get(key)
        if job is not None and job.status:  # already answered: same answer, no second effect
            return _stored(job)
        if job is not None and job.link is not None:  # still running here: now this attempt
            job.link.adopt(link)
        if op.mode == "sync":
            if job is not None:  # the first call for this key is still running: share it
                self.overlapping_calls += 1
                await job.done.wait()
                return _stored(job) if job.status != 503 else _unavailable(job)
            job = self._jobs[key] = _Job(link=link)
            try:
                await self._run(op, ctx, payload, job)
            finally:
                job.done.set()
                if job.status in (0, 503):
                    self._jobs.pop(key, None)  # transient: a retry runs the handler again
            if job.status == 503:
                return _unavailable(job)
            if job.asked:  # parked: the operation is pending in the gateway
                return web.json_response({"token": key, "state": "running"}, status=201)
            return _stored(job)
        if job is None:
            job = self._jobs[key] = _Job(link=link)
            callback = request.query.get("callback", "")
            auth = request.headers.get("Nexus-Callback-Authorization", "")
            job.task = asyncio.create_task(self._run_async(op, ctx, payload, job, callback, auth))
        return web.json_response({"token": key, "state": "running"}, status=201)

    async def _run(self, op: _Op, ctx: OpContext, payload: Any, job: _Job) -> None:
        link = ctx.link
        try:
            if link is not None:
                await link.load()
                stored = link.stored_answer()
                if stored is not None:  # an earlier attempt finished: its answer, no effect
                    job.status, job.state = int(stored["status"]), str(stored["state"])
                    job.body = json.dumps(stored.get("body")).encode()
                    return
            result = await run_handler(
                link if op.mode == "async" else None, op.handler(ctx, payload)
            )
        except InputRequested:
            job.asked = True
            return  # parked in the gateway until the caller answers
        except Stopped as exc:
            if exc.reason == "canceled":  # the caller asked: stop and report it
                self.canceled.append(ctx.key)
                job.status, job.state, job.body = 424, "canceled", _canceled_body()
            return  # closed or taken over by a later attempt: nothing to report
        except GatewayRefused as exc:  # async: the operation closed or moved on; sync: retry
            log.warning("%s: %s", ctx.key, exc)
            if op.mode == "sync":
                job.status, job.body = 503, str(exc).encode()
            return
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
            await self._record_answer(op, link, job)
            return
        self.effects[ctx.key] = self.effects.get(ctx.key, 0) + 1
        job.status, job.state, job.body = 200, "succeeded", json.dumps(result).encode()
        await self._record_answer(op, link, job)

    async def _record_answer(self, op: _Op, link: Attempt | None, job: _Job) -> None:
        """A durable operation's answer goes in the journal before it is given."""
        if not op.durable or link is None:
            return
        answer = {"status": job.status, "state": job.state, "body": json.loads(job.body)}
        try:
            await link.record(RESULT_STEP, answer)
        except GatewayRefused as exc:  # closed meanwhile: the answer is still given
            log.warning("%s: %s", link.steps_url, exc)

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return self._session

    async def _run_async(
        self, op: _Op, ctx: OpContext, payload: Any, job: _Job, callback: str, auth: str
    ) -> None:
        while True:
            await self._run(op, ctx, payload, job)
            if job.status != 503:
                break
            await asyncio.sleep(0.2)
        if not job.status:  # stopped (closed, or a later attempt has it): forget the key
            self._jobs.pop(ctx.key, None)
            return
        if callback:
            await self._complete(callback, auth, job, ctx.key)

    async def _complete(self, url: str, auth: str, job: _Job, key: str) -> None:
        """Deliver the completion to the gateway, retrying while it is unreachable."""
        session = self._http()
        headers = {
            "Nexus-Operation-State": job.state,
            "Content-Type": "application/json",
            "Authorization": auth,
        }
        delay = 0.1
        for _ in range(600):
            try:
                async with session.post(
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
            job.status, job.state, job.body = 424, "canceled", _canceled_body()
            # Stopped here and now: a final answer (the gateway closes the operation at once).
            return web.Response(status=200, headers={"Nexus-Operation-State": "canceled"})
        return web.Response(status=202)  # nothing running here: a request, completed later

    async def _cleanup(self, _app: web.Application) -> None:
        for job in self._jobs.values():
            if job.task is not None:
                job.task.cancel()
                with contextlib.suppress(BaseException):
                    await job.task
        if self._session is not None:
            await self._session.close()


def _canceled_body() -> bytes:
    return json.dumps(
        {
            "message": "canceled",
            "metadata": {"type": "nexus.OperationError"},
            "details": {"state": "canceled"},
        }
    ).encode()


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
