"""A replica started while its PostgreSQL is not up yet waits for it (with backoff, logging
each retry) instead of exiting on the first StoreUnavailable (issue 13, item 3)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.testing import eventually
from tests.chaos.pg import ThrowawayPostgres, find_pg_bin
from tests.conftest import free_port
from tests.procs import GatewayProcess


async def test_a_replica_started_before_its_database_waits_and_then_serves(
    tmp_path: Path,
) -> None:
    bin_dir = find_pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) are not installed")
    pg = ThrowawayPostgres(bin_dir, max_connections=50)
    await pg.create()  # initialised, not started: nothing listens on its port yet
    log = tmp_path / "gateway.log"
    gw = GatewayProcess(pg.url(), free_port(), log=log, SWARMGATE_STARTUP_DB_WAIT_S="60")
    try:
        starting = asyncio.create_task(gw.start(timeout_s=60))
        await eventually(
            lambda: log.exists() and "database unavailable at startup" in log.read_text(),
            timeout=30,
            what="a logged startup retry",
        )
        assert not starting.done(), gw.tail()  # still waiting, not exited
        await pg.start()
        await starting  # ready: migrated against the database that came up
        text = log.read_text()
        assert "retrying in" in text
        assert "database reachable after" in text
    finally:
        gw.kill()
        await pg.stop()
        pg.remove()


async def test_a_replica_gives_up_after_the_startup_wait(tmp_path: Path) -> None:
    log = tmp_path / "gateway.log"
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"  # nobody listens there
    gw = GatewayProcess(url, free_port(), log=log, SWARMGATE_STARTUP_DB_WAIT_S="1")
    with pytest.raises(RuntimeError, match="gateway exited"):
        await gw.start(timeout_s=30)
    assert "giving up" in log.read_text()
