// Agents: the registry, each agent's operations and schemas, its endpoint, and its health
// (this replica's circuit breaker, its operations by state).
import { get } from "./api.js";
import { badge, h, pretty, replace, time } from "./dom.js";

export async function agentsPage(main) {
  const data = await get("/api/agents");
  replace(main, h("h1", {}, "Agents"), h("div", { class: "scroll" }, h("table", { class: "agents" },
    h("caption", { class: "sr-only" }, "Registered agents"),
    h("thead", {}, h("tr", {}, ["Agent", "Adapter", "Endpoint", "Operations", "Version"].map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, data.agents.length ? data.agents.map((a) => h("tr", { "data-agent": a.name },
      h("td", {}, h("a", { href: `#/agents/${encodeURIComponent(a.name)}` }, a.name), h("div", { class: "muted" }, a.description || "")),
      h("td", {}, a.adapter),
      h("td", { class: "mono" }, a.endpoint),
      h("td", {}, a.operations.map((o) => o.name).join(", ")),
      h("td", { class: "num" }, a.registryVersion))) : h("tr", {}, h("td", { colspan: 5, class: "muted" }, "No agents registered."))))));
  return null;
}

function schema(title, value) {
  return h("details", {}, h("summary", {}, title), h("pre", { class: "json" }, value ? pretty(value) : "any"));
}

export async function agentPage(main, name) {
  const path = `/api/agents/${encodeURIComponent(name)}`;
  const [agent, status] = await Promise.all([get(path), get(`${path}/status`)]);
  const breaker = status.breaker;
  const counts = Object.entries(status.operations);
  replace(main,
    h("h1", {}, "Agent ", h("span", { id: "agent-name" }, agent.name)),
    h("p", { class: "muted" }, agent.description || ""),
    h("dl", { class: "facts" },
      h("dt", {}, "Endpoint"), h("dd", { class: "mono" }, agent.endpoint),
      h("dt", {}, "Adapter"), h("dd", {}, agent.adapter),
      h("dt", {}, "Owner"), h("dd", {}, agent.owner || "—"),
      h("dt", {}, "Version"), h("dd", {}, `${agent.version || ""} (registry v${agent.registryVersion})`),
      h("dt", {}, "Circuit breaker"), h("dd", { id: "breaker" }, badge(breaker.state),
        ` ${breaker.failures} consecutive failures`, breaker.openUntil ? [" until ", time(breaker.openUntil)] : "",
        ` (replica ${status.replica})`),
      h("dt", {}, "Operations"), h("dd", {}, counts.length ? counts.map(([s, n]) => h("a", {
        class: "count", href: `#/operations?service=${encodeURIComponent(agent.name)}&state=${encodeURIComponent(s)}` }, `${n} ${s}`)) : "none",
      " ", h("a", { href: `#/operations?service=${encodeURIComponent(agent.name)}` }, "all of them"))),
    h("h2", {}, "Operations it offers"),
    agent.operations.map((o) => h("section", { class: "card", "data-op": o.name },
      h("h3", {}, o.name), h("p", { class: "muted" }, o.description || ""),
      h("p", {}, `timeout ${o.timeout_s} s, attempt timeout ${o.attempt_timeout_s} s, retries up to ${o.retry.max_attempts ?? "∞"} attempts`,
        o.concurrency ? `, at most ${o.concurrency} at a time` : ""),
      schema("Input schema", o.input_schema), schema("Output schema", o.output_schema))));
  return null;
}
