"""Prometheus metrics of one gateway process (its own registry, so tests can build many)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self.operations = Gauge(
            "swarmgate_operations", "Stored operations by state", ["state"], registry=r
        )
        self.started = Counter(
            "swarmgate_operations_started_total", "Operations started", ["agent"], registry=r
        )
        self.closed = Counter(
            "swarmgate_operations_closed_total",
            "Operations that reached a terminal state here",
            ["agent", "state"],
            registry=r,
        )
        self.attempts = Counter(
            "swarmgate_dispatch_attempts_total",
            "Dispatch attempts by outcome",
            ["agent", "outcome"],
            registry=r,
        )
        self.retries = Counter(
            "swarmgate_retries_scheduled_total", "Retries scheduled", ["agent"], registry=r
        )
        self.deferred = Counter(
            "swarmgate_dispatch_deferred_total",
            "Dispatches deferred by an open circuit breaker",
            ["agent"],
            registry=r,
        )
        self.callbacks = Counter(
            "swarmgate_callback_deliveries_total",
            "Callback delivery attempts by outcome",
            ["outcome"],
            registry=r,
        )
        self.takeovers = Counter(
            "swarmgate_lease_takeovers_total",
            "Work claimed after another replica's lease expired",
            registry=r,
        )
        self.deduplicated = Counter(
            "swarmgate_starts_deduplicated_total",
            "Starts answered from an existing operation (request id / idempotency key)",
            registry=r,
        )
        self.loop_errors = Counter(
            "swarmgate_loop_errors_total",
            "Errors in a background loop (it carries on)",
            ["loop", "kind"],
            registry=r,
        )
        self.rejected = Counter(
            "swarmgate_starts_rejected_total",
            "Starts refused with 429 because the gateway was saturated",
            registry=r,
        )
        self.breaker_open = Gauge(
            "swarmgate_circuit_open", "1 while the agent's circuit is open", ["agent"], registry=r
        )
        self.endpoint_up = Gauge(
            "swarmgate_agent_endpoint_up",
            "1 while the pool endpoint is up, 0 while it is down after a connection error",
            ["agent", "endpoint"],
            registry=r,
        )
        self.endpoint_calls = Counter(
            "swarmgate_agent_endpoint_calls_total",
            "Calls to a pool endpoint by result (success, failure)",
            ["agent", "endpoint", "result"],
            registry=r,
        )
        self.dispatch_seconds = Histogram(
            "swarmgate_dispatch_seconds",
            "Duration of one dispatch attempt",
            ["agent"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.operation_seconds = Histogram(
            "swarmgate_operation_seconds",
            "Start to close of an operation",
            ["agent", "state"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.start_seconds = Histogram(
            "swarmgate_start_seconds",
            "Latency of the start request (commit included)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.http_connections = Counter(
            "swarmgate_http_connections_total",
            "Client connections: accepted (every one, by the hot path), handed_over (to "
            "aiohttp's server), refused (a request pipelined behind a hot one for another "
            "route: closed)",
            ["path"],
            registry=r,
        )
        self.callback_seconds = Histogram(
            "swarmgate_callback_seconds",
            "Duration of one callback delivery attempt",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )

    def child(self, metric: Any, *values: str) -> Any:
        """``metric.labels(*values)``, remembered: ``labels()`` takes a lock and checks its
        arguments on every call, several times per operation. Label values here are agent
        names, states and outcomes, a bounded set."""
        key = (id(metric), values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found

    def add_read_counters(
        self, name: str, documentation: str, label: str, read: Callable[[], dict[str, int]]
    ) -> None:
        """A counter family ``{name}_total`` whose values another part keeps (read at each
        scrape, one sample per key of ``read()`` as the value of ``label``)."""
        self.registry.register(_ReadCounters(name, documentation, label, read))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _ReadCounters(Collector):
    def __init__(
        self, name: str, documentation: str, label: str, read: Callable[[], dict[str, int]]
    ) -> None:
        self._name, self._doc, self._label, self._read = name, documentation, label, read

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self._name, self._doc, labels=[self._label])
        for key, value in self._read().items():
            family.add_metric([key], value)
        yield family

    def describe(self) -> Iterator[CounterMetricFamily]:
        # without reading: registering must not call ``read`` (prometheus_client calls
        # describe(), else collect(), once at registration to check for duplicate names)
        yield CounterMetricFamily(self._name, self._doc, labels=[self._label])
