// The JSON API, with the token from sessionStorage as a Bearer header. The token is never
// put in a cookie or a URL; closing the tab forgets it.

const KEY = "swarmgate.token";
export const authMode = document.querySelector('meta[name="swarmgate-auth"]')?.content || "hs256";
export const features = new Set(
  (document.querySelector('meta[name="swarmgate-features"]')?.content || "").split(/\s+/).filter(Boolean),
);

export class ApiError extends Error {
  constructor(status, problem) {
    super((problem && (problem.detail || problem.title || problem.message)) || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

export const token = {
  get: () => sessionStorage.getItem(KEY),
  set: (value) => sessionStorage.setItem(KEY, value),
  clear: () => sessionStorage.removeItem(KEY),
  needed: () => authMode !== "none",
};

function headers(extra) {
  const out = { Accept: "application/json", ...extra };
  const t = token.get();
  if (t) out.Authorization = `Bearer ${t}`;
  return out;
}

export async function api(method, path, body) {
  const init = { method, headers: headers(), credentials: "omit", cache: "no-store" };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(path, init);
  const text = await resp.text();
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch { data = { detail: text }; }
  }
  if (!resp.ok) throw new ApiError(resp.status, data);
  return data;
}

export const get = (path) => api("GET", path);
export const post = (path, body) => api("POST", path, body);

// Server-Sent Events over fetch (EventSource cannot send an Authorization header).
// Calls onEvent(event) for each frame; resolves when the stream ends or signal aborts.
export async function stream(path, onEvent, signal) {
  const resp = await fetch(path, {
    headers: headers({ Accept: "text/event-stream" }), credentials: "omit", cache: "no-store", signal,
  });
  if (!resp.ok || !resp.body) throw new ApiError(resp.status, null);
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const frame = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = frame.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
      if (data) {
        try { onEvent(JSON.parse(data)); } catch { /* a frame that is not JSON is skipped */ }
      }
    }
  }
}
