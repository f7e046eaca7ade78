// The console's router and shell: hash routes (#/operations, #/operations/ID, #/agents,
// #/agents/NAME, #/login), the login form and the notices.
import { ApiError, authMode, get, token } from "./api.js";
import { h, replace } from "./dom.js";
import { operationsPage } from "./operations.js";
import { operationPage } from "./operation.js";
import { agentPage, agentsPage } from "./agents.js";

const main = document.getElementById("main");
let cleanup = null;

export function notice(message, kind = "info") {
  const box = document.getElementById("notice");
  replace(box, message ? h("p", { class: `notice ${kind}` }, message) : "");
}

export function go(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

// Shown when a page fails: a 401 sends the user to the login form.
export function failed(err) {
  if (err instanceof ApiError && err.status === 401 && token.needed()) {
    token.clear();
    go("#/login");
    notice("Your token was refused or has expired: sign in again.", "error");
    return;
  }
  notice(String(err.message || err), "error");
}

function loginPage() {
  const input = h("input", {
    id: "token", name: "token", type: "password", autocomplete: "off", required: true,
    "aria-describedby": "token-help", spellcheck: "false",
  });
  const error = h("p", { class: "error", role: "alert", id: "login-error" });
  const form = h(
    "form",
    {
      class: "card login", "aria-labelledby": "login-title",
      onsubmit: async (ev) => {
        ev.preventDefault();
        token.set(input.value.trim());
        try {
          await get("/api/operations?limit=1");
        } catch (err) {
          token.clear();
          replace(error, err instanceof ApiError && err.status === 401
            ? "This token was refused." : String(err.message || err));
          return;
        }
        notice("");
        go("#/operations");
      },
    },
    h("h1", { id: "login-title" }, "Sign in"),
    h("label", { for: "token" }, "Token"),
    input,
    h("p", { id: "token-help", class: "help" },
      "A JWT for this gateway (e.g. from swarmgate token). It is kept in this tab only."),
    error,
    h("button", { type: "submit" }, "Sign in"),
  );
  replace(main, form);
  input.focus();
}

// The token's subject, to show who is signed in (read, not verified: the gateway verifies).
function subject(jwt) {
  try {
    const part = (jwt || "").split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const sub = JSON.parse(atob(part)).sub;
    return typeof sub === "string" ? `signed in as ${sub}` : "";
  } catch {
    return "";
  }
}

function shell() {
  const signout = document.getElementById("signout");
  signout.hidden = !token.needed() || !token.get();
  signout.onclick = () => { token.clear(); go("#/login"); };
  const who = document.getElementById("who");
  replace(who, authMode === "none" ? "no authentication" : subject(token.get()));
}

async function route() {
  if (cleanup) { cleanup(); cleanup = null; }
  const hash = location.hash || "#/operations";
  const [path, query = ""] = hash.slice(1).split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  const params = new URLSearchParams(query);
  for (const a of document.querySelectorAll("[data-nav]")) {
    if (a.dataset.nav === parts[0]) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  shell();
  if (parts[0] === "login" || (token.needed() && !token.get())) {
    if (parts[0] !== "login") { location.hash = "#/login"; return; }
    loginPage();
    return;
  }
  try {
    if (parts[0] === "operations" && parts[1]) cleanup = await operationPage(main, parts[1]);
    else if (parts[0] === "agents" && parts[1]) cleanup = await agentPage(main, parts[1]);
    else if (parts[0] === "agents") cleanup = await agentsPage(main);
    else cleanup = await operationsPage(main, params);
  } catch (err) {
    failed(err);
  }
}

window.addEventListener("hashchange", route);
route();
