"""Pull workers: serve an ``AgentApp``'s handlers by long-polling the gateway for tasks.

For agents with no inbound URL (behind NAT, on a laptop, in a batch cluster): register the
agent with ``"adapter": "pull"`` (``AgentApp.pull_spec()``), then run
``agent.run_worker(gateway_url, token, concurrency=4)`` (or ``await
agent.run_worker_async(...)``) in as many processes as you like. Each worker polls
``POST /api/agents/{name}/tasks:poll`` for up to ``concurrency`` tasks at a time, runs each
task's handler, heartbeats it while it runs (when the operation declares
``heartbeat_timeout_s``; a canceled or lost task's handler is stopped) and completes it through
the gateway's completion URL, as a pushed async agent does. A worker that dies loses its tasks'
leases; the gateway gives them to another worker under the same idempotency key.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import json
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import aiohttp

if TYPE_CHECKING:
    from gateway.sdk.agent import AgentApp, _Job, _Op

log = logging.getLogger("swarmgate.worker")

POLL_WAIT_S = 20.0  # one long poll's wait
MIN_HEARTBEAT_S = 0.2


def default_worker_id() -> str:
    """``<host>-<pid>-<random>``: unique per process, readable in ``GET /api/agents/{name}``."""
    host = "".join(c if c.isalnum() or c in "-_." else "-" for c in socket.gethostname())
    return f"{host[:100]}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class PullWorker:
    """One worker process's loop: poll, run, heartbeat, complete (see the module doc)."""

    def __init__(
        self,
        agent: AgentApp,
        gateway_url: str,
        token: str,
        *,
        concurrency: int = 4,
        worker_id: str | None = None,
        wait_s: float = POLL_WAIT_S,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        self.agent = agent
        self.gateway_url = gateway_url.rstrip("/")
        self.token = token
        self.concurrency = concurrency
        self.worker_id = worker_id or default_worker_id()
        self.wait_s = wait_s
        self.running: dict[str, asyncio.Task[None]] = {}
        self.tasks_done = 0
        self._free = asyncio.Event()

    @property
    def poll_url(self) -> str:
        """Where this worker polls for tasks."""
        return f"{self.gateway_url}/api/agents/{self.agent.name}/tasks:poll"

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Serve until ``stop`` is set (or the task is cancelled); waits for running tasks."""
        stop = stop or asyncio.Event()
        headers = {"Authorization": f"Bearer {self.token}"}
        async with aiohttp.ClientSession(headers=headers) as http:
            try:
                await self._loop(http, stop)
            finally:
                for task in list(self.running.values()):
                    task.cancel()
                for task in list(self.running.values()):
                    with contextlib.suppress(BaseException):
                        await task

    async def _loop(self, http: aiohttp.ClientSession, stop: asyncio.Event) -> None:
        delay = 0.1
        while not stop.is_set():
            free = self.concurrency - len(self.running)
            if free <= 0:
                self._free.clear()
                await _first(self._free.wait(), stop.wait())
                continue
            try:
                tasks = await self._poll(http, free, stop)
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                log.warning("poll failed, retrying: %s", exc)
                await _first(asyncio.sleep(delay), stop.wait())
                delay = min(delay * 2, 5.0)
                continue
            delay = 0.1
            for task in tasks:
                key = str(task["operationId"])
                if key in self.running:  # leased again while still running here: keep one
                    continue
                running = asyncio.create_task(self._serve(http, task))
                self.running[key] = running
                running.add_done_callback(functools.partial(self._done, key))

    def _done(self, key: str, _task: asyncio.Task[None]) -> None:
        self.running.pop(key, None)
        self.tasks_done += 1
        self._free.set()

    async def _poll(
        self, http: aiohttp.ClientSession, free: int, stop: asyncio.Event
    ) -> list[dict[str, Any]]:
        body = {"max_tasks": free, "wait_s": self.wait_s, "worker_id": self.worker_id}
        timeout = aiohttp.ClientTimeout(total=self.wait_s + 30)
        async with http.post(self.poll_url, json=body, timeout=timeout) as resp:
            if resp.status != 200:
                text = await resp.text()
                if 400 <= resp.status < 500 and resp.status not in (408, 429):
                    stop.set()  # misconfigured (scope, agent, body): polling again cannot help
                    log.error("poll refused with %s: %s", resp.status, text[:500])
                    return []
                raise aiohttp.ClientResponseError(
                    resp.request_info, (), status=resp.status, message=text[:200]
                )
            data = await resp.json()
        return list(data.get("tasks") or [])

    async def _serve(self, http: aiohttp.ClientSession, task: dict[str, Any]) -> None:
        from gateway.sdk.agent import OpContext, _Job

        agent = self.agent
        key = str(task["operationId"])
        auth = f"Bearer {task['token']}"
        job = agent._jobs.get(key)
        if job is not None and job.status and job.status != 503:  # answered before: resend
            await agent._complete(str(task["completionUrl"]), auth, job, key)
            return
        op = agent._ops.get(str(task["operation"]))
        job = agent._jobs[key] = _Job()
        if op is None:
            job.status, job.state = 424, "failed"
            job.body = json.dumps({"message": f"no operation {task['operation']!r} here"}).encode()
            await agent._complete(str(task["completionUrl"]), auth, job, key)
            return
        if "inputBase64" in task:
            payload: Any = base64.b64decode(task["inputBase64"])
        else:
            payload = task.get("input")
        ctx = OpContext(
            operation=op.name,
            key=key,
            attempt=int(task.get("attempt") or 1),
            caller=str(task.get("caller") or ""),
            headers={"Swarmgate-Worker": self.worker_id},
        )
        stopped = await self._run_with_heartbeats(http, task, op, ctx, payload, job)
        if stopped:  # canceled, closed or leased to another worker: no completion from here
            agent._jobs.pop(key, None)
            return
        await agent._complete(str(task["completionUrl"]), auth, job, key)

    async def _run_with_heartbeats(
        self,
        http: aiohttp.ClientSession,
        task: dict[str, Any],
        op: _Op,
        ctx: Any,
        payload: Any,
        job: _Job,
    ) -> bool:
        """Run the handler (again after RetryLater); True if the gateway said to stop."""
        agent = self.agent
        run = asyncio.create_task(_until_final(lambda: agent._run(op, ctx, payload, job), job))
        timeout = task.get("heartbeatTimeoutS")
        if not timeout:
            await run
            return False
        every = max(MIN_HEARTBEAT_S, float(timeout) / 3)
        while True:
            done, _ = await asyncio.wait({run}, timeout=every)
            if done:
                run.result()
                return False
            if await self._heartbeat(http, task) is False:
                run.cancel()
                with contextlib.suppress(BaseException):
                    await run
                agent.canceled.append(ctx.key)
                return True

    async def _heartbeat(self, http: aiohttp.ClientSession, task: dict[str, Any]) -> bool | None:
        """True: carry on; False: stop (canceled, closed, stale); None: not heard."""
        headers = {"Authorization": f"Bearer {task['token']}"}
        body = {"attempt": task.get("attempt")}
        try:
            async with http.post(
                str(task["heartbeatUrl"]),
                json=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=10),
            ) as resp:
                if resp.status == 200:
                    answer = await resp.json()
                    return not answer.get("cancelRequested")
                if resp.status in (404, 409):
                    return False
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.warning("heartbeat failed: %s", exc)
        return None


async def _until_final(run: Callable[[], Awaitable[None]], job: _Job) -> None:
    while True:
        await run()
        if job.status != 503:  # RetryLater: try again here while the lease holds
            return
        await asyncio.sleep(0.2)


async def _first(*aws: Awaitable[Any]) -> None:
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
