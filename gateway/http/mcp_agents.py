"""Agents that are MCP servers: their tools become operations at registration and refresh.

``POST /api/agents`` with ``"adapter": "mcp"`` lists the server's tools (``tools/list``
through the screened transport) before the agent is stored, so the tools' schemas pass the
registry's checks like any registration. ``POST /api/agents/{name}/refresh`` lists them
again (same owner rules as replacing the agent).
"""

from __future__ import annotations

from dataclasses import replace

from aiohttp import web

from adapters.mcp import McpAgentAdapter, McpRpcError, McpTrouble, operations_from_tools
from gateway.domain.errors import HandlerError, HandlerErrorType
from gateway.domain.specs import AdapterKind, AgentSpec
from gateway.http.context import check_outbound_url, principal, services

ADAPTER = web.AppKey("swarmgate.mcp.adapter", McpAgentAdapter)
LIST_TIMEOUT_S = 15.0


async def discover(request: web.Request, spec: AgentSpec) -> AgentSpec:
    """``spec`` with its operations made from the MCP server's tools (400 if it cannot)."""
    adapter = request.app[ADAPTER]
    try:
        tools = await adapter.list_tools(spec.endpoint, LIST_TIMEOUT_S)
        operations = operations_from_tools(tools, spec.operations)
    except McpRpcError as exc:
        raise HandlerError(
            HandlerErrorType.BAD_REQUEST, f"the MCP server refused tools/list: {exc}"
        ) from exc
    except McpTrouble as exc:
        raise HandlerError(
            HandlerErrorType.BAD_REQUEST, f"the MCP server could not be asked for its tools: {exc}"
        ) from exc
    except ValueError as exc:
        raise HandlerError(HandlerErrorType.BAD_REQUEST, str(exc)) from exc
    if not operations:
        raise HandlerError(
            HandlerErrorType.BAD_REQUEST, "the MCP server lists no tool usable as an operation"
        )
    return replace(spec, operations=operations)


async def refresh(request: web.Request) -> web.Response:
    from gateway.http.api import agent_json  # the shape every agent read answers with

    p = await principal(request)
    p.require("agents:register")
    svc = services(request)
    name = request.match_info["name"]
    found = await svc.registry.get(name)
    if found is None:
        raise HandlerError(HandlerErrorType.NOT_FOUND, "no such agent")
    if found.adapter is not AdapterKind.MCP:
        raise HandlerError(HandlerErrorType.BAD_REQUEST, "only MCP agents list their operations")
    await check_outbound_url(request, found.endpoint, "agent endpoint")
    spec = await discover(request, replace(found, operations={}, owner=None))
    version, _created = await svc.registry.register_as(spec, p.sub, admin=p.is_admin)
    stored = await svc.registry.get(name)
    return web.json_response(agent_json(stored or spec, version))


def add_routes(app: web.Application, adapter: McpAgentAdapter) -> None:
    app[ADAPTER] = adapter
    app.router.add_post("/api/agents/{name}/refresh", refresh)


__all__ = ["ADAPTER", "add_routes", "discover"]
