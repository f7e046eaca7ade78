"""OpenTelemetry behind the engine's tracing port (``gateway/domain/tracing.py``).

Optional: the ``swarmgate[otel]`` extra installs opentelemetry-api, -sdk and the OTLP/HTTP
exporter. :func:`from_settings` gives the no-op tracer unless an OTLP endpoint is configured
(``SWARMGATE_OTEL_EXPORTER_OTLP_ENDPOINT`` or the standard ``OTEL_EXPORTER_OTLP_ENDPOINT``);
a configured endpoint without the extra installed is a clear startup error.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from gateway.domain.errors import ConfigError
from gateway.domain.tracing import NO_TRACER, Attribute, Tracer

log = logging.getLogger("swarmgate")

PREFIX = "swarmgate."


class OtelSpan:
    """A running OpenTelemetry span seen through the port."""

    def __init__(self, span: Any) -> None:
        self._span = span

    @property
    def traceparent(self) -> str | None:
        ctx = self._span.get_span_context()
        if not ctx.is_valid:
            return None
        return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"

    def set(self, **attributes: Attribute) -> None:
        for key, value in attributes.items():
            if value is not None:
                self._span.set_attribute(PREFIX + key, value)

    def fail(self, message: str) -> None:
        from opentelemetry.trace import Status, StatusCode

        self._span.set_status(Status(StatusCode.ERROR, message))


class OtelTracer:
    """Spans named ``swarmgate.<name>``, attributes ``swarmgate.<key>``, each a child of the
    W3C ``traceparent`` it is given (a new trace without one)."""

    def __init__(self, provider: Any) -> None:
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._tracer = provider.get_tracer("swarmgate")
        self._propagator = TraceContextTextMapPropagator()

    @contextmanager
    def span(
        self, name: str, parent: str | None = None, **attributes: Attribute
    ) -> Iterator[OtelSpan]:
        from opentelemetry.context import Context

        ctx = self._propagator.extract({"traceparent": parent}) if parent else Context()
        attrs = {PREFIX + k: v for k, v in attributes.items() if v is not None}
        with self._tracer.start_as_current_span(
            PREFIX + name, context=ctx, attributes=attrs
        ) as span:
            yield OtelSpan(span)


@dataclass
class Tracing:
    """The tracer the engine gets, and how to flush it at shutdown."""

    tracer: Tracer = field(default_factory=lambda: NO_TRACER)
    provider: Any = None

    def shutdown(self) -> None:
        if self.provider is not None:
            self.provider.shutdown()


def in_memory() -> tuple[Tracing, Any]:
    """Tracing into an ``InMemorySpanExporter`` (tests): (tracing, exporter)."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Tracing(OtelTracer(provider), provider), exporter


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL for a base endpoint (``.../v1/traces`` appended once)."""
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith("/v1/traces") else endpoint + "/v1/traces"


def from_settings(endpoint: str | None, service_name: str = "swarmgate") -> Tracing:
    """OTLP export to ``endpoint`` (batched, off the event loop), or no tracing at all."""
    if not endpoint:
        return Tracing()
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise ConfigError(
            "an OTLP endpoint is configured but OpenTelemetry is not installed: "
            "pip install 'swarmgate[otel]'"
        ) from exc
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=traces_url(endpoint))))
    log.info("tracing: OTLP export to %s", traces_url(endpoint))
    return Tracing(OtelTracer(provider), provider)
