// The MCP TypeScript SDK client against a swarmgate /mcp endpoint:
// initialize, tools/list, tools/call; prints one JSON line with what it saw.
// usage: node check.mjs <gateway base URL> <tool name> <arguments JSON> [bearer token]
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const [base, tool, args, token] = process.argv.slice(2);
const headers = token ? { Authorization: `Bearer ${token}` } : {};
const transport = new StreamableHTTPClientTransport(new URL(base + "/mcp"), {
  requestInit: { headers },
});
const client = new Client({ name: "swarmgate-node-check", version: "1.0.0" });
await client.connect(transport);
const listed = await client.listTools();
const result = await client.callTool({ name: tool, arguments: JSON.parse(args) });
console.log(
  JSON.stringify({
    protocolVersion: transport.protocolVersion ?? null,
    sessionId: transport.sessionId ?? null,
    serverInfo: client.getServerVersion(),
    capabilities: client.getServerCapabilities(),
    tools: listed.tools.map((t) => ({ name: t.name, inputSchema: t.inputSchema, execution: t.execution })),
    result,
  }),
);
await transport.terminateSession();
await client.close();
