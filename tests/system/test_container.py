"""The container files, tested without Docker (this machine has none): ``compose.yaml``'s two
gateway replicas share one PostgreSQL and a /readyz healthcheck, and the Dockerfile's CMD and
HEALTHCHECK commands, run here with the image's and the compose file's environment against the
local PostgreSQL, give two ready replicas."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import pytest
import yaml

from gateway.sdk.client import Client
from gateway.testing import ROOT, free_port

GATEWAYS = ("gateway-1", "gateway-2")
VENV_BIN = Path(sys.executable).parent  # where this environment's `swarmgate` and `python` are


def dockerfile() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` of the final stage, continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    stages: list[list[tuple[str, str]]] = []
    for line in lines:
        word, _, rest = line.partition(" ")
        if word.upper() == "FROM":
            stages.append([])
        stages[-1].append((word.upper(), rest.strip()))
    return stages[-1]


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in dockerfile():
        if word == "ENV":
            env.update(dict(re.findall(r"(\w+)=(\S+)", rest)))
    return env


def instruction(name: str) -> str:
    (found,) = [rest for word, rest in dockerfile() if word == name]
    return found


def healthcheck_command() -> list[str]:
    cmd: list[str] = json.loads(instruction("HEALTHCHECK").split(" CMD ", 1)[1])
    return cmd


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR:-default}`` / ``${VAR}``."""

    def sub(m: re.Match[str]) -> str:
        return env.get(m.group(1)) or (m.group(3) or "")

    return re.sub(r"\$\{(\w+)(:-([^}]*))?\}", sub, value)


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return data


def service_env(name: str) -> dict[str, str]:
    raw = compose()["services"][name]["environment"]
    return {k: interpolate(str(v), {}) for k, v in raw.items()}


def test_the_image_runs_swarmgate_serve_as_a_non_root_user_with_a_readyz_healthcheck() -> None:
    assert json.loads(instruction("CMD")) == ["swarmgate", "serve"]
    user = instruction("USER")
    assert user not in ("root", "0") and user
    assert "/readyz" in " ".join(healthcheck_command())
    assert image_env()["SWARMGATE_HOST"] == "0.0.0.0"
    assert instruction("EXPOSE") == image_env()["SWARMGATE_PORT"]


def test_compose_runs_two_replicas_sharing_one_postgresql_with_healthchecks() -> None:
    services = compose()["services"]
    assert set(services) == {"postgres", *GATEWAYS}
    assert "healthcheck" in services["postgres"]
    envs = [service_env(g) for g in GATEWAYS]
    urls = {e["SWARMGATE_DATABASE_URL"] for e in envs}
    assert len(urls) == 1
    (url,) = urls
    assert url.startswith("postgresql://") and urlsplit(url).hostname == "postgres"
    assert {e["SWARMGATE_REPLICA_ID"] for e in envs} == set(GATEWAYS)
    assert len({e["SWARMGATE_PUBLIC_URL"] for e in envs}) == 2
    for name, env in zip(GATEWAYS, envs, strict=True):
        service = services[name]
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert service["healthcheck"]["test"] == ["CMD", *healthcheck_command()]
        assert {"SWARMGATE_LEASE_S", "SWARMGATE_AUTH_MODE", "SWARMGATE_JWT_SECRET"} <= set(env)
    assert len({s["ports"][0].split(":")[0] for s in (services[g] for g in GATEWAYS)}) == 2


@pytest.fixture
def replicas_env(pg_db: str) -> Iterator[list[dict[str, str]]]:
    """Each replica's environment: the image's ENV, then the compose service's, with the
    database host and port pointed at the local PostgreSQL (a throw-away database) and the
    port moved to a free one (8080 may be taken here)."""
    local = urlsplit(pg_db)
    envs = []
    for name in GATEWAYS:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SWARMGATE_")}
        env.update(image_env())
        env.update(service_env(name))
        compose_url = urlsplit(env["SWARMGATE_DATABASE_URL"])
        env["SWARMGATE_DATABASE_URL"] = urlunsplit(
            compose_url._replace(netloc=local.netloc, path=local.path)
        )
        env["SWARMGATE_PORT"] = str(free_port())
        env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
        envs.append(env)
    yield envs


@pytest.mark.timeout(120)
async def test_the_image_command_with_the_compose_settings_gives_two_ready_replicas(
    replicas_env: list[dict[str, str]], tmp_path: Path
) -> None:
    command = json.loads(instruction("CMD"))
    procs = []
    try:
        for env in replicas_env:
            log = (tmp_path / f"{env['SWARMGATE_REPLICA_ID']}.log").open("wb")
            procs.append(subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=log))
        urls = [f"http://127.0.0.1:{env['SWARMGATE_PORT']}" for env in replicas_env]
        async with aiohttp.ClientSession() as http:
            for url, proc in zip(urls, procs, strict=True):
                await ready(http, url, proc, tmp_path)
        for env in replicas_env:  # the image's HEALTHCHECK, as Docker would run it
            check = await asyncio.create_subprocess_exec(*healthcheck_command(), env=env)
            assert await asyncio.wait_for(check.wait(), 30) == 0
        # one database: what one replica registered, the other one sees
        token = await mint(replicas_env[0], tmp_path)
        async with Client(urls[0], token=token) as one, Client(urls[1], token=token) as two:
            # a public address literal: no DNS here, and no SWARMGATE_ALLOW_CIDRS needed
            agent = {
                "name": "shared",
                "endpoint": "https://192.0.32.10",
                "operations": [{"name": "op"}],
            }
            await one.register(agent)
            assert [a["name"] for a in await two.agents()] == ["shared"]
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)
    assert [p.returncode for p in procs] == [0, 0]


async def mint(env: dict[str, str], cwd: Path) -> str:
    """An admin token from the secret the replicas keep in the shared database."""
    proc = await asyncio.create_subprocess_exec(
        "swarmgate", "token", "--sub", "compose", "--scope", "admin",
        env=env, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return out.decode().strip()


async def ready(
    http: aiohttp.ClientSession, url: str, proc: subprocess.Popen[bytes], logs: Path
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while loop.time() < deadline:
        assert proc.poll() is None, "\n".join(p.read_text() for p in logs.glob("*.log"))
        try:
            async with http.get(f"{url}/readyz") as r:
                if r.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"{url} did not become ready")
