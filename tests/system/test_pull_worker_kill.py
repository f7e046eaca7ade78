"""A pull worker process SIGKILLed with leased tasks (issue 12 item 8): its leases are lost
when its heartbeats stop, and every task completes on another worker exactly once."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from gateway.testing import eventually
from registry.auth import mint_token
from tests.conftest import Running, make_settings, running_gateway
from tests.integration.test_auth_http import AUTH, SECRET, bearer
from tests.system.pull_worker_proc import build

OWNER = "team-batch"
ROOT = Path(__file__).resolve().parents[2]


@asynccontextmanager
async def worker_process(
    gw: Running, worker_id: str, sleep_s: float, log: Path
) -> AsyncIterator[asyncio.subprocess.Process]:
    token = mint_token(AUTH, OWNER, ["agents:work"])
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.system.pull_worker_proc",
        gw.url,
        token,
        worker_id,
        str(sleep_s),
        str(log),
        cwd=str(ROOT),
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


def lines(log: Path, kind: str) -> list[tuple[str, str]]:
    if not log.exists():
        return []
    out = []
    for line in log.read_text().splitlines():
        what, op_id, worker = line.split()
        if what == kind:
            out.append((op_id, worker))
    return out


async def show(gw: Running) -> dict[str, Any]:
    async with gw.http.get(f"{gw.url}/api/agents/batch", headers=bearer("ops", "agents:read")) as r:
        return dict(await r.json())


async def operation(gw: Running, op_id: str) -> dict[str, Any]:
    async with gw.http.get(
        f"{gw.url}/api/operations/{op_id}", headers=bearer("root", "admin")
    ) as r:
        return dict(await r.json())


async def test_a_killed_workers_leased_tasks_complete_on_another_worker_exactly_once(
    db_url: str, tmp_path: Path
) -> None:
    log = tmp_path / "effects.log"
    settings = make_settings(db_url, auth_mode="hs256", jwt_secret=SECRET, pull_recheck_s=0.2)
    async with running_gateway(settings) as gw:
        spec = build("registration", 0, log).pull_spec().to_json()
        async with gw.http.post(
            f"{gw.url}/api/agents", json=spec, headers=bearer(OWNER, "agents:register")
        ) as r:
            assert r.status == 201, await r.text()
        ops = []
        for n in range(5):
            async with gw.http.post(
                gw.nexus("batch", "score"),
                json={"n": n},
                headers=bearer("caller", "ops:start:*", "ops:read"),
            ) as r:
                assert r.status == 201
                ops.append((await r.json())["token"])

        async with worker_process(gw, "doomed", 60.0, log) as doomed:
            # every task leased by the doomed worker and its handler really running
            await eventually(
                lambda: sorted(op for op, _ in lines(log, "start")),
                until=lambda started: started == sorted(ops),
                timeout=30,
                what="the doomed worker runs all five tasks",
            )
            status = await show(gw)
            assert status["queue_depth"] == 0
            assert [(w["worker_id"], w["leased"]) for w in status["workers"]] == [("doomed", 5)]
            doomed.send_signal(signal.SIGKILL)
            await doomed.wait()

        async with worker_process(gw, "rescuer", 0.1, log):
            for op_id in ops:
                done = await eventually(
                    lambda op_id=op_id: operation(gw, op_id),
                    until=lambda o: o["state"] == "succeeded",
                    timeout=30,
                    what="the task completes on the rescuer",
                )
                assert done["result"]["worker"] == "rescuer"
                assert done["result"]["attempt"] == 2

        finished = lines(log, "done")
        assert sorted(finished) == sorted((op_id, "rescuer") for op_id in ops)  # once each
        async with gw.http.get(
            f"{gw.url}/api/operations/{ops[0]}/events", headers=bearer("root", "admin")
        ) as r:
            events = (await r.json())["events"]
        leased = [e["data"]["worker_id"] for e in events if e["kind"] == "attempt.leased"]
        assert leased == ["doomed", "rescuer"]
        kinds = [e["kind"] for e in events]
        assert "attempt.heartbeat_timeout" in kinds
        assert kinds[-1] == "operation.succeeded"
