"""The built wheel is a working product: built from a copy of the source tree, installed into a
fresh virtual environment (core dependencies first: the SDK must work without the server's;
then the ``server`` extra, from PyPI), and its ``swarmgate serve`` answers register, start and
result over HTTP with a real agent on loopback. Nothing here imports the source tree's gateway
into the installed one: the gateway runs from the venv, in an empty working directory."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.sdk.agent import AgentApp, OpContext
from gateway.sdk.client import Client
from gateway.testing import ROOT, free_port
from tests.conftest import serving_agent

SECRET = "wheel-test-secret-0123456789abcdef-0123456789"
PIP_TIMEOUT_S = 600.0
IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "var", "*.egg-info", "__pycache__", ".*_cache", "*.db*"
)


def run(*cmd: str | Path, timeout: float, cwd: Path | None = None, env: Any = None) -> str:
    proc = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def venv_env(**extra: str) -> dict[str, str]:
    """No PYTHONPATH (the source tree must not leak in), no SWARMGATE_* from the test run."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SWARMGATE_", "PYTHON", "VIRTUAL_ENV"))
    }
    env.update(PYTHONUNBUFFERED="1", PIP_DISABLE_PIP_VERSION_CHECK="1", **extra)
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``python -m build --wheel`` of a copy of the source tree (the checkout stays clean)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(ROOT, src, symlinks=True, ignore=IGNORE)
    run(sys.executable, "-m", "build", "--wheel", "--outdir", tmp / "dist", src, timeout=300)
    (built,) = (tmp / "dist").glob("swarmgate-*.whl")
    return built


def test_the_wheel_holds_the_spec_migrations_types_and_license_and_no_bench_or_examples(
    wheel: Path,
) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        openapi = zf.read("gateway/_spec/openapi.yaml")
    top = {n.split("/", 1)[0] for n in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"gateway", "registry", "adapters"}
    assert openapi == (ROOT / "spec" / "openapi.yaml").read_bytes()
    schemas = {p.name for p in (ROOT / "spec" / "schemas").glob("*.json")}
    assert {f"gateway/_spec/schemas/{s}" for s in schemas} <= names
    migrations = ROOT / "gateway" / "store" / "migrations"
    needed = {"env.py", "script.py.mako"} | {
        f"versions/{p.name}" for p in (migrations / "versions").glob("*.py")
    }
    assert {f"gateway/store/migrations/{n}" for n in needed} <= names
    assert {"gateway/py.typed", "registry/py.typed", "adapters/py.typed"} <= names
    licenses = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
    assert len(licenses) == 1
    with zipfile.ZipFile(wheel) as zf:
        assert b"Apache License" in zf.read(licenses[0])
        metadata = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: Apache-2.0" in metadata
    assert "Provides-Extra: server" in metadata and "Provides-Extra: postgresql" in metadata


# Run in the venv with the core dependencies only: none of the server's packages is there,
# and an AgentApp serves a call on loopback.
SDK_ONLY = """
import asyncio, importlib.util
heavy = [m for m in ("asyncpg", "alembic", "sqlalchemy", "jsonschema", "jwt", "aiosqlite")
         if importlib.util.find_spec(m)]
assert not heavy, heavy
import aiohttp
from aiohttp import web
from gateway.sdk.agent import AgentApp
from gateway.sdk.client import Client

agent = AgentApp("hello")

@agent.operation("greet")
async def greet(ctx, payload):
    return {"greeting": "hello, " + payload["name"]}

async def main():
    Client("http://127.0.0.1:1")
    runner = web.AppRunner(agent.app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    async with aiohttp.ClientSession() as http:
        async with http.post(f"http://127.0.0.1:{port}/greet", json={"name": "core"},
                             headers={"Idempotency-Key": "k1"}) as r:
            print(r.status, await r.text())
    await runner.cleanup()

asyncio.run(main())
"""


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh venv with the wheel: core dependencies only (checked), then ``[server]``."""
    where = tmp_path_factory.mktemp("venv") / "venv"
    run(sys.executable, "-m", "venv", where, timeout=120)
    python = where / "bin" / "python"
    pip = [python, "-m", "pip", "install", "-q", "--timeout", "60"]
    run(*pip, wheel, timeout=PIP_TIMEOUT_S, env=venv_env())
    assert run(python, "-c", SDK_ONLY, timeout=60, env=venv_env(), cwd=where).strip() == (
        '200 {"greeting": "hello, core"}'
    )
    run(*pip, f"{wheel}[server]", timeout=PIP_TIMEOUT_S, env=venv_env())
    yield where


def greeter() -> AgentApp:
    agent = AgentApp("hello")

    @agent.operation("greet", input_schema={"type": "object", "required": ["name"]})
    async def greet(ctx: OpContext, payload: Any) -> Any:
        return {"greeting": f"hello, {payload['name']}"}

    @agent.operation("slow_greet", mode="async")
    async def slow_greet(ctx: OpContext, payload: Any) -> Any:
        await asyncio.sleep(0.2)
        return {"greeting": f"hello later, {payload['name']}"}

    return agent


@pytest.mark.timeout(900)
async def test_the_installed_wheel_serves_register_start_and_result(
    venv: Path, tmp_path: Path
) -> None:
    bin_dir = venv / "bin"
    where = run(
        bin_dir / "python",
        "-c",
        "import gateway; print(gateway.__file__)",
        timeout=60,
        cwd=tmp_path,
    )
    assert where.startswith(str(venv)), where
    version = run(bin_dir / "swarmgate", "--version", timeout=60, env=venv_env(), cwd=tmp_path)
    assert version.startswith("swarmgate ")

    port = free_port()
    env = venv_env(
        SWARMGATE_DATABASE_URL=f"sqlite:///{tmp_path}/gw.db",
        SWARMGATE_PORT=str(port),
        SWARMGATE_ALLOW_CIDRS="127.0.0.0/8",
        SWARMGATE_JWT_SECRET=SECRET,
        SWARMGATE_SYNC_WAIT_S="0",
    )
    token = run(
        bin_dir / "swarmgate", "token", "--sub", "wheel", "--scope", "admin",
        timeout=60, env=env, cwd=tmp_path,
    ).strip()  # fmt: skip
    log = (tmp_path / "gateway.log").open("wb")
    gw = subprocess.Popen(
        [bin_dir / "swarmgate", "serve"], cwd=tmp_path, env=env, stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_ready(url, gw, tmp_path / "gateway.log")
        async with serving_agent(greeter()) as agent_url:
            spec = greeter().spec(agent_url).to_json()
            async with (
                aiohttp.ClientSession() as http,
                http.post(
                    f"{url}/api/agents", json=spec, headers={"Authorization": f"Bearer {token}"}
                ) as r,
            ):
                assert r.status == 201, await r.text()
            async with Client(url, token=token, retry_for_s=5) as client:
                started = await client.start("hello", "slow_greet", {"name": "wheel"})
                assert started.state == "running"
                result = await client.result("hello", "slow_greet", started.token, wait_s=10)
                assert result == {"greeting": "hello later, wheel"}
                assert await client.call("hello", "greet", {"name": "pip"}) == {
                    "greeting": "hello, pip"
                }
                op = await client.operation(started.token)
                assert op["state"] == "succeeded"
    finally:
        gw.terminate()
        gw.wait(30)
        log.close()
    assert gw.returncode == 0, (tmp_path / "gateway.log").read_text()


async def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"the gateway exited: {log.read_text()}"
            try:
                async with http.get(f"{url}/readyz") as r:
                    if r.status == 200:
                        body = json.loads(await r.text())
                        assert body == {"status": "ready"}
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError(f"the gateway did not become ready: {log.read_text()}")
