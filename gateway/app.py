"""The composition root: builds store, registry, adapters, engine and the web app."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import logging
import os
import secrets
import signal
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web
from aiohttp.typedefs import Middleware

from adapters.a2a import A2AAgentAdapter
from adapters.credentials import EnvCredentials
from adapters.http import HttpAgentAdapter
from adapters.mcp import McpAgentAdapter
from adapters.nexus import NexusAgentAdapter
from adapters.pull import PullAgentAdapter
from adapters.transport import HttpTransport
from gateway import logs, otel
from gateway.config import Settings
from gateway.domain import jsonio
from gateway.domain.clock import Clock, SystemClock
from gateway.domain.errors import ConfigError
from gateway.domain.specs import SYSTEM_OWNER, AdapterKind, AgentSpec, RetryPolicy
from gateway.engine.engine import Engine, EngineConfig
from gateway.engine.signing import CallbackSigner
from gateway.http import a2a as a2a_routes
from gateway.http import api, mcp_agents, nexus, ui
from gateway.http import inputs as input_routes
from gateway.http import journal as journal_routes
from gateway.http import mcp as mcp_routes
from gateway.http import pull as pull_routes
from gateway.http.context import SERVICES, Services
from gateway.http.errors import error_middleware
from gateway.http.hotpath import HotServer, hot_routes
from gateway.http.keepalive import keepalive_limit
from gateway.security.netguard import BlockedDestination, OutboundPolicy, screen_url
from gateway.startup import migrate_when_reachable
from gateway.store.sqlstore import SqlStore
from registry.auth import AuthConfig, Verifier
from registry.service import Registry

log = logging.getLogger("swarmgate")


def load_agents_file(path: str) -> list[AgentSpec]:
    text = Path(path).read_text()
    data: Any = yaml.safe_load(text) if path.endswith((".yaml", ".yml")) else jsonio.loads(text)
    items = data.get("agents", []) if isinstance(data, dict) else data
    return [AgentSpec.from_json(item) for item in items]


def agents_from_file(path: str) -> list[AgentSpec]:
    """The agents of ``SWARMGATE_AGENTS_FILE``; ConfigError if it cannot be read or parsed."""
    try:
        return load_agents_file(path)
    except OSError as exc:
        raise ConfigError(f"SWARMGATE_AGENTS_FILE: cannot read {path}: {exc.strerror}") from None
    except (ValueError, KeyError, TypeError, AttributeError, yaml.YAMLError) as exc:
        raise ConfigError(f"SWARMGATE_AGENTS_FILE: {path} is not an agents file: {exc}") from None


async def screen_agent(spec: AgentSpec, outbound: OutboundPolicy, path: str) -> None:
    """Refuse, at start, an agents-file endpoint the gateway would never be allowed to call
    (as ``POST /api/agents`` does); a name that does not resolve yet is only a warning."""
    try:
        await screen_url(spec.endpoint, outbound)
    except BlockedDestination as exc:
        raise ConfigError(
            f"SWARMGATE_AGENTS_FILE {path}: agent {spec.name!r}: endpoint refused: {exc}; "
            "non-public addresses must be allowed with SWARMGATE_ALLOW_CIDRS"
        ) from None
    except ValueError as exc:
        raise ConfigError(
            f"SWARMGATE_AGENTS_FILE {path}: agent {spec.name!r}: endpoint refused: {exc}"
        ) from None
    except OSError as exc:
        log.warning("agent %s: endpoint not checked yet: %s", spec.name, exc)


@dataclass
class Gateway:
    settings: Settings
    store: SqlStore
    registry: Registry
    engine: Engine
    transport: HttpTransport
    app: web.Application
    verifier: Verifier
    tracing: otel.Tracing

    async def close(self) -> None:
        await self.engine.stop()
        await self.transport.close()
        await self.store.close()
        self.tracing.shutdown()


def engine_config(settings: Settings) -> EngineConfig:
    """The engine's settings, resolved from the gateway's (the "auto" ones included)."""
    return EngineConfig(
        owner=settings.replica_id,
        public_url=settings.base_url,
        lease_s=settings.lease_s,
        poll_interval_s=settings.poll_interval_s,
        sync_wait_s=settings.sync_wait_s,
        callback_ttl_s=settings.callback_ttl_s,
        callback_timeout_s=settings.callback_timeout_s,
        callback_retry=RetryPolicy(
            initial_s=settings.callback_retry_initial_s,
            max_s=settings.callback_retry_max_s,
            jitter_s=min(1.0, settings.callback_retry_initial_s),
        ),
        idempotency_ttl_s=settings.idempotency_ttl_s,
        max_inflight=settings.max_inflight,
        max_pending_starts=settings.max_pending_starts,
        breaker_threshold=settings.breaker_threshold,
        breaker_cooldown_s=settings.breaker_cooldown_s,
        shutdown_grace_s=settings.shutdown_grace_s,
        task_poll_s=settings.task_poll_s,
        cancel_grace_s=settings.cancel_grace_s,
        endpoint_down_s=settings.endpoint_down_s,
        pull_recheck_s=settings.pull_recheck_s,
        worker_live_s=settings.worker_live_s,
        callback_ack_linger_s=settings.callback_ack_linger_s,
        write_linger_s=settings.write_linger_in_effect_s,
    )


async def build(
    settings: Settings, *, clock: Clock | None = None, tracing: otel.Tracing | None = None
) -> Gateway:
    """``tracing``: spans to export (default: OTLP when ``settings.otel_endpoint`` is set)."""
    clock = clock or SystemClock()
    tracing = tracing or otel.from_settings(settings.otel_endpoint, settings.otel_service_name)
    store = SqlStore(settings.database_url, **settings.store_options())
    await migrate_when_reachable(store, settings.startup_db_wait_s)
    for warning in await store.maintenance_warnings():
        log.warning(warning)
    secret = settings.secret or await store.get_or_create_setting(
        "completion_secret", secrets.token_urlsafe(32)
    )
    outbound = OutboundPolicy.from_strings(list(settings.allow_cidrs))
    transport = HttpTransport(outbound, max_response_bytes=settings.max_response_bytes)
    registry = Registry(store, clock)
    if settings.agents_file:
        for spec in agents_from_file(settings.agents_file):
            await screen_agent(spec, outbound, settings.agents_file)
            await registry.register(replace(spec, owner=SYSTEM_OWNER))
    config = engine_config(settings)

    a2a = A2AAgentAdapter(transport)
    mcp = McpAgentAdapter(transport)
    engine = Engine(
        store=store,
        registry=registry,
        adapters={
            AdapterKind.HTTP: HttpAgentAdapter(transport),
            AdapterKind.A2A: a2a,
            AdapterKind.MCP: mcp,
            AdapterKind.NEXUS: NexusAgentAdapter(transport),
            AdapterKind.PULL: PullAgentAdapter(),
        },
        transport=transport,
        clock=clock,
        config=config,
        secret=secret.encode(),
        signer=CallbackSigner(store, clock),
        tracer=tracing.tracer,
        credentials=EnvCredentials(transport, os.environ),
    )
    engine.metrics.add_read_counters(
        "swarmgate_write_cycles",
        "PostgreSQL write cycles: statements that merged two or more kinds of writes "
        "(starts, completions, acks), the writes they carried, and the writes that ran alone",
        "counted",
        store.write_cycle_counts,
    )
    verifier = Verifier(await auth_config(settings, store))
    middlewares: list[Middleware] = [error_middleware]
    if settings.keepalive_requests:  # outermost: it sees the answers the error mapping makes
        middlewares.insert(0, keepalive_limit(settings.keepalive_requests))
    app = web.Application(middlewares=middlewares, client_max_size=settings.max_body_bytes)
    app[SERVICES] = Services(
        engine=engine,
        registry=registry,
        verifier=verifier,
        outbound=outbound,
        public_cards=settings.public_cards,
        body_timeout_s=settings.body_timeout_s,
    )
    nexus.add_routes(app)
    # heartbeats and step journal (issue 12): before the other /api/operations/{id}/... routes,
    # which aiohttp tries one by one in the order they were added (the agents' hot path)
    journal_routes.add_routes(app)
    api.add_routes(app)
    pull_routes.add_routes(app)
    a2a_routes.add_routes(app, a2a)
    mcp_agents.add_routes(app, mcp)
    mcp_routes.add_routes(
        app,
        mcp_routes.McpConfig(
            session_key=hashlib.sha256(b"mcp-session:" + secret.encode()).digest(),
            wait_s=settings.mcp_wait_s,
        ),
    )
    ui.add_routes(app, auth_mode=settings.auth_mode)
    input_routes.add_routes(app)  # input-required (issue 15 item 4)
    return Gateway(
        settings=settings,
        store=store,
        registry=registry,
        engine=engine,
        transport=transport,
        app=app,
        verifier=verifier,
        tracing=tracing,
    )


async def auth_config(settings: Settings, store: SqlStore) -> AuthConfig:
    if settings.auth_mode == "none":
        return AuthConfig(mode="none", issuer=settings.jwt_issuer, audience=settings.jwt_audience)
    if settings.auth_mode == "jwks":
        return AuthConfig(
            mode="jwks",
            jwks_url=settings.jwks_url,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
        )
    secret = settings.jwt_secret or await store.get_or_create_setting(
        "jwt_secret", secrets.token_urlsafe(32)
    )
    return AuthConfig(
        mode="hs256", secret=secret, issuer=settings.jwt_issuer, audience=settings.jwt_audience
    )


# The routes every operation (start, completion) and every durable agent's work (heartbeats,
# the step journal) take: served by gateway.http.hotpath unless SWARMGATE_HOT_PATH=false.
HOT_HANDLERS = (
    nexus.start,
    api.complete,
    journal_routes.heartbeat,
    journal_routes.put_step,
    journal_routes.list_steps,
)


async def listen(
    gw: Gateway, runner: web.AppRunner, *, access_log: logging.Logger | None = None
) -> HotServer | web.TCPSite:
    """Listen on the settings' address: the hot path in front of aiohttp (``runner``, set
    up), or aiohttp alone; the result's ``stop()`` stops listening."""
    s = gw.settings
    if not s.hot_path or runner.server is None:
        site = web.TCPSite(
            runner,
            s.host,
            s.port,
            reuse_address=True,
            reuse_port=s.reuse_port or None,  # worker processes share the port
        )
        await site.start()
        return site
    server = HotServer(
        gw.app,
        runner.server,
        hot_routes(gw.app, HOT_HANDLERS),
        max_body=s.max_body_bytes,
        body_timeout_s=s.body_timeout_s,
        keepalive_requests=s.keepalive_requests,
        access_log=access_log,
        metrics=gw.engine.metrics,
    )
    await server.start(s.host, s.port, reuse_port=s.reuse_port)
    return server


def tune_gc(threshold: int) -> None:
    """Make the cyclic garbage collector cheap for a server (``SWARMGATE_GC_THRESHOLD``).

    With Python's default first threshold (700 container objects allocated and not freed)
    the 64 operations in flight of a busy gateway set off a collection every operation or so,
    and every tenth of the tenth scans the whole heap: ~9% of the gateway's CPU (measured with
    ``gc.callbacks`` under the lifecycle bench). Almost everything a request allocates is freed
    by reference counting; the collector is only needed for cycles (tracebacks, say), which a
    higher threshold collects a little later, in a few MB at most. ``gc.freeze()`` first takes
    the start-up objects (modules, the app, the registry) out of every later scan.
    0 leaves Python's defaults.
    """
    if threshold <= 0:
        return
    gc.collect()
    gc.freeze()
    _, second, third = gc.get_threshold()
    gc.set_threshold(threshold, second, third)


async def serve(settings: Settings, *, ready: asyncio.Event | None = None) -> None:
    """Run a gateway until SIGTERM/SIGINT; then stop taking work and release it."""
    logs.configure(settings.log_format, settings.log_level)
    gw = await build(settings)
    access = logging.getLogger(logs.ACCESS_LOGGER) if settings.access_log else None
    runner = web.AppRunner(gw.app, access_log=access, access_log_format=logs.ACCESS_FORMAT)
    await runner.setup()
    site = await listen(gw, runner, access_log=access)
    await gw.engine.run()
    tune_gc(settings.gc_threshold)
    log.info("swarmgate %s listening on %s", settings.replica_id, settings.base_url)
    print(f"swarmgate listening on {settings.base_url} (replica {settings.replica_id})", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        await site.stop()
        await gw.close()
        await runner.cleanup()
        log.info("swarmgate %s stopped", settings.replica_id)
