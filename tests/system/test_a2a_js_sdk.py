"""The A2A JavaScript SDK (@a2a-js/sdk, the client other stacks use) against a live gateway:
discovery from the host's root card and from an agent's card, a blocking send routed by
skill, and GetTask, over both bindings. The SDK is installed (npm ci) into tests/js_a2a, a
folder of its own."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import make_settings, running_gateway, serving_agent
from tests.helpers import make_test_agent, spec_with

HERE = Path(__file__).resolve().parent.parent / "js_a2a"
NODE = shutil.which("node")
NPM = shutil.which("npm")

pytestmark = pytest.mark.skipif(
    NODE is None or NPM is None,
    reason="node/npm are not installed: the A2A JavaScript SDK check needs them",
)


async def _run(*argv: str, timeout: float) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=HERE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode or 0, out.decode(), err.decode()


async def _install() -> None:
    if (HERE / "node_modules" / "@a2a-js" / "sdk" / "package.json").exists():
        return
    assert NPM is not None
    code, out, err = await _run(NPM, "ci", "--no-audit", "--no-fund", timeout=300)
    assert code == 0, f"npm ci failed:\n{out}\n{err}"


# The SDK resolves the card URL relative to the base URL (WHATWG URL rules): the host root
# gives the root card (skills "{agent}/{operation}"); "/a2a/worker/" gives the agent's card.
CASES = [
    ("JSONRPC", "", "worker/echo"),
    ("HTTP+JSON", "", "worker/echo"),
    ("JSONRPC", "/a2a/worker/", "echo"),
    ("HTTP+JSON", "/a2a/worker/", "echo"),
]


@pytest.mark.parametrize(("binding", "path", "skill"), CASES)
async def test_the_a2a_js_sdk_discovers_the_gateway_sends_and_gets_the_task(
    tmp_path: Path, binding: str, path: str, skill: str
) -> None:
    await _install()
    agent = make_test_agent()
    async with serving_agent(agent) as agent_url:
        settings = make_settings(f"sqlite:///{tmp_path}/js.db")
        async with running_gateway(settings) as gw:
            await gw.gw.registry.register(spec_with(agent, agent_url))
            assert NODE is not None
            code, out, err = await _run(
                NODE, "check.mjs", gw.url + path, binding, skill, timeout=60
            )
    assert code == 0, f"the JS SDK check failed:\n{out}\n{err}"
    answer = json.loads(out.strip().splitlines()[-1])
    assert answer["id"] == answer["sentId"]
    assert answer["state"] in (3, "TASK_STATE_COMPLETED")  # the SDK's enum value
    assert answer["data"] == {"echo": {"from": "js"}}
