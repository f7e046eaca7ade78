"""The MCP TypeScript SDK client (``@modelcontextprotocol/sdk`` from npm) against /mcp.

The test installs the SDK into tests/node_mcp (package.json and package-lock.json are
committed; node_modules is not) and runs check.mjs there: initialize, tools/list, tools/call.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_mcp_endpoint import ECHO_IN, gateway_with_agent

HERE = Path(__file__).resolve().parents[1] / "node_mcp"
NODE = shutil.which("node")
NPM = shutil.which("npm")

pytestmark = pytest.mark.skipif(
    NODE is None or NPM is None, reason="node/npm are not installed: the Node MCP check needs them"
)


async def _run(*cmd: str, timeout: float) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        cwd=HERE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, out.decode(), err.decode()


async def _install() -> None:
    if (HERE / "node_modules" / "@modelcontextprotocol" / "sdk").is_dir():
        return
    assert NPM is not None
    code, out, err = await _run(NPM, "ci", "--no-audit", "--no-fund", timeout=300)
    assert code == 0, f"npm ci failed:\n{out}\n{err}"


async def test_the_typescript_sdk_client_lists_and_calls_the_gateways_tools(
    tmp_path: Path,
) -> None:
    await _install()
    assert NODE is not None
    async with gateway_with_agent(f"sqlite:///{tmp_path}/swarmgate.db") as gw:
        code, out, err = await _run(
            NODE, "check.mjs", gw.url, "worker__echo", json.dumps({"msg": "from node"}), timeout=60
        )
    assert code == 0, f"node check failed:\n{out}\n{err}"
    seen: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    assert seen["protocolVersion"] == "2025-11-25"
    assert seen["sessionId"]
    assert seen["serverInfo"]["name"] == "swarmgate"
    assert "tasks" in seen["capabilities"]
    tools = {t["name"]: t for t in seen["tools"]}
    assert tools["worker__echo"]["inputSchema"] == ECHO_IN
    assert tools["worker__echo"]["execution"] == {"taskSupport": "optional"}
    assert seen["result"]["isError"] is False
    assert seen["result"]["structuredContent"] == {"echo": {"msg": "from node"}}
