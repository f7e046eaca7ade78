"""Retry delays from tenacity's wait strategies, turned into persisted timestamps."""

from __future__ import annotations

from datetime import datetime, timedelta

from tenacity import RetryCallState, wait_exponential_jitter

from gateway.domain.specs import RetryPolicy


def delay_s(policy: RetryPolicy, attempt: int) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
    strategy = wait_exponential_jitter(
        multiplier=policy.initial_s,
        max=policy.max_s,
        exp_base=policy.multiplier,
        jitter=policy.jitter_s,
    )
    state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
    state.attempt_number = max(1, attempt)
    return float(strategy(state))


def next_attempt_at(
    policy: RetryPolicy, attempt: int, now: datetime, retry_after_s: float | None = None
) -> datetime:
    wait = delay_s(policy, attempt)
    if retry_after_s is not None:
        wait = max(wait, min(retry_after_s, policy.max_s))
    return now + timedelta(seconds=wait)
