"""Shared fixtures: throw-away databases (SQLite file or PostgreSQL cloned from a migrated
template), a real gateway on loopback, real agents on loopback.

Tests live in tiers, one directory each (``tests/unit``, ``tests/store``, ``tests/integration``,
``tests/system``); every test is marked with its tier's name, so ``pytest -m unit`` runs only
the fast tier and ``pytest`` runs them all."""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from gateway.app import Gateway, build, listen
from gateway.config import Settings
from gateway.domain.clock import Clock
from gateway.http.hotpath import HotServer
from gateway.sdk.agent import AgentApp
from gateway.store.sqlstore import SqlStore
from gateway.testing import free_port, pg_database_url

PG_ADMIN = os.environ.get("SWARMGATE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
IN_CI = os.environ.get("CI", "").lower() == "true"
LOOPBACK = ("127.0.0.0/8", "::1/128")
TIERS = ("unit", "store", "integration", "system")
TESTS_DIR = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test with the tier of the directory it lives in (``tests/<tier>/...``)."""
    for item in items:
        try:
            parts = item.path.resolve().relative_to(TESTS_DIR).parts
        except ValueError:
            continue
        if len(parts) > 1 and parts[0] in TIERS:
            item.add_marker(getattr(pytest.mark, parts[0]))


def _run(coro: Any) -> Any:
    """Run a coroutine on a private loop in a thread (usable from sync fixtures)."""
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["v"] = asyncio.run(coro)
        except BaseException as exc:
            out["e"] = exc

    th = threading.Thread(target=target)
    th.start()
    th.join()
    if "e" in out:
        raise out["e"]
    return out.get("v")


async def _pg_exec(*sql: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN, timeout=5)
    try:
        for stmt in sql:
            await conn.execute(stmt)
    finally:
        await conn.close()


def pg_url(name: str) -> str:
    return pg_database_url(PG_ADMIN, name)


def pg_admin(*sql: str) -> None:
    _run(_pg_exec(*sql))


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    """A migrated template database; each test clones it (fast, isolated)."""
    try:
        _run(_pg_exec("SELECT 1"))
    except Exception as exc:
        if IN_CI:
            pytest.fail(f"PostgreSQL is required under CI=true but unreachable: {exc}")
        pytest.skip(f"PostgreSQL unreachable: {exc}")
    name = f"sg_tpl_{uuid.uuid4().hex[:10]}"
    pg_admin(f'CREATE DATABASE "{name}"')

    async def migrate() -> None:
        store = SqlStore(pg_url(name))
        await store.migrate()
        await store.close()

    _run(migrate())
    yield name
    pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_db(pg_template: str) -> Iterator[str]:
    name = f"sg_t_{uuid.uuid4().hex[:12]}"
    pg_admin(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"')
    yield pg_url(name)
    pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/swarmgate.db"
    return str(request.getfixturevalue("pg_db"))


def make_settings(db_url: str, **overrides: Any) -> Settings:
    port = free_port()
    base = Settings(
        database_url=db_url,
        host="127.0.0.1",
        port=port,
        auth_mode="none",
        allow_cidrs=LOOPBACK,
        poll_interval_s=0.05,
        task_poll_s=0.2,
        lease_s=3.0,
        sync_wait_s=1.0,
        callback_retry_initial_s=0.05,
        callback_retry_max_s=0.2,
        sqlite_synchronous="NORMAL",
    )
    return replace(base, **overrides)


@dataclass
class Running:
    gw: Gateway
    url: str
    http: aiohttp.ClientSession
    site: HotServer | web.TCPSite  # what listens: the hot path, unless settings.hot_path=False

    def nexus(self, service: str, operation: str) -> str:
        return f"{self.url}/nexus/{service}/{operation}"


@asynccontextmanager
async def running_gateway(
    settings: Settings, *, clock: Clock | None = None, tracing: Any = None
) -> AsyncIterator[Running]:
    """A gateway built from ``settings`` served on loopback, its engine loops running.

    ``clock`` (e.g. a ``gateway.testing.ManualClock``) replaces the system clock the engine
    takes its decisions from: retry and breaker schedules, timeouts, leases."""
    gw = await build(settings, clock=clock, tracing=tracing)
    runner = web.AppRunner(gw.app, access_log=None)
    await runner.setup()
    site = await listen(gw, runner)  # as `swarmgate serve` listens: the hot path in front
    await gw.engine.run()
    async with aiohttp.ClientSession() as http:
        try:
            yield Running(gw=gw, url=settings.base_url, http=http, site=site)
        finally:
            await site.stop()
            await gw.engine.stop(grace_s=1.0)
            await runner.cleanup()
            await gw.transport.close()
            await gw.store.close()


@asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    """Serve an aiohttp app on a loopback port; yields its base URL."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def serving_agent(agent: AgentApp) -> AsyncIterator[str]:
    async with serving(agent.app) as url:
        yield url


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
async def port_store(request: pytest.FixtureRequest, tmp_path: Any) -> AsyncIterator[Any]:
    """A migrated, empty store of each kind (the Store port-conformance suite runs on all)."""
    from gateway.store import open_store

    if request.param == "memory":
        url = "memory://"
    elif request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/swarmgate.db"
    else:
        url = str(request.getfixturevalue("pg_db"))
    store = open_store(url)
    await store.migrate()
    try:
        yield store
    finally:
        await store.close()
