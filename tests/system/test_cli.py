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


async def swarmgate(
    *args: str, env: dict[str, str], timeout: float = 30.0, cwd: Path = ROOT
) -> Result:
    """Run ``python -m gateway.cli ARGS`` without blocking the loop (agents serve on it)."""
    env = {**env, "PYTHONPATH": str(ROOT)}  # the package, whatever the working directory
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.cli",
        *args,
        cwd=cwd,
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
    (tmp_path / "empty.db").touch()  # a SQLite file, without the gateway's tables
    res = await swarmgate(
        "token",
        "--sub",
        "x",
        "--scope",
        "admin",
        env=clean_env(SWARMGATE_DATABASE_URL=f"sqlite:///{tmp_path}/empty.db"),
    )
    assert res.code == 1 and "not migrated" in res.err


async def test_token_never_creates_a_database_file(tmp_path: Path) -> None:
    db = tmp_path / "var" / "swarmgate.db"
    for url in (f"sqlite:///{db}", None):  # an explicit URL, and the default relative one
        env = clean_env() if url is None else clean_env(SWARMGATE_DATABASE_URL=url)
        res = await swarmgate("token", "--sub", "x", "--scope", "admin", env=env, cwd=tmp_path)
        assert res.code == 1, res
        assert "no gateway database" in res.err and "SWARMGATE_JWT_SECRET" in res.err
        assert len(res.err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.rglob("*")) == []


# -- call / start ---------------------------------------------------------------------------


async def test_call_wait_prints_the_result_json_of_the_operation(swarm: Swarm) -> None:
    res = ok(await swarm.run("call", "worker", "echo", "--input", '{"city": "Lisbon"}', "--wait"))
    assert res.json() == {"echo": {"city": "Lisbon"}}


async def test_call_reads_the_input_from_a_file_and_waits_for_an_async_operation(
    swarm: Swarm,
) -> None:
    payload = swarm.tmp / "input.json"
    payload.write_text(json.dumps({"sleep": 0.2, "n": 7}))
    res = ok(await swarm.run("call", "worker", "later", "--input", f"@{payload}", "--wait"))
    assert res.json() == {"done": {"sleep": 0.2, "n": 7}}


async def test_call_of_a_failing_operation_exits_1_with_the_reason_on_stderr(
    swarm: Swarm,
) -> None:
    res = await swarm.run("call", "worker", "broken", "--input", "{}", "--wait")
    assert res.code == 1 and res.out == ""
    assert "failed" in res.err and "the flights agent found no seats" in res.err
    assert "Traceback" not in res.err


async def test_call_without_wait_prints_the_token_of_an_operation_still_running(
    swarm: Swarm,
) -> None:
    res = ok(await swarm.run("call", "worker", "hang", "--input", "{}"))
    info = res.json()
    assert info["state"] == "running" and "--wait" in res.err
    op = await swarm.wait_state(info["token"], {"running"})
    assert op["operation"] == "hang"


async def test_start_prints_the_token_and_the_same_request_id_gets_the_same_operation(
    swarm: Swarm,
) -> None:
    first = ok(await swarm.run("start", "worker", "echo", "-i", '{"a": 1}', "--request-id", "r1"))
    token = first.out.strip()
    again = ok(await swarm.run("start", "worker", "echo", "-i", '{"a": 1}', "--request-id", "r1"))
    assert again.out.strip() == token
    op = await swarm.wait_state(token, TERMINAL)
    assert op["state"] == "succeeded" and op["result"] == {"echo": {"a": 1}}


async def test_call_with_input_that_is_not_json_is_a_usage_error(swarm: Swarm) -> None:
    res = await swarm.run("call", "worker", "echo", "--input", "{city: Lisbon}")
    assert res.code == 2 and "--input is not valid JSON" in res.err
    missing = await swarm.run("start", "worker", "echo", "--input", "@/no/such/file.json")
    assert missing.code == 2 and "cannot read /no/such/file.json" in missing.err


# -- ops watch ------------------------------------------------------------------------------


async def test_ops_watch_refreshes_count_times_with_the_counts_per_state(swarm: Swarm) -> None:
    ok_token = await swarm.start("echo", {"x": 1})
    bad_token = await swarm.start("broken", {})
    await swarm.wait_state(ok_token, TERMINAL)
    await swarm.wait_state(bad_token, TERMINAL)
    res = ok(await swarm.run("ops", "watch", "--count", "2", "--interval", "0.1"))
    frames = res.out.split("\n\n")
    assert len(frames) == 2
    for frame in frames:
        title, header, *rows = frame.strip().splitlines()
        assert "succeeded 1" in title and "failed 1" in title and "running 0" in title
        assert header.split() == [
            "ID",
            "STATE",
            "OPERATION",
            "ATTEMPTS",
            "CREATED",
            "LAST",
            "ERROR",
        ]
        assert {r.split()[0] for r in rows} == {ok_token, bad_token}


# -- version, completion, agents init -------------------------------------------------------


async def test_version_prints_the_installed_version() -> None:
    from importlib.metadata import version

    res = ok(await swarmgate("--version", env=clean_env()))
    assert res.out.strip() == f"swarmgate {version('swarmgate')}"


async def _complete(script: str, line: str, tmp_path: Path) -> list[str]:
    """What bash offers for ``line`` (the word under the cursor is the last one)."""
    words = line.split(" ")
    probe = tmp_path / "probe.sh"
    probe.write_text(
        script
        + "\nCOMP_WORDS=("
        + " ".join(f"'{w}'" for w in words)
        + f")\nCOMP_CWORD={len(words) - 1}\n_swarmgate\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"\n"
    )
    proc = await asyncio.create_subprocess_exec(
        "bash", str(probe), cwd=tmp_path, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    return sorted(w for w in out.decode().splitlines() if w)


async def test_bash_completion_offers_commands_options_and_choices(tmp_path: Path) -> None:
    script = ok(await swarmgate("completion", "bash", env=clean_env())).out
    assert "complete -F _swarmgate swarmgate" in script
    assert await _complete(script, "swarmgate o", tmp_path) == ["ops"]
    assert {"call", "start", "serve", "agents", "completion"} <= set(
        await _complete(script, "swarmgate ", tmp_path)
    )
    assert await _complete(script, "swarmgate ops w", tmp_path) == ["watch"]
    assert await _complete(script, "swarmgate ops list --state s", tmp_path) == ["succeeded"]
    assert await _complete(script, "swarmgate call --w", tmp_path) == ["--wait"]
    assert await _complete(script, "swarmgate completion z", tmp_path) == ["zsh"]
    (tmp_path / "trip.json").write_text("{}")
    assert await _complete(script, "swarmgate call a b --input @tr", tmp_path) == ["@trip.json"]
    zsh = ok(await swarmgate("completion", "zsh", env=clean_env())).out
    assert zsh.startswith("# swarmgate completion for zsh") and "bashcompinit" in zsh


async def test_agents_init_writes_a_documented_sample_the_gateway_registers(
    swarm: Swarm,
) -> None:
    path = swarm.tmp / "agents.yaml"
    res = ok(await swarmgate("agents", "init", str(path), env=clean_env()))
    assert str(path) in res.out
    text = path.read_text()
    assert text.count("#") >= 10 and "SWARMGATE_ALLOW_CIDRS" in text
    from gateway.http import contract

    agents = yaml.safe_load(text)["agents"]
    assert [contract.registration_errors(a) for a in agents] == [[]]
    again = await swarmgate("agents", "init", str(path), env=clean_env())
    assert again.code == 2 and "--force" in again.err
    registered = ok(await swarm.run("agents", "register", str(path), "--json")).json()
    greet = registered["agents"][0]["operations"][0]
    assert registered["agents"][0]["name"] == "hello" and greet["name"] == "greet"
    assert greet["input_schema"]["required"] == ["name"]


# -- startup errors and the allow-list ------------------------------------------------------


async def _serve(tmp_path: Path, **settings: str) -> Result:
    env = clean_env(**{"SWARMGATE_DATABASE_URL": f"sqlite:///{tmp_path}/gw.db", **settings})
    return await swarmgate("serve", env=env, timeout=60)


def one_error_line(res: Result) -> str:
    """The single ``swarmgate: error:`` line of a failed start (log lines may come before it)."""
    assert res.code != 0
    assert "Traceback" not in res.err and "Traceback" not in res.out
    errors = [line for line in res.err.splitlines() if line.startswith("swarmgate: error:")]
    assert len(errors) == 1, res.err
    assert res.err.rstrip().endswith(errors[0])
    return errors[0]


async def test_a_busy_port_is_one_clear_line_and_exit_1(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        res = await _serve(tmp_path, SWARMGATE_PORT=str(port))
    line = one_error_line(res)
    assert res.code == 1 and f"127.0.0.1:{port}" in line and "already in use" in line


async def test_a_database_that_is_down_is_one_clear_line_and_exit_1(tmp_path: Path) -> None:
    down = f"postgresql://postgres@127.0.0.1:{free_port()}/swarmgate"
    res = await _serve(
        tmp_path,
        SWARMGATE_DATABASE_URL=down,
        SWARMGATE_PORT=str(free_port()),
        SWARMGATE_STARTUP_DB_WAIT_S="1",  # it waits for the database this long, then says so
    )
    line = one_error_line(res)
    assert res.code == 1 and "cannot open the database" in line and "SWARMGATE_DATABASE_URL" in line


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("SWARMGATE_PORT", "eighty"),
        ("SWARMGATE_AUTH_MODE", "maybe"),
        ("SWARMGATE_LOG_LEVEL", "loud"),
        ("SWARMGATE_ACCESS_LOG", "sometimes"),
        ("SWARMGATE_ALLOW_CIDRS", "10.0.0.0/8,localhost"),
    ],
)
async def test_a_bad_setting_is_one_line_naming_it_and_exit_2(
    tmp_path: Path, setting: str, value: str
) -> None:
    res = await _serve(tmp_path, **{setting: value})
    line = one_error_line(res)
    assert res.code == 2 and setting in line
    assert not (tmp_path / "gw.db").exists()


async def test_an_agent_endpoint_refused_by_the_allow_list_names_swarmgate_allow_cidrs(
    tmp_path: Path,
) -> None:
    gw = GatewayProcess(
        f"sqlite:///{tmp_path}/gw.db",
        free_port(),
        log=tmp_path / "gateway.log",
        SWARMGATE_ALLOW_CIDRS="",
    )
    await gw.start()
    try:
        path = tmp_path / "agents.yaml"
        ok(await swarmgate("agents", "init", str(path), env=clean_env()))
        res = await swarmgate("agents", "register", str(path), env=clean_env(SWARMGATE_URL=gw.url))
    finally:
        gw.terminate()
    assert res.code == 1 and "HTTP 400" in res.err
    assert "127.0.0.1" in res.err and "SWARMGATE_ALLOW_CIDRS" in res.err


async def test_an_agents_file_endpoint_the_allow_list_refuses_stops_the_start_naming_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "agents.yaml"
    ok(await swarmgate("agents", "init", str(path), env=clean_env()))  # endpoint on 127.0.0.1
    res = await _serve(tmp_path, SWARMGATE_AGENTS_FILE=str(path), SWARMGATE_PORT=str(free_port()))
    line = one_error_line(res)
    assert res.code == 2 and "SWARMGATE_AGENTS_FILE" in line and "'hello'" in line
    assert "SWARMGATE_ALLOW_CIDRS" in line
    missing = await _serve(tmp_path, SWARMGATE_AGENTS_FILE=str(tmp_path / "nope.yaml"))
    assert "cannot read" in one_error_line(missing) and missing.code == 2
