"""The in-memory store's pull queues and workers (see ``pull.PullTables``)."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime

from gateway.domain.model import Event, Operation, OperationState
from gateway.domain.specs import PULL_LEASED, PULL_QUEUED
from gateway.store.memory_records import MemoryTables


class MemoryPull(MemoryTables):
    """Pull queues (operations with the ``pull-queued`` token) and workers' last polls."""

    def __init__(self) -> None:
        super().__init__()
        self._workers: dict[tuple[str, str], datetime] = {}

    async def claim_tasks(
        self,
        service: str,
        worker_id: str,
        now: datetime,
        leases: Mapping[str, datetime],
        default_until: datetime,
        limit: int,
    ) -> list[Operation]:
        queued = sorted(
            (
                op
                for op in self._ops.values()
                if op.service == service
                and op.state is OperationState.RUNNING
                and op.work is None
                and op.agent_token == PULL_QUEUED
                and op.cancel_requested_at is None
            ),
            key=lambda o: o.created_at,
        )[: max(0, limit)]
        out = []
        for op in queued:
            leased = replace(
                op,
                agent_token=PULL_LEASED + worker_id,
                heartbeat_until=leases.get(op.operation, default_until),
            )
            self._ops[op.id] = leased
            self._add_event(
                Event(
                    operation_id=op.id,
                    kind="attempt.leased",
                    at=now,
                    data={"attempt": op.attempts, "worker_id": worker_id},
                )
            )
            out.append(copy.deepcopy(leased))
        return out

    async def touch_worker(self, agent: str, worker_id: str, at: datetime) -> None:
        self._workers[(agent, worker_id)] = at

    async def list_workers(self, agent: str, since: datetime) -> list[tuple[str, datetime]]:
        return sorted((w, at) for (a, w), at in self._workers.items() if a == agent and at >= since)

    async def forget_workers(self, before: datetime) -> int:
        old = [k for k, at in self._workers.items() if at < before]
        for k in old:
            del self._workers[k]
        return len(old)

    async def pull_counts(self, service: str) -> dict[str, int]:
        counts: dict[str, int] = {}
        for op in self._ops.values():
            token = op.agent_token or ""
            if (
                op.service == service
                and op.state is OperationState.RUNNING
                and op.work is None
                and token.startswith("pull-")
            ):
                counts[token] = counts.get(token, 0) + 1
        return counts
