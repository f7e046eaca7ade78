"""Every number of a registration is finite and bounded, whichever way the agent is registered
(issue 13, item 11): NaN compares false with everything, so ``timeout_s <= 0`` let it through,
and an operation with a NaN timeout never timed out, or retried in a storm."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from gateway.domain.errors import HandlerError
from gateway.domain.specs import AgentSpec, OperationSpec, RetryPolicy
from registry.service import validate_spec


def agent(op: OperationSpec) -> AgentSpec:
    return AgentSpec(name="a", endpoint="http://127.0.0.1:1", operations={op.name: op})


BASE = OperationSpec(name="op")


@pytest.mark.parametrize(
    "op",
    [
        replace(BASE, timeout_s=math.nan),
        replace(BASE, timeout_s=math.inf),
        replace(BASE, timeout_s=1e300),
        replace(BASE, attempt_timeout_s=math.nan),
        replace(BASE, retry=RetryPolicy(initial_s=math.nan)),
        replace(BASE, retry=RetryPolicy(max_s=math.inf)),
        replace(BASE, retry=RetryPolicy(multiplier=math.nan)),
        replace(BASE, retry=RetryPolicy(multiplier=1e9)),
        replace(BASE, retry=RetryPolicy(jitter_s=-math.inf)),
        replace(BASE, retry=RetryPolicy(max_attempts=10**12)),
        replace(BASE, concurrency=10**12),
    ],
    ids=lambda op: repr((op.timeout_s, op.attempt_timeout_s, op.retry, op.concurrency)),
)
def test_a_non_finite_or_huge_number_in_a_registration_is_a_400(op: OperationSpec) -> None:
    with pytest.raises(HandlerError) as caught:
        validate_spec(agent(op))
    assert caught.value.status == 400
    assert "must be" in caught.value.message


def test_ordinary_numbers_pass() -> None:
    validate_spec(
        agent(replace(BASE, timeout_s=600, retry=RetryPolicy(initial_s=0.05, max_attempts=3)))
    )
