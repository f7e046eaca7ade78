"""The web console at ``/ui``: a small static app (plain JS modules and CSS, no build step).

The files live in ``gateway/http/ui/`` and ship as package data. The app talks only to the
JSON API, with the token the user typed kept in ``sessionStorage`` and sent as a Bearer
header (never a cookie, never the URL). Every response here carries a Content-Security-Policy
that allows no inline script and no other origin, so text the app renders from operation
inputs or errors cannot run.
"""

from __future__ import annotations

import html
import re
from importlib import resources

from aiohttp import web

from gateway.domain.errors import HandlerError, HandlerErrorType

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
TYPES = {
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
}
ASSET_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*\.(js|css|svg)$")
# Endpoints the console offers a button for only when this gateway serves them.
OPTIONAL_FEATURES = {"input": ("POST", "/api/operations/{op_id}/input")}

UI_APP = web.AppKey("swarmgate.ui", dict)


def _files() -> dict[str, bytes]:
    """The console's files, read once (package data, so it works from a wheel too)."""
    root = resources.files("gateway.http").joinpath("ui")
    return {f.name: f.read_bytes() for f in root.iterdir() if f.is_file()}


def _features(app: web.Application) -> list[str]:
    served = {
        (route.method, resource.canonical)
        for resource in app.router.resources()
        for route in resource
    }
    return [name for name, route in OPTIONAL_FEATURES.items() if route in served]


async def index(request: web.Request) -> web.Response:
    state = request.app[UI_APP]
    if "page" not in state:
        template = state["files"]["index.html"].decode()
        state["page"] = template.replace(
            "{{auth_mode}}", html.escape(state["auth_mode"], quote=True)
        ).replace("{{features}}", html.escape(" ".join(_features(request.app)), quote=True))
    return web.Response(
        text=state["page"],
        content_type="text/html",
        headers={**SECURITY_HEADERS, "Cache-Control": "no-store"},
    )


async def asset(request: web.Request) -> web.Response:
    name = request.match_info["asset"]
    files = request.app[UI_APP]["files"]
    if not ASSET_NAME.match(name) or name not in files:
        raise HandlerError(HandlerErrorType.NOT_FOUND, "no such console file")
    suffix = name[name.rindex(".") :]
    return web.Response(
        body=files[name],
        content_type=TYPES[suffix],
        charset="utf-8",
        headers={**SECURITY_HEADERS, "Cache-Control": "no-cache"},
    )


async def slash(request: web.Request) -> web.Response:
    raise web.HTTPFound("/ui", headers=SECURITY_HEADERS)


def add_routes(app: web.Application, *, auth_mode: str) -> None:
    app[UI_APP] = {"files": _files(), "auth_mode": auth_mode}
    r = app.router
    r.add_get("/ui", index)
    r.add_get("/ui/", slash)
    r.add_get("/ui/{asset}", asset)
