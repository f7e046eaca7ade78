// The operations list: filters (agent, state, caller, time range, request id text), live
// counts per state, refreshed by polling.
import { get } from "./api.js";
import { badge, h, replace, time } from "./dom.js";
import { failed, go } from "./app.js";

const STATES = ["running", "succeeded", "failed", "canceled"];
const FILTERS = ["service", "state", "caller", "since", "until", "q"];
const REFRESH_MS = 2000;

function localValue(iso) {  // an ISO time as a datetime-local field value
  if (!iso) return "";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return "";
  const local = new Date(d.getTime() - d.getTimezoneOffset() * 60000);
  return local.toISOString().slice(0, 16);
}

function field(label, name, input) {
  input.id = `f-${name}`;
  input.name = name;
  return h("div", { class: "field" }, h("label", { for: input.id }, label), input);
}

export async function operationsPage(main, params) {
  const value = (name) => params.get(name) || "";
  const stateSelect = h("select", {}, h("option", { value: "" }, "any"),
    STATES.map((s) => h("option", { value: s, selected: value("state") === s }, s)));
  const agents = h("datalist", { id: "agent-names" });
  const inputs = {
    service: h("input", { type: "text", value: value("service"), list: "agent-names" }),
    state: stateSelect,
    caller: h("input", { type: "text", value: value("caller") }),
    since: h("input", { type: "datetime-local", value: localValue(value("since")) }),
    until: h("input", { type: "datetime-local", value: localValue(value("until")) }),
    q: h("input", { type: "search", value: value("q"), placeholder: "part of a request id" }),
  };
  const form = h("form", {
    class: "filters", role: "search", "aria-label": "Filter operations",
    onsubmit: (ev) => {
      ev.preventDefault();
      const next = new URLSearchParams();
      for (const name of FILTERS) {
        let v = inputs[name].value.trim();
        if (v && (name === "since" || name === "until")) v = new Date(v).toISOString();
        if (v) next.set(name, v);
      }
      go(`#/operations?${next}`);
    },
  },
  field("Agent", "service", inputs.service), agents,
  field("State", "state", inputs.state),
  field("Caller", "caller", inputs.caller),
  field("From", "since", inputs.since),
  field("To", "until", inputs.until),
  field("Request id", "q", inputs.q),
  h("div", { class: "field buttons" },
    h("button", { type: "submit" }, "Filter"),
    h("button", { type: "button", class: "secondary", onclick: () => go("#/operations") }, "Clear")));

  const counts = h("ul", { class: "counts", "aria-label": "Operations by state", id: "counts" });
  const body = h("tbody", { id: "ops-body" });
  const status = h("p", { class: "muted", id: "ops-status", "aria-live": "polite" });
  const table = h("table", { class: "ops", "aria-describedby": "ops-status" },
    h("caption", { class: "sr-only" }, "Operations, newest first"),
    h("thead", {}, h("tr", {}, ["Operation", "Agent", "State", "Caller", "Request id",
      "Attempts", "Created", "Closed"].map((t) => h("th", { scope: "col" }, t)))),
    body);
  replace(main, h("h1", {}, "Operations"), form, counts, status, h("div", { class: "scroll" }, table));

  get("/api/agents").then((data) => replace(agents,
    data.agents.map((a) => h("option", { value: a.name })))).catch(() => {});

  const query = new URLSearchParams();
  for (const name of FILTERS) if (value(name)) query.set(name, value(name));
  query.set("counts", "true");
  query.set("limit", "200");

  async function refresh() {
    const data = await get(`/api/operations?${query}`);
    replace(counts, STATES.map((s) => {
      const n = (data.counts || {})[s] || 0;
      const next = new URLSearchParams(query);
      next.delete("counts"); next.delete("limit"); next.set("state", s);
      return h("li", {}, h("a", { href: `#/operations?${next}`, class: `count state-${s}` },
        h("span", { class: "n", "data-state": s }, n), " ", s));
    }));
    replace(body, data.operations.length ? data.operations.map((op) => h("tr", { "data-id": op.id },
      h("td", {}, h("a", { href: `#/operations/${encodeURIComponent(op.id)}`, class: "mono" }, op.id.slice(0, 8))),
      h("td", {}, h("a", { href: `#/agents/${encodeURIComponent(op.service)}` }, op.service), " / ", op.operation),
      h("td", {}, badge(op.state)),
      h("td", {}, op.caller),
      h("td", { class: "mono" }, op.requestId || ""),
      h("td", { class: "num" }, op.attempts),
      h("td", {}, time(op.createdAt)),
      h("td", {}, time(op.closedAt)),
    )) : h("tr", {}, h("td", { colspan: 8, class: "muted" }, "No operations match.")));
    replace(status, `${data.operations.length} shown, refreshed ${new Date().toLocaleTimeString()}`);
  }

  await refresh();
  let stopped = false;
  const timer = setInterval(() => { if (!stopped) refresh().catch(failed); }, REFRESH_MS);
  return () => { stopped = true; clearInterval(timer); };
}
