// One operation: its facts, input and result, the timeline of its history (attempts with
// errors and durations, heartbeats, steps, input requests, cancel, callbacks with every
// delivery try), its callbacks and the operator's actions. Live from the SSE stream.
import { ApiError, features, get, post, stream } from "./api.js";
import { badge, h, ms, pretty, replace, time } from "./dom.js";
import { failed, notice } from "./app.js";

const CATEGORY = [
  ["attempt.", "attempt"], ["callback.", "callback"], ["cancel.", "cancel"],
  ["step.", "step"], ["input.", "input"], ["heartbeat", "heartbeat"], ["operation.", "operation"],
];

function category(kind) {
  for (const [prefix, name] of CATEGORY) if (kind.startsWith(prefix) || kind.includes(prefix)) return name;
  return "other";
}

function by(d) { return d.by ? ` by ${d.by}` : ""; }

// One line saying what the event means; the raw data is in a <details> beside it.
export function summary(e) {
  const d = e.data || {};
  const took = d.elapsed_ms !== undefined ? ` after ${ms(d.elapsed_ms)}` : "";
  const status = d.status ? ` (HTTP ${d.status})` : "";
  switch (e.kind) {
    case "operation.started": return `Started by ${d.caller || "?"}${d.callback ? ", with a callback" : ""}`;
    case "attempt.started": return `Attempt ${d.attempt} started on ${d.owner || "?"}${d.taken_over_from ? ` (taken over from ${d.taken_over_from})` : ""}`;
    case "attempt.failed": return `Attempt ${d.attempt} failed${took}${status}: ${d.error || ""}`;
    case "attempt.accepted": return `Attempt ${d.attempt} accepted by the agent${took}`;
    case "attempt.deferred": return `Attempt deferred: ${d.reason || ""}`;
    case "operation.succeeded": return `Succeeded${d.attempt ? ` on attempt ${d.attempt}` : ""}${took}`;
    case "operation.failed": return `Failed${d.attempt ? ` on attempt ${d.attempt}` : ""}${took}: ${d.error || d.message || ""}`;
    case "operation.canceled": return `Canceled${by(d)}`;
    case "operation.timed_out": return "Timed out";
    case "operation.redriven": return `Redriven${by(d)}`;
    case "cancel.requested": return `Cancel requested${by(d)}`;
    case "cancel.sent": return "Cancel sent to the agent";
    case "cancel.failed": return `Cancel to the agent failed: ${d.error || ""}`;
    case "callback.delivered": return `Callback delivered on try ${d.attempt}${status}`;
    case "callback.failed": return `Callback try ${d.attempt} failed${status}: ${d.error || ""}`;
    case "callback.expired": return `Callback expired after try ${d.attempt}: ${d.error || ""}`;
    case "callback.disabled": return `Callback disabled after try ${d.attempt}: ${d.error || ""}`;
    case "callback.redriven": return `Callback resent${by(d)}`;
    case "step.completed": return `Step ${d.name || d.step || ""} completed${took}`;
    case "input.requested": return `Input requested${d.prompt ? `: ${d.prompt}` : ""}`;
    default:
      if (category(e.kind) === "heartbeat") return `Heartbeat${d.progress !== undefined ? `: ${pretty(d.progress)}` : ""}`;
      if (e.kind.startsWith("input.")) return `Input ${e.kind.slice(6)}${by(d)}`;
      return e.kind;
  }
}

function timeline(events) {
  return h("ol", { class: "timeline", id: "timeline", "aria-label": "History" }, events.map((e) => {
    const cat = category(e.kind);
    const d = e.data || {};
    return h("li", { class: `ev ev-${cat}${/failed|expired|disabled|timed_out/.test(e.kind) ? " bad" : ""}`, "data-kind": e.kind },
      h("span", { class: "ev-time" }, time(e.at)),
      h("span", { class: "ev-kind" }, e.kind),
      h("span", { class: "ev-text" }, summary(e)),
      d.error ? h("pre", { class: "ev-error" }, String(d.error)) : "",
      Object.keys(d).length ? h("details", {}, h("summary", {}, "data"), h("pre", {}, pretty(d))) : "");
  }));
}

function waitingForInput(events) {
  let waiting = false;
  for (const e of events) {
    if (e.kind === "input.requested") waiting = true;
    else if (e.kind.startsWith("input.")) waiting = false;
    else if (e.kind.startsWith("operation.") && e.kind !== "operation.started" && e.kind !== "operation.redriven") waiting = false;
  }
  return waiting;
}

function facts(op) {
  const rows = [
    ["Agent", h("a", { href: `#/agents/${encodeURIComponent(op.service)}` }, op.service)],
    ["Operation", op.operation], ["Caller", op.caller], ["Request id", op.requestId || "—"],
    ["Attempts", op.attempts], ["Created", time(op.createdAt)], ["Closed", time(op.closedAt) || "—"],
    ["Deadline", time(op.deadlineAt) || "—"], ["Next attempt", time(op.nextAttemptAt) || "—"],
    ["Work", op.work || "—"], ["Lease", op.leaseOwner || "—"], ["Callback", op.callbackUrl || "—"],
  ];
  return h("dl", { class: "facts" }, rows.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

function payload(title, id, value) {
  return h("section", { class: "card", "aria-labelledby": `${id}-h` },
    h("h2", { id: `${id}-h` }, title), h("pre", { class: "json", id }, pretty(value)));
}

export async function operationPage(main, id) {
  const base = `/api/operations/${encodeURIComponent(id)}`;
  const controller = new AbortController();
  let events = [];
  let op = null;
  let callbacks = [];

  async function act(label, path, body) {
    try {
      await post(path, body);
      notice(`${label}: done.`);
    } catch (err) {
      if (err instanceof ApiError && err.status !== 401) notice(`${label}: ${err.message}`, "error");
      else failed(err);
    }
    await load();
    if (!streaming) live();  // a redrive reopens an operation whose stream had ended
  }

  function actions() {
    const out = [];
    if (op.state === "running" && !op.cancelRequestedAt) {
      out.push(h("button", { type: "button", id: "cancel", class: "danger",
        onclick: () => { if (confirm("Cancel this operation?")) act("Cancel", `${base}/cancel`); } }, "Cancel"));
    }
    if (op.state === "failed" || op.state === "canceled") {
      out.push(h("button", { type: "button", id: "redrive", onclick: () => act("Redrive", `${base}/redrive`) }, "Redrive"));
    }
    return out;
  }

  function inputForm() {
    if (!features.has("input") || op.state !== "running" || !waitingForInput(events)) return "";
    const area = h("textarea", { id: "answer", rows: 4, "aria-describedby": "answer-help" }, "{}");
    return h("form", { class: "card", "aria-labelledby": "answer-h", onsubmit: (ev) => {
      ev.preventDefault();
      let value;
      try { value = JSON.parse(area.value); } catch { notice("The answer must be JSON.", "error"); return; }
      act("Answer", `${base}/input`, value);
    } }, h("h2", { id: "answer-h" }, "Answer the input request"),
    h("label", { for: "answer" }, "Answer (JSON)"), area,
    h("p", { id: "answer-help", class: "help" }, "Sent to the agent; recorded in the history with your name."),
    h("button", { type: "submit", id: "send-answer" }, "Send answer"));
  }

  function callbackTable() {
    if (!callbacks.length) return "";
    return h("section", { class: "card", "aria-labelledby": "cb-h" }, h("h2", { id: "cb-h" }, "Callbacks"),
      callbacks.map((c) => {
        const tries = events.filter((e) => e.kind.startsWith("callback.") && (e.data || {}).delivery_id === c.id);
        return h("div", { class: "delivery", "data-delivery": c.id },
          h("p", {}, h("span", { class: "mono" }, c.id), " ", badge(c.state), " to ",
            h("span", { class: "mono" }, c.url), ` — ${c.attempts} tries`),
          c.lastError ? h("pre", { class: "ev-error" }, c.lastError) : "",
          h("ol", { class: "tries" }, tries.map((e) => h("li", {}, time(e.at), " ", summary(e)))),
          c.state === "expired" || c.state === "disabled"
            ? h("button", { type: "button", class: "resend",
              onclick: () => act("Resend callback", `${base}/callbacks/${encodeURIComponent(c.id)}/redrive`) }, "Resend callback")
            : "");
      }));
  }

  function render() {
    replace(main,
      h("h1", {}, "Operation ", h("span", { class: "mono", id: "op-id" }, op.id), " ", badge(op.state)),
      h("div", { class: "actions", id: "actions" }, actions()),
      facts(op),
      op.lastError ? h("p", { class: "error", id: "last-error" }, "Last error: ", op.lastError) : "",
      inputForm(),
      h("div", { class: "two" },
        payload("Input", "input", op.input),
        op.state === "succeeded" ? payload("Result", "result", op.result)
          : op.failure ? payload("Failure", "failure", op.failure) : ""),
      callbackTable(),
      h("section", { class: "card", "aria-labelledby": "tl-h" }, h("h2", { id: "tl-h" }, "Timeline"), timeline(events)));
  }

  async function load() {
    const [o, ev, cb] = await Promise.all([get(base), get(`${base}/events`), get(`${base}/callbacks`)]);
    op = o; events = ev.events; callbacks = cb.callbacks;
    render();
  }

  let pending = null;
  let streaming = false;
  function live() {
    const after = events.length ? events[events.length - 1].id : 0;
    streaming = true;
    stream(`${base}/stream?after=${after}`, (e) => {
      if (events.some((x) => x.id === e.id)) return;
      events.push(e);
      clearTimeout(pending);
      pending = setTimeout(() => load().catch(failed), 150);
    }, controller.signal).then(() => { streaming = false; return load(); }).catch((err) => {
      streaming = false;
      if (err.name !== "AbortError") failed(err);
    });
  }

  await load();
  live();
  return () => { controller.abort(); clearTimeout(pending); };
}
