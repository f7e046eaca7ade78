"""What a gateway process logs: a line per request when the access log is on (off by default),
no alembic chatter on every /readyz, and one line when it has stopped."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import free_port
from tests.procs import GatewayProcess


def records(log: Path) -> list[dict[str, Any]]:
    """The JSON log records (the one plain ``listening on`` line on stdout is left out)."""
    lines = log.read_text().splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


async def run_gateway(tmp_path: Path, **env: str) -> list[dict[str, Any]]:
    gw = GatewayProcess(f"sqlite:///{tmp_path}/gw.db", free_port(), log=tmp_path / "gw.log", **env)
    await gw.start()
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(3):
                async with http.get(gw.url + "/readyz") as r:
                    assert r.status == 200
            async with http.get(gw.url + "/api/agents", headers={"User-Agent": "logs-test"}) as r:
                assert r.status == 200
    finally:
        gw.terminate()
    assert gw.proc is not None and gw.proc.returncode == 0
    return records(tmp_path / "gw.log")


async def test_the_access_log_has_a_line_per_request_when_turned_on(tmp_path: Path) -> None:
    logged = await run_gateway(tmp_path, SWARMGATE_ACCESS_LOG="1")
    access = [r["msg"] for r in logged if r["logger"] == "swarmgate.access"]
    readyz = [m for m in access if '"GET /readyz HTTP/1.1" 200' in m]
    assert len(readyz) >= 3  # the start-up probe polls it too
    (agents,) = [m for m in access if "/api/agents" in m]
    assert agents.startswith("127.0.0.1 ") and '" 200 ' in agents and '"logs-test"' in agents


async def test_by_default_no_access_log_no_alembic_chatter_and_one_line_at_shutdown(
    tmp_path: Path,
) -> None:
    logged = await run_gateway(tmp_path)
    assert [r for r in logged if r["logger"] == "swarmgate.access"] == []
    alembic = [r["msg"] for r in logged if r["logger"].startswith("alembic")]
    assert alembic and all(m.startswith("Running upgrade") for m in alembic)  # the migrations
    started = next(i for i, r in enumerate(logged) if "listening on" in r["msg"])
    after_start = logged[started + 1 :]
    assert [r["msg"] for r in after_start] == [after_start[-1]["msg"]]
    assert after_start[-1]["msg"].endswith(" stopped") and after_start[-1]["level"] == "info"
