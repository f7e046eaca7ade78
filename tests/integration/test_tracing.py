"""OpenTelemetry spans (``gateway/otel.py`` behind the engine's tracing port), captured with
the SDK's InMemorySpanExporter on a real gateway with a real agent and callback receiver."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway import otel
from gateway.config import Settings
from gateway.domain.tracing import NO_TRACER
from gateway.testing import eventually
from tests.conftest import make_settings, running_gateway, serving, serving_agent
from tests.helpers import Receiver, make_test_agent

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE}-{CALLER_SPAN}-01"


def attrs(span: Any) -> dict[str, Any]:
    return {k.removeprefix("swarmgate."): v for k, v in span.attributes.items()}


def named(spans: list[Any], name: str) -> list[Any]:
    return sorted((s for s in spans if s.name == f"swarmgate.{name}"), key=lambda s: s.start_time)


async def test_a_start_with_a_traceparent_yields_start_attempt_and_callback_spans_in_its_trace(
    db_url: str,
) -> None:
    tracing, exporter = otel.in_memory()
    agent = make_test_agent()
    receiver = Receiver(refuse_first=1)
    async with (
        serving_agent(agent) as agent_url,
        serving(receiver.app()) as cb_url,
        running_gateway(make_settings(db_url), tracing=tracing) as gw,
    ):
        await gw.gw.registry.register(agent.spec(agent_url))
        async with gw.http.post(
            gw.nexus("worker", "flaky"),
            json={"fail_times": 1},
            params={"callback": cb_url + "/done"},
            headers={"traceparent": TRACEPARENT},
        ) as r:
            assert r.status in (200, 201)
            op_id = r.headers["Nexus-Operation-Token"]

        def finished() -> list[Any]:
            spans = list(exporter.get_finished_spans())
            return spans if len(named(spans, "callback")) == 2 else []

        spans = await eventually(finished)
    (start,) = named(spans, "start")
    attempts = named(spans, "attempt")
    callbacks = named(spans, "callback")
    assert {format(s.context.trace_id, "032x") for s in spans} == {TRACE}
    assert format(start.parent.span_id, "016x") == CALLER_SPAN
    assert attrs(start) == {
        "operation_id": op_id,
        "agent": "worker",
        "operation": "flaky",
        "caller": "anonymous",
        "outcome": "created",
    }
    # attempts and callback deliveries are children of the start
    assert [s.parent.span_id for s in attempts + callbacks] == [start.context.span_id] * 4
    assert [(attrs(s)["attempt"], attrs(s)["outcome"]) for s in attempts] == [
        (1, "retryable"),
        (2, "succeeded"),
    ]
    assert attrs(attempts[0])["http_status"] == 503
    assert not attempts[0].status.is_ok and attempts[1].status.is_unset
    assert all(attrs(s)["operation_id"] == op_id for s in attempts + callbacks)
    assert [attrs(s)["outcome"] for s in callbacks] == ["failed", "delivered"]
    assert [attrs(s)["http_status"] for s in callbacks] == [503, 200]
    # the receiver joins the trace as a child of the delivery try that reached it
    sent = [req["headers"]["traceparent"] for req in receiver.requests]
    assert sent == [f"00-{TRACE}-{format(s.context.span_id, '016x')}-01" for s in callbacks]


async def test_a_start_without_a_traceparent_opens_a_new_trace_for_the_operation(
    db_url: str,
) -> None:
    tracing, exporter = otel.in_memory()
    agent = make_test_agent()
    async with (
        serving_agent(agent) as agent_url,
        running_gateway(make_settings(db_url), tracing=tracing) as gw,
    ):
        await gw.gw.registry.register(agent.spec(agent_url))
        async with gw.http.post(gw.nexus("worker", "echo"), json={}) as r:
            assert r.status == 200
        spans = await eventually(
            lambda: (
                list(exporter.get_finished_spans())
                if named(list(exporter.get_finished_spans()), "attempt")
                else []
            )
        )
    (start,) = named(spans, "start")
    (attempt,) = named(spans, "attempt")
    assert start.parent is None
    assert attempt.parent.span_id == start.context.span_id
    assert attempt.context.trace_id == start.context.trace_id


def test_tracing_is_off_unless_an_otlp_endpoint_is_configured() -> None:
    assert Settings.from_env({}).otel_endpoint is None
    assert otel.from_settings(None).tracer is NO_TRACER
    ours = {"SWARMGATE_OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}
    standard = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://other:4318"}
    assert Settings.from_env(ours | standard).otel_endpoint == "http://collector:4318"
    assert Settings.from_env(standard).otel_endpoint == "http://other:4318"
    assert otel.traces_url("http://collector:4318/") == "http://collector:4318/v1/traces"
    assert otel.traces_url("http://c:4318/v1/traces") == "http://c:4318/v1/traces"
    tracing = otel.from_settings("http://127.0.0.1:4318")
    try:
        assert isinstance(tracing.tracer, otel.OtelTracer)
    finally:
        tracing.shutdown()  # no span was made: nothing to export


async def test_heartbeats_and_steps_of_an_agent_app_operation_are_spans_in_the_starts_trace(
    db_url: str,
) -> None:
    from gateway.sdk.agent import AgentApp, OpContext

    agent = AgentApp("durable")
    release = asyncio.Event()  # set once the heartbeat's span is seen

    @agent.operation("work", mode="async", heartbeat_timeout_s=30)
    async def work(ctx: OpContext, payload: Any) -> Any:
        fetched = await ctx.step("fetch", lambda: {"pages": 3})
        ctx.heartbeat({"progress": 1, "total": 2})
        await release.wait()
        return {"fetched": fetched}

    tracing, exporter = otel.in_memory()
    async with (
        serving_agent(agent) as agent_url,
        running_gateway(make_settings(db_url), tracing=tracing) as gw,
    ):
        await gw.gw.registry.register(agent.spec(agent_url))
        async with gw.http.post(
            gw.nexus("durable", "work"), json={}, headers={"traceparent": TRACEPARENT}
        ) as r:
            assert r.status in (200, 201)
            op_id = r.headers.get("Nexus-Operation-Token") or (await r.json())["id"]

        def finished() -> list[Any]:
            spans = list(exporter.get_finished_spans())
            return spans if named(spans, "heartbeat") and named(spans, "step") else []

        spans = await eventually(finished)
        release.set()
        op = await gw.gw.engine.wait_terminal(op_id, 30)
    (start,) = named(spans, "start")
    (step,) = named(spans, "step")
    heartbeat = named(spans, "heartbeat")[0]
    assert {format(s.context.trace_id, "032x") for s in spans} == {TRACE}
    assert step.parent.span_id == start.context.span_id
    assert heartbeat.parent.span_id == start.context.span_id
    assert attrs(step) == {
        "operation_id": op_id,
        "agent": "durable",
        "attempt": 1,
        "step": "fetch",
        "outcome": "recorded",
    }
    assert attrs(heartbeat) == {
        "operation_id": op_id,
        "agent": "durable",
        "attempt": 1,
        "outcome": "recorded",
        "details": True,
    }
    assert op is not None and op.state.value == "succeeded"
    assert op.heartbeat_details == {"progress": 1, "total": 2}
