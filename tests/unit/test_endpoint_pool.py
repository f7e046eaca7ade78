"""EndpointPool: which endpoint of an agent pool the next call goes to."""

from __future__ import annotations

from gateway.domain.dispatch import Outcome, OutcomeKind
from gateway.domain.specs import AgentSpec, OperationSpec
from gateway.engine.metrics import Metrics
from gateway.engine.pool import EndpointPool
from gateway.testing import ManualClock

A, B, C = "http://a", "http://b", "http://c"
AGENT = AgentSpec(
    name="pool", endpoint=A, endpoints=(A, B, C), operations={"x": OperationSpec(name="x")}
)
REFUSED = Outcome(kind=OutcomeKind.RETRYABLE, error="connection refused")
OK = Outcome(kind=OutcomeKind.SUCCEEDED, status=200)


class Mono:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def pool(mono: Mono) -> EndpointPool:
    return EndpointPool(ManualClock(), Metrics(), down_s=30.0, monotonic=mono)


def test_calls_go_round_robin_over_the_endpoints_that_are_up() -> None:
    mono = Mono()
    p = pool(mono)
    assert [p.choose(AGENT) for _ in range(6)] == [A, B, C, A, B, C]
    p.record("pool", B, REFUSED)
    assert {p.choose(AGENT) for _ in range(4)} == {A, C}
    mono.now += 31  # the cool-down ran out: B is tried again
    assert B in {p.choose(AGENT) for _ in range(3)}


def test_a_retry_avoids_the_endpoint_of_the_last_attempt() -> None:
    p = pool(Mono())
    first = p.choose(AGENT, "op-1")
    p.used("op-1", first)
    for _ in range(5):
        assert p.choose(AGENT, "op-1", retry=True) != first


def test_with_every_endpoint_down_the_least_recently_failed_is_chosen() -> None:
    mono = Mono()
    p = pool(mono)
    for endpoint in (B, C, A):
        p.record("pool", endpoint, REFUSED)
        mono.now += 1
    assert p.choose(AGENT) == B
    p.record("pool", B, OK)  # answered: up again
    assert p.choose(AGENT) == B


def test_an_answering_endpoint_stays_up_on_a_retryable_http_status() -> None:
    p = pool(Mono())
    p.record("pool", A, Outcome(kind=OutcomeKind.RETRYABLE, error="HTTP 503", status=503))
    health = {h["endpoint"]: h for h in p.health(AGENT)}
    assert health[A]["up"] is True and health[A]["failures"] == 1
    assert health[A]["last_error"] == "HTTP 503"


def test_a_lost_heartbeat_counts_against_the_endpoint_that_took_the_operation() -> None:
    p = pool(Mono())
    p.used("op-1", C)
    p.lost("pool", "op-1", "heartbeat timed out")
    health = {h["endpoint"]: h for h in p.health(AGENT)}
    assert health[C]["up"] is False and health[C]["last_error"] == "heartbeat timed out"
    assert p.sticky(AGENT, "op-1") == C  # a cancel still goes where the work is
