"""Pull workers: task queues for agents with no inbound URL (issue 12 item 4).

This room owns the queue of a pull agent (``"adapter": "pull"``). Dispatch does not call such
an agent: a claimed attempt is *parked* (``park``: no work owed, agent token ``pull-queued``,
event ``task.queued``) until one of the agent's workers polls. A poll (``poll``) leases up to
N queued tasks through the store's ``SKIP LOCKED`` claim (``Store.claim_tasks``), setting the
heartbeat deadline of each to now + the operation's ``heartbeat_timeout_s`` (or its
``attempt_timeout_s`` when it has none). Workers then heartbeat, record steps and complete
through the same endpoints as pushed agents; a worker that dies stops heartbeating, the
heartbeat sweep (``heartbeats.py``) fails its attempt retryably, the next attempt is parked
again and another worker leases it, under the same idempotency key.

A long poll waits for work parked on this replica (woken at once) and re-checks the store
every ``pull_recheck_s`` for work parked on another. Each poll records the worker's last poll
(``Store.touch_worker``), which ``status`` shows with the queue depth.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from gateway.domain.model import Operation
from gateway.domain.specs import PULL_LEASED, PULL_QUEUED, AgentSpec, OperationSpec
from gateway.engine.core import EngineCore

DEFAULT_LEASE_S = 60.0  # an operation the agent no longer lists (re-registered meanwhile)
FORGET_WORKERS_EVERY_S = 300.0


@dataclass(frozen=True, kw_only=True)
class WorkerInfo:
    worker_id: str
    last_poll_at: datetime
    leased: int

    def to_json(self) -> dict[str, Any]:
        return {
            "worker_id": self.worker_id,
            "last_poll_at": self.last_poll_at.isoformat(),
            "leased": self.leased,
        }


class PullQueues:
    def __init__(self, core: EngineCore) -> None:
        self._core = core
        self._arrivals: dict[str, asyncio.Event] = {}  # agent -> set when work is parked here
        self._forgot_at = 0.0
        self._closing = False

    def close(self) -> None:
        """The replica stops: every waiting poll answers at once, new ones do not wait."""
        self._closing = True
        for agent in list(self._arrivals):
            self.arrived(agent)

    def _arrival(self, agent: str) -> asyncio.Event:
        found = self._arrivals.get(agent)
        if found is None:
            found = self._arrivals[agent] = asyncio.Event()
        return found

    def arrived(self, agent: str) -> None:
        """Wake this replica's polls of ``agent`` (each waits on the event it saw first)."""
        event = self._arrivals.pop(agent, None)
        if event is not None:
            event.set()

    async def park(self, op: Operation, spec: OperationSpec) -> None:
        """A claimed attempt of a pull agent's operation waits for a worker."""
        core = self._core
        parked = await core.store.update_running(
            op.id,
            core.config.owner,
            work=None,
            next_attempt_at=None,
            agent_token=PULL_QUEUED,
            heartbeat_until=None,
            event=core.event(op.id, "task.queued", attempt=op.attempts),
        )
        if parked:
            self.arrived(op.service)
            core.wake_work.set()  # a cancel may have arrived meanwhile

    def leases(self, agent: AgentSpec, now: datetime) -> dict[str, datetime]:
        """Each operation's first heartbeat deadline for a task leased ``now``."""
        return {
            name: now + timedelta(seconds=spec.heartbeat_timeout_s or spec.attempt_timeout_s)
            for name, spec in agent.operations.items()
        }

    async def poll(
        self,
        agent: AgentSpec,
        worker_id: str,
        max_tasks: int,
        wait_s: float,
        gone: Callable[[], bool] = lambda: False,
    ) -> list[Operation]:
        """Lease up to ``max_tasks`` of ``agent``'s queued tasks, waiting up to ``wait_s``.

        ``gone()`` says the worker hung up (it died mid-poll): then nothing more is leased to
        it, so no task waits out a lease nobody holds.
        """
        core = self._core
        store = core.store
        await store.touch_worker(agent.name, worker_id, core.now())
        await self._forget_old_workers()
        deadline = time.monotonic() + wait_s
        while True:
            arrival = self._arrival(agent.name)  # taken before the claim: no wake-up is lost
            if gone():
                return []
            now = core.now()
            ops = await store.claim_tasks(
                agent.name,
                worker_id,
                now,
                self.leases(agent, now),
                now + timedelta(seconds=DEFAULT_LEASE_S),
                max_tasks,
            )
            remaining = deadline - time.monotonic()
            if ops or remaining <= 0 or self._closing:
                if ops:
                    await store.touch_worker(agent.name, worker_id, core.now())
                return ops
            try:
                async with asyncio.timeout(min(remaining, core.config.pull_recheck_s)):
                    await arrival.wait()
            except TimeoutError:
                pass

    async def _forget_old_workers(self) -> None:
        mono = time.monotonic()
        if mono - self._forgot_at < FORGET_WORKERS_EVERY_S:
            return
        self._forgot_at = mono
        live_s = self._core.config.worker_live_s
        await self._core.store.forget_workers(self._core.now() - timedelta(seconds=10 * live_s))

    async def status(self, agent: AgentSpec) -> tuple[int, list[WorkerInfo]]:
        """The queue depth and the live workers (polled within ``worker_live_s``)."""
        core = self._core
        counts = await core.store.pull_counts(agent.name)
        since = core.now() - timedelta(seconds=core.config.worker_live_s)
        workers = [
            WorkerInfo(worker_id=w, last_poll_at=at, leased=counts.get(PULL_LEASED + w, 0))
            for w, at in await core.store.list_workers(agent.name, since)
        ]
        return counts.get(PULL_QUEUED, 0), workers
