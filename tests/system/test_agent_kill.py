"""Agents die too: a durable agent process SIGKILLed mid-step resumes on a fresh instance.

The agent is a real subprocess (``tests/system/durable_agent.py``) that writes every step's
start and end to a file; the gateway runs in-process on SQLite or PostgreSQL. After the kill,
a new instance is started on the same URL; the missed heartbeat makes the gateway dispatch
the operation again with the journal, and the completed step does not run again.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp

from gateway.testing import eventually, free_port
from tests.conftest import make_settings, running_gateway
from tests.system.durable_agent import build

ROOT = Path(__file__).resolve().parents[2]


def spawn_agent(
    port: int, effects: Path, b_sleep_s: float = 0.05, *, die_before_complete: bool = False
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "B_SLEEP_S": str(b_sleep_s),
        "DIE_BEFORE_COMPLETE": "1" if die_before_complete else "0",
        "PYTHONPATH": str(ROOT),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "tests.system.durable_agent", str(port), str(effects)],
        cwd=ROOT,
        env=env,
    )


async def agent_up(port: int) -> bool:
    try:
        _r, w = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    w.close()
    return True


def lines(effects: Path) -> list[str]:
    return (
        [ln.rsplit(" ", 1)[0] for ln in effects.read_text().splitlines()]
        if effects.exists()
        else []
    )


async def test_an_agent_killed_mid_step_resumes_on_a_fresh_instance_running_each_step_once(
    db_url: str, tmp_path: Path
) -> None:
    port = free_port()
    effects = tmp_path / "effects.txt"
    first = spawn_agent(port, effects, b_sleep_s=60)
    second: subprocess.Popen[bytes] | None = None
    try:
        await eventually(lambda: agent_up(port), what="the agent listening")
        async with running_gateway(make_settings(db_url)) as gw:
            await gw.gw.registry.register(build(effects).spec(f"http://127.0.0.1:{port}"))
            async with gw.http.post(gw.nexus("durable", "task"), json={"n": 5}) as r:
                assert r.status == 201
                op_id = (await r.json())["token"]
            await eventually(lambda: lines(effects), until=lambda ls: "start b" in ls)

            async def checkpoint() -> object:
                op = await gw.gw.store.get_operation(op_id)
                return op.heartbeat_details if op else None

            # the checkpoint after "a" is sent without waiting (ctx.heartbeat): on a busy box
            # "b" may start before it is recorded, and the kill would lose it
            await eventually(checkpoint, until=lambda d: d == {"after": "a"}, what="checkpoint")
            first.send_signal(signal.SIGKILL)  # mid-step: "a" is done, "b" is running
            first.wait(10)
            second = spawn_agent(port, effects, b_sleep_s=0.05)
            async with gw.http.get(
                gw.nexus("durable", "task") + "/result",
                params={"token": op_id, "wait": "30s"},
                timeout=aiohttp.ClientTimeout(total=40),
            ) as r:
                assert r.status == 200, await r.text()
                result = await r.json()
            assert result == {
                "a": {"a": 5},
                "b": [1, 2],
                "c": "c",
                "previous": {"after": "a"},  # the checkpoint the killed attempt sent
            }
            async with gw.http.get(f"{gw.url}/api/operations/{op_id}/events") as r:
                events = (await r.json())["events"]
        done = lines(effects)
        assert done.count("done a") == 1 and done.count("start a") == 1  # not run again
        assert done.count("start b") == 2 and done.count("done b") == 1  # cut off, run again
        assert done.count("done c") == 1
        kinds = [e["kind"] for e in events]
        assert "attempt.heartbeat_timeout" in kinds
        steps = [e["data"]["name"] for e in events if e["kind"] == "step.completed"]
        assert steps == ["a", "b", "c", "$result"]
        assert kinds[-1] == "operation.succeeded"
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)


async def test_an_answer_recorded_before_a_crash_is_given_again_with_no_second_effect(
    db_url: str, tmp_path: Path
) -> None:
    port = free_port()
    effects = tmp_path / "effects.txt"
    first = spawn_agent(port, effects, die_before_complete=True)
    second: subprocess.Popen[bytes] | None = None
    try:
        await eventually(lambda: agent_up(port), what="the agent listening")
        async with running_gateway(make_settings(db_url)) as gw:
            await gw.gw.registry.register(build(effects).spec(f"http://127.0.0.1:{port}"))
            async with gw.http.post(gw.nexus("durable", "charge"), json={"n": 9}) as r:
                assert r.status == 201
                op_id = (await r.json())["token"]
            # it dies after recording its answer, before completing
            await eventually(first.poll, until=lambda rc: rc is not None, timeout=20)
            assert first.returncode == -signal.SIGKILL
            second = spawn_agent(port, effects)
            async with gw.http.get(
                gw.nexus("durable", "charge") + "/result",
                params={"token": op_id, "wait": "30s"},
                timeout=aiohttp.ClientTimeout(total=40),
            ) as r:
                assert r.status == 200, await r.text()
                assert await r.json() == {"charged": 9}
            async with gw.http.get(f"{gw.url}/api/operations/{op_id}/events") as r:
                kinds = [e["kind"] for e in (await r.json())["events"]]
        assert lines(effects) == ["charged"]  # once, by the instance that died
        assert kinds.count("attempt.started") == 2 and "attempt.heartbeat_timeout" in kinds
        assert kinds.count("step.completed") == 1  # the recorded answer ($result)
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)
