"""The ``swarmgate`` CLI, run as a real subprocess against a real gateway subprocess (HS256 auth)
and a real test agent on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.sdk.client import Client
from gateway.testing import ROOT, eventually
from tests.conftest import free_port, serving, serving_agent
from tests.helpers import Receiver, make_test_agent
from tests.procs import GatewayProcess

SECRET = "cli-test-secret-0123456789abcdef-0123456789"  # >= 32 bytes
TERMINAL = {"succeeded", "failed", "canceled"}


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def clean_env(**extra: str) -> dict[str, str]:
    """The test process environment without any SWARMGATE_* setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWARMGATE_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


async def swarmgate(*args: str, env: dict[str, str], timeout: float = 30.0) -> Result:
    """Run ``python -m gateway.cli ARGS`` without blocking the loop (agents serve on it)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.cli",
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


def ok(result: Result) -> Result:
    assert result.code == 0, f"exit {result.code}\nstdout:\n{result.out}\nstderr:\n{result.err}"
    return result


@dataclass
class Swarm:
    url: str
    token: str
    env: dict[str, str]  # SWARMGATE_URL + SWARMGATE_TOKEN for the CLI
    agent_url: str
    tmp: Path

    def client(self) -> Client:
        return Client(self.url, token=self.token, retry_for_s=5.0)

    async def run(self, *args: str, timeout: float = 30.0) -> Result:
        return await swarmgate(*args, env=self.env, timeout=timeout)

    async def wait_state(self, op_id: str, states: Iterable[str], timeout: float = 15.0) -> Any:
        wanted = set(states)
        async with self.client() as gw:
            return await eventually(
                lambda: gw.operation(op_id),
                until=lambda op: op["state"] in wanted,
                timeout=timeout,
                interval=0.05,
                what=f"operation {op_id} in {sorted(wanted)}",
            )

    async def start(self, operation: str, payload: Any = None, **kw: Any) -> str:
        async with self.client() as gw:
            started = await gw.start("worker", operation, payload or {}, **kw)
        return started.token


@pytest.fixture
async def swarm(tmp_path: Path) -> AsyncIterator[Swarm]:
    """A gateway (SQLite, HS256 with a known secret), the test agent registered from YAML by
    the CLI with an admin token minted by the CLI."""
    async with serving_agent(make_test_agent("worker")) as agent_url:
        gw = GatewayProcess(
            f"sqlite:///{tmp_path}/gw.db",
            free_port(),
            log=tmp_path / "gateway.log",
            SWARMGATE_AUTH_MODE="hs256",
            SWARMGATE_JWT_SECRET=SECRET,
            SWARMGATE_CALLBACK_TTL_S="30",
        )
        await gw.start()
        try:
            minted = ok(
                await swarmgate(
                    "token",
                    "--sub",
                    "ops-admin",
                    "--scope",
                    "admin",
                    env=clean_env(SWARMGATE_JWT_SECRET=SECRET),
                )
            )
            token = minted.out.strip()
            assert token.count(".") == 2
            env = clean_env(SWARMGATE_URL=gw.url, SWARMGATE_TOKEN=token)
            spec = make_test_agent("worker").spec(agent_url).to_json()
            agent_file = tmp_path / "worker.yaml"
            agent_file.write_text(yaml.safe_dump(spec))
            registered = ok(await swarmgate("agents", "register", str(agent_file), env=env))
            assert "registered worker" in registered.out
            yield Swarm(url=gw.url, token=token, env=env, agent_url=agent_url, tmp=tmp_path)
        finally:
            gw.terminate()


def table_rows(out: str) -> list[list[str]]:
    """Rows of a CLI table split on runs of 2+ spaces (header first)."""
    import re

    return [re.split(r"\s{2,}", line.strip()) for line in out.splitlines() if line.strip()]


# -- agents ---------------------------------------------------------------------------------


async def test_agents_list_and_show_describe_the_agent_registered_from_yaml(swarm: Swarm) -> None:
    listed = ok(await swarm.run("agents", "list"))
    rows = table_rows(listed.out)
    assert rows[0] == ["NAME", "VERSION", "REGISTRY", "ENDPOINT", "OPERATIONS"]
    worker = next(r for r in rows[1:] if r[0] == "worker")
    assert worker[3] == swarm.agent_url
    assert "broken" in worker[4] and "hang" in worker[4]

    shown = ok(await swarm.run("agents", "show", "worker"))
    assert "name:" in shown.out and "worker" in shown.out
    assert f"endpoint:          {swarm.agent_url}" in shown.out
    assert "operations:" in shown.out and "OPERATION" in shown.out

    as_json = ok(await swarm.run("agents", "show", "worker", "--json")).json()
    assert as_json["name"] == "worker"
    assert {o["name"] for o in as_json["operations"]} >= {"echo", "broken", "hang"}
    listed_json = ok(await swarm.run("agents", "list", "--json")).json()
    assert [a["name"] for a in listed_json["agents"]] == ["worker"]


async def test_agents_register_accepts_a_json_list_of_agents(swarm: Swarm) -> None:
    spec = make_test_agent("worker").spec(swarm.agent_url).to_json()
    other = {**spec, "name": "worker-two", "description": "second"}
    path = swarm.tmp / "agents.json"
    path.write_text(json.dumps([spec, other]))
    out = ok(await swarm.run("agents", "register", str(path), "--json")).json()
    assert [a["name"] for a in out["agents"]] == ["worker", "worker-two"]
    assert out["agents"][0]["registryVersion"] >= 1
    names = [a["name"] for a in ok(await swarm.run("agents", "list", "--json")).json()["agents"]]
    assert sorted(names) == ["worker", "worker-two"]


async def test_showing_an_unknown_agent_exits_1_with_the_problem_detail(swarm: Swarm) -> None:
    res = await swarm.run("agents", "show", "nobody")
    assert res.code == 1
    assert "HTTP 404" in res.err and "no such agent" in res.err
    assert res.out == ""


async def test_a_bad_agents_file_is_a_usage_error(swarm: Swarm) -> None:
    bad = swarm.tmp / "bad.yaml"
    bad.write_text("- just: [a, list, without, names]\n")
    res = await swarm.run("agents", "register", str(bad))
    assert res.code == 2 and "needs at least a name and an endpoint" in res.err
    missing = await swarm.run("agents", "register", str(swarm.tmp / "missing.json"))
    assert missing.code == 2 and "cannot read" in missing.err


# -- operations -----------------------------------------------------------------------------


async def test_ops_list_show_and_history_describe_a_finished_operation(swarm: Swarm) -> None:
    op_id = await swarm.start("echo", {"hello": "cli"}, request_id="cli-echo-1")
    await swarm.wait_state(op_id, {"succeeded"})

    listed = ok(await swarm.run("ops", "list"))
    rows = table_rows(listed.out)
    assert rows[0] == ["ID", "STATE", "OPERATION", "ATTEMPTS", "CREATED", "CLOSED"]
    row = next(r for r in rows[1:] if r[0] == op_id)
    assert row[1:4] == ["succeeded", "worker/echo", "1"]
    assert row[4] != "-" and row[5] != "-"

    assert ok(await swarm.run("ops", "list", "--state", "failed")).out.strip() == "no operations"
    filtered = ok(await swarm.run("ops", "list", "--service", "worker", "--limit", "1", "--json"))
    assert [o["id"] for o in filtered.json()["operations"]] == [op_id]

    shown = ok(await swarm.run("ops", "show", op_id))
    assert f"id:                {op_id}" in shown.out
    assert "state:             succeeded" in shown.out
    assert "request id:        cli-echo-1" in shown.out
    assert '"hello":"cli"' in shown.out  # the result, compact
    shown_json = ok(await swarm.run("ops", "show", op_id, "--json")).json()
    assert shown_json["state"] == "succeeded" and shown_json["result"] == {"echo": {"hello": "cli"}}
    assert shown_json["callbacks"] == []

    history = ok(await swarm.run("ops", "history", op_id))
    lines = history.out.splitlines()
    assert lines[0].split() == ["ID", "TIME", "(UTC)", "KIND", "DATA"]
    kinds = [line.split()[3] for line in lines[1:]]
    assert kinds[0] == "operation.started"
    assert "attempt.started" in kinds and kinds[-1] == "operation.succeeded"
    assert "attempt=1" in history.out
    events = ok(await swarm.run("ops", "history", op_id, "--json")).json()["events"]
    assert [e["kind"] for e in events] == kinds
    assert all(isinstance(e["id"], int) for e in events)


async def test_ops_cancel_cancels_a_hanging_operation(swarm: Swarm) -> None:
    op_id = await swarm.start("hang")
    async with swarm.client() as gw:  # wait until the agent has accepted it
        await eventually(
            lambda: gw.history(op_id),
            until=lambda events: any(e["kind"] == "attempt.accepted" for e in events),
        )
    res = ok(await swarm.run("ops", "cancel", op_id))
    assert f"cancel requested for {op_id}" in res.out
    op = await swarm.wait_state(op_id, TERMINAL)
    assert op["state"] == "canceled"
    kinds = [
        e["kind"] for e in ok(await swarm.run("ops", "history", op_id, "--json")).json()["events"]
    ]
    assert "cancel.requested" in kinds and kinds[-1] == "operation.canceled"
    by = next(
        e
        for e in ok(await swarm.run("ops", "history", op_id, "--json")).json()["events"]
        if e["kind"] == "cancel.requested"
    )
    assert by["data"]["by"] == "ops-admin"
    again = ok(await swarm.run("ops", "cancel", op_id))  # idempotent
    assert "cancel requested" in again.out


async def test_ops_redrive_reruns_a_failed_operation_and_the_history_records_it(
    swarm: Swarm,
) -> None:
    op_id = await swarm.start("broken")
    failed = await swarm.wait_state(op_id, TERMINAL)
    assert failed["state"] == "failed" and failed["attempts"] == 1
    assert "no seats" in ok(await swarm.run("ops", "show", op_id)).out

    refused = await swarm.run("ops", "redrive", "no-such-operation")
    assert refused.code == 1 and "HTTP 404" in refused.err

    res = ok(await swarm.run("ops", "redrive", op_id))
    assert f"operation {op_id} redriven" in res.out
    again = await swarm.wait_state(op_id, {"failed"}, timeout=15)
    events = ok(await swarm.run("ops", "history", op_id, "--json")).json()["events"]
    kinds = [e["kind"] for e in events]
    redriven = kinds.index("operation.redriven")
    assert "attempt.started" in kinds[redriven:], kinds
    assert kinds[-1] == "operation.failed"
    assert events[redriven]["data"]["by"] == "ops-admin"
    assert again["attempts"] >= 2
    timeline = ok(await swarm.run("ops", "history", op_id)).out
    assert "operation.redriven" in timeline and "by=ops-admin" in timeline

    running = await swarm.start("hang")
    conflict = await swarm.run("ops", "redrive", running)
    assert conflict.code == 1
    assert "HTTP 409" in conflict.err and "only a failed or canceled operation" in conflict.err


async def test_ops_redrive_with_callback_resends_a_disabled_callback(swarm: Swarm) -> None:
    receiver = Receiver(refuse_first=1, status_when_refusing=410)  # 410: disabled at once
    async with serving(receiver.app()) as cb_url:
        op_id = await swarm.start("echo", {"n": 1}, callback=f"{cb_url}/cb")
        await swarm.wait_state(op_id, {"succeeded"})
        async with swarm.client() as gw:
            deliveries = await eventually(
                lambda: gw.callbacks(op_id),
                until=lambda found: found and found[0]["state"] == "disabled",
                timeout=15,
            )
        assert deliveries[0]["state"] == "disabled", deliveries
        delivery_id = deliveries[0]["id"]
        shown = ok(await swarm.run("ops", "show", op_id))
        assert "callbacks:" in shown.out and delivery_id in shown.out and "disabled" in shown.out

        res = ok(await swarm.run("ops", "redrive", op_id, "--callback", delivery_id))
        assert f"callback {delivery_id} of {op_id} redriven" in res.out
        await receiver.wait(10)
        async with swarm.client() as gw:
            await eventually(
                lambda: gw.callbacks(op_id), until=lambda found: found[0]["state"] == "delivered"
            )
        kinds = [
            e["kind"]
            for e in ok(await swarm.run("ops", "history", op_id, "--json")).json()["events"]
        ]
        assert kinds.index("callback.disabled") < kinds.index("callback.redriven")
        assert kinds.index("callback.redriven") < kinds.index("callback.delivered")
        twice = await swarm.run("ops", "redrive", op_id, "--callback", delivery_id)
        assert twice.code == 1 and "HTTP 409" in twice.err


async def test_ops_history_follow_prints_events_until_the_operation_ends(swarm: Swarm) -> None:
    op_id = await swarm.start("later", {"sleep": 1.0})
    followed, followed_json = await asyncio.gather(
        swarm.run("ops", "history", op_id, "--follow", timeout=30),
        swarm.run("ops", "history", op_id, "-f", "--json", timeout=30),
    )
    ok(followed)
    kinds = [line.split()[3] for line in followed.out.splitlines()[1:]]
    assert kinds[0] == "operation.started" and kinds[-1] == "operation.succeeded"
    events = [json.loads(line) for line in ok(followed_json).out.splitlines()]
    assert [e["kind"] for e in events] == kinds
    ids = [e["id"] for e in events]
    assert ids == sorted(set(ids))


async def test_follow_waits_for_the_callback_and_polls_when_told_not_to_stream(
    swarm: Swarm,
) -> None:
    receiver = Receiver()
    async with serving(receiver.app()) as cb_url:
        op_id = await swarm.start("later", {"sleep": 0.5}, callback=f"{cb_url}/cb")
        followed = ok(await swarm.run("ops", "history", op_id, "--follow", "--json"))
        streamed = [json.loads(line)["kind"] for line in followed.out.splitlines()]
        assert streamed[-1] == "callback.delivered", streamed
        async with swarm.client() as gw:
            polled = [e["kind"] async for e in gw.follow(op_id, stream=False, poll_s=0.05)]
            tail = [e["kind"] async for e in gw.follow(op_id, after=1_000_000, stream=False)]
        assert polled == streamed
        assert tail == []


# -- auth and errors ------------------------------------------------------------------------


async def test_an_unauthenticated_call_exits_1_with_the_problem_detail_on_stderr(
    swarm: Swarm,
) -> None:
    env = {k: v for k, v in swarm.env.items() if k != "SWARMGATE_TOKEN"}
    res = await swarmgate("ops", "list", env=env)
    assert res.code == 1
    assert res.out == ""
    assert "HTTP 401 Authentication required" in res.err
    assert "bearer" in res.err.lower()

    forged = await swarmgate("agents", "list", "--token", "a.b.c", env=env)
    assert forged.code == 1 and "HTTP 401" in forged.err


async def test_a_token_without_admin_scope_cannot_redrive(swarm: Swarm) -> None:
    minted = ok(
        await swarmgate(
            "token",
            "--sub",
            "reader",
            "--scope",
            "ops:read",
            "--ttl",
            "60",
            env=clean_env(SWARMGATE_JWT_SECRET=SECRET),
        )
    )
    res = await swarm.run("ops", "redrive", "whatever", "--token", minted.out.strip())
    assert res.code == 1 and "HTTP 403" in res.err and "admin" in res.err


async def test_usage_errors_exit_2() -> None:
    env = clean_env()
    missing_id = await swarmgate("ops", "show", env=env)
    assert missing_id.code == 2 and "required" in missing_id.err
    bad_state = await swarmgate("ops", "list", "--state", "sleeping", env=env)
    assert bad_state.code == 2 and "invalid choice" in bad_state.err
    no_scope = await swarmgate("token", "--sub", "x", env=env)
    assert no_scope.code == 2
    short = await swarmgate(
        "token", "--sub", "x", "--scope", "admin", env=clean_env(SWARMGATE_JWT_SECRET="short")
    )
    assert short.code == 2 and "at least 32 bytes" in short.err


async def test_an_unreachable_gateway_exits_1() -> None:
    res = await swarmgate(
        "ops", "list", "--url", f"http://127.0.0.1:{free_port()}", env=clean_env()
    )
    assert res.code == 1 and "cannot reach the gateway" in res.err


# -- token from the stored secret -------------------------------------------------------------


async def _token_from_stored_secret_works(db_url: str, tmp_path: Path) -> None:
    gw = GatewayProcess(
        db_url, free_port(), log=tmp_path / "gateway.log", SWARMGATE_AUTH_MODE="hs256"
    )
    await gw.start()  # no SWARMGATE_JWT_SECRET: the gateway generates and stores one
    try:
        minted = ok(
            await swarmgate(
                "token",
                "--sub",
                "alice",
                "--scope",
                "ops:read",
                "--scope",
                "agents:register",
                env=clean_env(SWARMGATE_DATABASE_URL=db_url),
            )
        )
        env = clean_env(SWARMGATE_URL=gw.url, SWARMGATE_TOKEN=minted.out.strip())
        assert ok(await swarmgate("ops", "list", "--json", env=env)).json() == {"operations": []}
        wrong = ok(
            await swarmgate(
                "token",
                "--sub",
                "alice",
                "--scope",
                "ops:read",
                env=clean_env(SWARMGATE_JWT_SECRET=SECRET),
            )
        )
        refused = await swarmgate("ops", "list", "--token", wrong.out.strip(), env=env)
        assert refused.code == 1 and "HTTP 401" in refused.err
    finally:
        gw.terminate()


async def test_token_uses_the_secret_the_gateway_stored_in_sqlite(tmp_path: Path) -> None:
    await _token_from_stored_secret_works(f"sqlite:///{tmp_path}/gw.db", tmp_path)


async def test_token_uses_the_secret_the_gateway_stored_in_postgresql(
    pg_db: str, tmp_path: Path
) -> None:
    await _token_from_stored_secret_works(pg_db, tmp_path)


async def test_token_refuses_an_unmigrated_database(tmp_path: Path) -> None:
    res = await swarmgate(
        "token",
        "--sub",
        "x",
        "--scope",
        "admin",
        env=clean_env(SWARMGATE_DATABASE_URL=f"sqlite:///{tmp_path}/empty.db"),
    )
    assert res.code == 1 and "not migrated" in res.err
