"""An agent that speaks MCP: a small ``mcp`` SDK server (MCPServer over Streamable HTTP).

The gateway registers it by URL (``"adapter": "mcp"``): its tools become the agent's
operations, with the tools' input and output schemas. The planner calls ``convert``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import BaseModel

RATES = {"EUR": 1.0, "USD": 1.08, "JPY": 162.0, "NOK": 11.6, "PEN": 4.05, "EGP": 52.0}


class Converted(BaseModel):
    amount: float
    currency: str
    rate: float


def currency_server(calls: list[dict[str, Any]] | None = None) -> MCPServer[Any]:
    """The MCP server; each call's arguments are appended to ``calls`` when given."""
    server: MCPServer[Any] = MCPServer("currency", version="1", log_level="WARNING")

    @server.tool(description="Convert an amount in EUR into another currency")
    def convert(eur: float, currency: str) -> Converted:
        if calls is not None:
            calls.append({"tool": "convert", "eur": eur, "currency": currency})
        rate = RATES.get(currency.upper())
        if rate is None:
            raise ToolError(f"unknown currency {currency!r}")
        return Converted(amount=round(eur * rate, 2), currency=currency.upper(), rate=rate)

    @server.tool(description="The currencies this agent knows")
    def currencies() -> list[str]:
        return sorted(RATES)

    return server


@asynccontextmanager
async def serve_mcp(server: MCPServer[Any], port: int) -> AsyncIterator[str]:
    """Serve ``server`` on a loopback port with uvicorn; yields its MCP endpoint URL."""
    app = server.streamable_http_app()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    uv = uvicorn.Server(config)
    task = asyncio.create_task(uv.serve())
    while not uv.started:
        if task.done():
            task.result()  # raises what stopped it (the port is taken, say)
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        uv.should_exit = True
        await task


def currency_spec(name: str, endpoint: str) -> dict[str, Any]:
    """The registration body: the URL is enough, the tools are listed by the gateway."""
    return {"name": name, "endpoint": endpoint, "adapter": "mcp"}
