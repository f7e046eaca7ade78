"""The tracing port: spans around the engine's steps, joined to the caller's W3C trace.

The engine names a step and its attributes in one line::

    with core.tracer.span("attempt", op.traceparent, operation_id=op.id, attempt=n) as span:
        ...
        span.set(outcome="succeeded")

and hands ``span.traceparent`` on (to the agent, to the callback receiver), so the whole
operation is one trace. The composition root chooses the implementation: OpenTelemetry
(``gateway/otel.py``, the ``swarmgate[otel]`` extra) when an OTLP endpoint is configured,
else :data:`NO_TRACER`, which does nothing and costs a method call.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from types import TracebackType
from typing import Protocol

Attribute = str | int | float | bool | None


class Span(Protocol):
    """One open span."""

    @property
    def traceparent(self) -> str | None:
        """This span as a W3C ``traceparent`` header value (None when not tracing)."""
        ...

    def set(self, **attributes: Attribute) -> None:
        """Add attributes (None values are left out)."""
        ...

    def fail(self, message: str) -> None:
        """Mark the span as failed with ``message``."""
        ...


class Tracer(Protocol):
    """Opens spans; ``parent`` is a W3C ``traceparent`` (None: a new trace)."""

    def span(
        self, name: str, parent: str | None = None, **attributes: Attribute
    ) -> AbstractContextManager[Span]:
        """A span named ``name``, a child of ``parent``, open for the ``with`` block."""
        ...


class _NoSpan:
    """The span of :data:`NO_TRACER`: one shared object, every method a no-op."""

    traceparent: str | None = None

    def __enter__(self) -> _NoSpan:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def set(self, **attributes: Attribute) -> None:
        """Do nothing."""

    def fail(self, message: str) -> None:
        """Do nothing."""


_NO_SPAN = _NoSpan()


class NoTracer:
    """The tracer when tracing is off: no allocation, no work."""

    def span(self, name: str, parent: str | None = None, **attributes: Attribute) -> _NoSpan:
        """The shared no-op span."""
        return _NO_SPAN


NO_TRACER: Tracer = NoTracer()
