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
from collections.abc import Awaitable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import aiohttp

from gateway.domain.dispatch import (
    HEADER_ATTEMPT,
    HEADER_HEARTBEAT_TIMEOUT,
    HEADER_HEARTBEAT_URL,
    HEADER_JOURNAL,
    HEADER_STEPS_URL,
)
from gateway.sdk._durable import Attempt

if TYPE_CHECKING:
    from gateway.sdk.agent import AgentApp

log = logging.getLogger("swarmgate.worker")

POLL_WAIT_S = 20.0  # one long poll's wait


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
        """Run one leased task as a pushed async dispatch runs.

        Same heartbeats, journal, stored answer and completion (through ``AgentApp``).
        """
        from gateway.sdk.agent import OpContext, _Job

        agent = self.agent
        key = str(task["operationId"])
        auth = f"Bearer {task['token']}"
        completion_url = str(task["completionUrl"])
        link = Attempt(dispatch_headers(task, self.worker_id), agent._http)
        job = agent._jobs.get(key)
        if job is not None and job.status and job.status != 503:  # answered before: resend
            await agent._complete(completion_url, auth, job, key)
            return
        if job is not None and job.link is not None:  # still running here: now this attempt
            job.link.adopt(link)
            return
        op = agent._ops.get(str(task["operation"]))
        if op is None:
            failed = _Job(status=424, state="failed")
            failed.body = json.dumps(
                {"message": f"no operation {task['operation']!r} here"}
            ).encode()
            await agent._complete(completion_url, auth, failed, key)
            return
        if "inputBase64" in task:
            payload: Any = base64.b64decode(task["inputBase64"])
        else:
            payload = task.get("input")
        ctx = OpContext(
            operation=op.name,
            key=key,
            attempt=link.attempt,
            caller=str(task.get("caller") or ""),
            headers=dict(link_headers(link, self.worker_id)),
            link=link,
        )
        job = agent._jobs[key] = _Job(link=link)
        # every pulled task heartbeats while it runs, whatever its mode (no inline answer)
        await agent._run_async(replace(op, mode="async"), ctx, payload, job, completion_url, auth)


def dispatch_headers(task: dict[str, Any], worker_id: str) -> dict[str, str]:
    """The headers a pushed dispatch of this task would carry (what ``Attempt`` reads)."""
    headers = {
        "Nexus-Callback-Authorization": f"Bearer {task['token']}",
        HEADER_ATTEMPT: str(task.get("attempt") or 1),
        "Swarmgate-Caller": str(task.get("caller") or ""),
        "Swarmgate-Worker": worker_id,
    }
    if task.get("heartbeatUrl"):
        headers[HEADER_HEARTBEAT_URL] = str(task["heartbeatUrl"])
    if task.get("stepsUrl"):
        headers[HEADER_STEPS_URL] = str(task["stepsUrl"])
    if task.get("heartbeatTimeoutS"):
        headers[HEADER_HEARTBEAT_TIMEOUT] = f"{float(task['heartbeatTimeoutS']):g}"
    journal = task.get("journal") or {}
    if journal.get("steps") or journal.get("details") is not None:
        headers[HEADER_JOURNAL] = json.dumps(journal, separators=(",", ":"))
    return headers


def link_headers(link: Attempt, worker_id: str) -> dict[str, str]:
    """What ``OpContext.headers`` shows a handler of a pulled task."""
    return {HEADER_ATTEMPT: str(link.attempt), "Swarmgate-Worker": worker_id}


async def _first(*aws: Awaitable[Any]) -> None:
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
