"""Engine settings: one frozen value, built once by the app from its environment.

This room owns only the knobs and their defaults; no behaviour lives here.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from gateway.domain.specs import RetryPolicy


@dataclass(frozen=True, kw_only=True)
class EngineConfig:
    owner: str = field(default_factory=lambda: f"gw-{uuid.uuid4().hex[:12]}")
    public_url: str = "http://127.0.0.1:8080"
    lease_s: float = 30.0
    poll_interval_s: float = 0.5
    claim_batch: int = 64
    max_inflight: int = 256
    sync_wait_s: float = 5.0  # how long start waits inline for the agent before answering 201
    callback_ttl_s: float = 24 * 3600.0
    callback_timeout_s: float = 15.0
    callback_retry: RetryPolicy = field(
        default_factory=lambda: RetryPolicy(initial_s=1.0, max_s=3600.0, jitter_s=1.0)
    )
    cancel_retry: RetryPolicy = field(
        default_factory=lambda: RetryPolicy(initial_s=1.0, max_s=3600.0, jitter_s=1.0)
    )
    idempotency_ttl_s: float = 24 * 3600.0
    max_timeout_s: float = 30 * 24 * 3600.0
    max_pending_starts: int = 1000  # start requests in progress before answering 429
    breaker_threshold: int = 5  # consecutive retryable failures that open an agent's circuit
    breaker_cooldown_s: float = 60.0  # open -> half-open
    shutdown_grace_s: float = 5.0
    task_poll_s: float = 5.0  # GetTask-style polling of accepted tasks (adapters with poll())
    # Group commit of starts and completions: concurrent writes share one commit (and on
    # PostgreSQL one statement); a lone write pays nothing extra.
    group_commit: bool = True
    # A batch of callback delivery acks waits this long to fill before it commits (nobody
    # waits on an ack to answer a request; bigger batches cost the database less per ack).
    callback_ack_linger_s: float = 0.05
    # A batch of starts or of completions waits this long to fill, but only under load
    # (batching.LINGER_FROM): fewer, larger commits per operation at saturation, later answers
    # at moderate load (figures: README, "Issue 17: a slower box"). 0: off, the default.
    write_linger_s: float = 0.0
    cancel_after_close_s: float = 3600.0  # keep telling an agent to stop for this long
    cancel_grace_s: float = 300.0  # after an agent took a cancel (202): close it as canceled
    endpoint_down_s: float = 30.0  # a pool endpoint with a connection error is skipped so long
    pull_recheck_s: float = 1.0  # a long poll re-checks the store for work parked elsewhere
    worker_live_s: float = 120.0  # a pull worker that polled within this long is live
