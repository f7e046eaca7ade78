"""The SDK's durable helpers without a network: the bounded job map and dispatch headers."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import aiohttp

from gateway.domain.dispatch import (
    HEADER_JOURNAL,
    HEADER_JOURNAL_OMITTED,
    JOURNAL_HEADER_MAX,
    DispatchRequest,
    Journal,
)
from gateway.domain.model import Operation, OperationState, StepRecord
from gateway.domain.specs import AgentSpec, OperationSpec
from gateway.sdk._durable import LRU, Attempt

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_the_job_map_drops_the_least_recently_used_finished_jobs_and_keeps_running_ones() -> None:
    lru: LRU[str, str] = LRU(2, keep=lambda v: v == "running")
    lru["a"] = "running"
    lru["b"] = "done"
    lru["c"] = "done"
    assert lru.get("a") == "running" and lru.get("b") is None and len(lru) == 2
    lru.get("c")
    lru["d"] = "done"
    assert lru.get("c") is None and lru.get("d") == "done" and lru.get("a") == "running"


def request(journal: Journal | None, hb: float | None = 30) -> DispatchRequest:
    op = Operation(
        id="op-1",
        service="s",
        operation="o",
        state=OperationState.RUNNING,
        caller="c",
        created_at=T0,
        attempts=2,
    )
    spec = OperationSpec(name="o", heartbeat_timeout_s=hb)
    return DispatchRequest(
        operation=op,
        agent=AgentSpec(name="s", endpoint="http://agent", operations={"o": spec}),
        spec=spec,
        attempt=2,
        completion_url="http://gw/api/completions/op-1",
        completion_token="tok",
        timeout_s=10,
        heartbeat_url="http://gw/api/operations/op-1/heartbeat",
        steps_url="http://gw/api/operations/op-1/steps",
        journal=journal,
    )


def step(name: str, result: object) -> StepRecord:
    return StepRecord(operation_id="op-1", name=name, result=result, at=T0, attempt=1)


async def test_an_attempt_reads_the_journal_and_checkpoint_its_dispatch_carried() -> None:
    headers = request(Journal(steps=[step("a", {"x": "é"})], details={"page": 2})).journal_headers()
    headers["Nexus-Callback-Authorization"] = "Bearer tok"
    headers[HEADER_JOURNAL].encode("ascii")  # header-safe
    async with aiohttp.ClientSession() as http:
        link = Attempt(headers, lambda: http)
    assert (link.attempt, link.heartbeat_timeout_s) == (2, 30.0)
    assert link.steps == {"a": {"x": "é"}} and link.previous_details == {"page": 2}
    assert link.steps_url == "http://gw/api/operations/op-1/steps"


def test_a_journal_too_big_for_a_header_is_left_for_the_agent_to_fetch() -> None:
    big = Journal(steps=[step("a", "x" * JOURNAL_HEADER_MAX)])
    headers = request(big).journal_headers()
    assert HEADER_JOURNAL not in headers and headers[HEADER_JOURNAL_OMITTED] == "1"
    first = request(None, hb=None).journal_headers()
    assert set(first) == {"Swarmgate-Attempt", "Swarmgate-Heartbeat-Url", "Swarmgate-Steps-Url"}
    small = json.loads(request(Journal(details=1)).journal_headers()[HEADER_JOURNAL])
    assert small == {"steps": [], "details": 1}
