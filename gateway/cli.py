"""``swarmgate`` command line.

Server side: ``serve``, ``migrate`` and ``token`` (mint a dev HS256 JWT). Client side, over HTTP
to the gateway at ``--url`` (``SWARMGATE_URL``) with ``--token`` (``SWARMGATE_TOKEN``):

    swarmgate call AGENT OP --input JSON|@FILE [--wait] | start AGENT OP --input ...
    swarmgate agents list | show NAME | register FILE | init [FILE]
    swarmgate ops list [--state S] [--service NAME] [--limit N] | watch [--count N]
    swarmgate ops show ID | history ID [--follow] | cancel ID | redrive ID [--callback DELIVERY]
    swarmgate completion bash|zsh | --version

``serve`` that cannot start (busy port, database down, bad setting) prints one line and exits
non-zero.

Every read command takes ``--json`` for machine output. Exit codes: 0 ok, 1 the gateway refused
the request or could not be reached (the problem+json detail goes to stderr), 2 usage errors.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import io
import json
import logging
import os
import secrets
import shlex
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, NoReturn, TextIO

import aiohttp
import yaml

from gateway import workers
from gateway.config import Settings
from gateway.domain.errors import ConfigError
from gateway.sdk.client import Client, GatewayError, OperationFailedError

DEFAULT_URL = "http://127.0.0.1:8080"
OPERATION_STATES = ("running", "succeeded", "failed", "canceled")
EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
CLIENT_RETRY_S = 2.0  # transient failures (connection refused, 503) are retried this long
DATA_WIDTH = 100  # history: compact event data is cut to this many characters


class UsageError(Exception):
    """Bad input from the user (exit code 2)."""


class CommandError(Exception):
    """The command could not be carried out (exit code 1)."""


# -- formatting ---------------------------------------------------------------------------------


def _when(value: Any, *, millis: bool = False) -> str:
    """``2024-05-01T12:00:03.123456Z`` -> ``2024-05-01 12:00:03`` (UTC); ``-`` for None."""
    if not value:
        return "-"
    try:
        dt = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return str(value)
    text = dt.strftime("%Y-%m-%d %H:%M:%S")
    return f"{text}.{dt.microsecond // 1000:03d}" if millis else text


def _text(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], out: TextIO) -> None:
    """A plain aligned text table (the last column is not padded)."""
    body = [[c.replace("\n", " ") for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in body:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    print(line(headers), file=out)
    for row in body:
        print(line(row), file=out)


def key_values(pairs: Sequence[tuple[str, str]], out: TextIO) -> None:
    width = max((len(k) for k, _ in pairs), default=0)
    for key, value in pairs:
        print(f"{(key + ':').ljust(width + 1)}  {value}", file=out)


def compact_data(data: Any) -> str:
    """Event data as ``key=value ...`` on one line (JSON for non-string values)."""
    if isinstance(data, dict):
        text = " ".join(f"{k}={_text(v)}" for k, v in data.items())
    else:
        text = _text(data) if data is not None else ""
    return _cut(text.replace("\n", " "), DATA_WIDTH)


def print_json(value: Any, out: TextIO) -> None:
    print(json.dumps(value, indent=2, sort_keys=False, default=str), file=out)


HISTORY_HEADER = f"{'ID':>6}  {'TIME (UTC)':<23}  {'KIND':<22}  DATA"


def event_line(e: dict[str, Any]) -> str:
    """One timeline row: event id, time, kind, compact data."""
    at = _when(e.get("at"), millis=True)
    line = f"{e.get('id', '')!s:>6}  {at:<23}  {e.get('kind', '')!s:<22}  "
    return (line + compact_data(e.get("data"))).rstrip()


def describe_problem(err: GatewayError) -> str:
    """One readable line from a problem+json (or Nexus Failure) body."""
    body = err.body
    if isinstance(body, dict):
        title = body.get("title")
        detail = body.get("detail") or body.get("message")
        text = f"HTTP {err.status}"
        if title:
            text += f" {title}"
        if detail:
            text += f": {detail}"
        errors = body.get("errors")
        for item in errors if isinstance(errors, list) else []:
            text += f"\n  - {_text(item)}"
        return text
    return f"HTTP {err.status}: {_text(body)}" if body else f"HTTP {err.status}"


# -- agents ---------------------------------------------------------------------------------


def _op_names(agent: dict[str, Any]) -> str:
    ops = agent.get("operations") or []
    names = [str(o.get("name")) for o in ops] if isinstance(ops, list) else sorted(ops)
    return ", ".join(names) or "-"


async def agents_list(gw: Client, args: argparse.Namespace, out: TextIO) -> None:
    agents = await gw.agents()
    if args.json:
        print_json({"agents": agents}, out)
        return
    if not agents:
        print("no agents registered", file=out)
        return
    rows = [
        [
            str(a.get("name")),
            str(a.get("version", "-")),
            str(a.get("registryVersion", "-")),
            str(a.get("endpoint", "-")),
            _op_names(a),
        ]
        for a in agents
    ]
    table(["NAME", "VERSION", "REGISTRY", "ENDPOINT", "OPERATIONS"], rows, out)


async def agents_show(gw: Client, args: argparse.Namespace, out: TextIO) -> None:
    agent = await gw.agent(args.name)
    if args.json:
        print_json(agent, out)
        return
    key_values(
        [
            ("name", _text(agent.get("name"))),
            ("endpoint", _text(agent.get("endpoint"))),
            ("adapter", _text(agent.get("adapter"))),
            ("version", _text(agent.get("version"))),
            ("registry version", _text(agent.get("registryVersion"))),
            ("description", _text(agent.get("description"))),
        ],
        out,
    )
    ops = agent.get("operations") or []
    if not ops:
        print("\nno operations", file=out)
        return
    print("\noperations:", file=out)
    rows = []
    for o in ops:
        retry = o.get("retry") or {}
        rows.append(
            [
                str(o.get("name")),
                _text(o.get("timeout_s")),
                _text(o.get("attempt_timeout_s")),
                _text(retry.get("max_attempts")) if retry.get("max_attempts") else "unlimited",
                "yes" if o.get("input_schema") else "no",
                _text(o.get("description")),
            ]
        )
    table(["OPERATION", "TIMEOUT_S", "ATTEMPT_S", "ATTEMPTS", "SCHEMA", "DESCRIPTION"], rows, out)


def load_agent_file(path: str) -> list[dict[str, Any]]:
    """One agent, a list of agents, or ``{"agents": [...]}`` from a JSON or YAML file."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        if path.endswith((".yaml", ".yml")):
            data: Any = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except (ValueError, yaml.YAMLError) as exc:
        kind = "YAML" if path.endswith((".yaml", ".yml")) else "JSON"
        raise UsageError(f"{path} is not valid {kind}: {exc}") from exc
    if isinstance(data, dict) and "agents" in data and "name" not in data:
        data = data["agents"]
    items = [data] if isinstance(data, dict) else data
    if not isinstance(items, list) or not items:
        raise UsageError(f"{path} must hold an agent, a list of agents or {{agents: [...]}}")
    for i, item in enumerate(items):
        if not isinstance(item, dict) or "name" not in item or "endpoint" not in item:
            raise UsageError(f"{path}: agent #{i + 1} needs at least a name and an endpoint")
    return items


async def agents_register(gw: Client, args: argparse.Namespace, out: TextIO) -> None:
    items = load_agent_file(args.file)
    done: list[dict[str, Any]] = []
    for item in items:
        try:
            done.append(await gw.register(item))
        except GatewayError as err:
            if done:
                names = ", ".join(str(d.get("name")) for d in done)
                print(f"registered before the error: {names}", file=sys.stderr)
            raise CommandError(f"agent {item.get('name')!r}: {describe_problem(err)}") from err
    if args.json:
        print_json({"agents": done}, out)
        return
    for d in done:
        ops = _op_names(d)
        print(
            f"registered {d.get('name')} (registry version {d.get('registryVersion')}, "
            f"operations: {ops})",
            file=out,
        )


# -- operations -----------------------------------------------------------------------------


async def ops_list(gw: Client, args: argparse.Namespace, out: TextIO) -> None:
    ops = await gw.operations(state=args.state, service=args.service, limit=args.limit)
    if args.json:
        print_json({"operations": ops}, out)
        return
    if not ops:
        print("no operations", file=out)
        return
    rows = [
        [
            str(o.get("id")),
            str(o.get("state")),
            f"{o.get('service')}/{o.get('operation')}",
            str(o.get("attempts", 0)),
            _when(o.get("createdAt")),
            _when(o.get("closedAt")),
        ]
        for o in ops
    ]
    table(["ID", "STATE", "OPERATION", "ATTEMPTS", "CREATED", "CLOSED"], rows, out)


async def ops_show(gw: Client, args: argparse.Namespace, out: TextIO) -> None:
    op = await gw.operation(args.id)
    callbacks = await gw.callbacks(args.id)
    if args.json:
        print_json({**op, "callbacks": callbacks}, out)
        return
    pairs = [
        ("id", _text(op.get("id"))),
        ("state", _text(op.get("state"))),
        ("operation", f"{op.get('service')}/{op.get('operation')}"),
        ("caller", _text(op.get("caller"))),
        ("request id", _text(op.get("requestId"))),
        ("attempts", _text(op.get("attempts"))),
        ("work", _text(op.get("work"))),
        ("next attempt", _when(op.get("nextAttemptAt"))),
        ("lease owner", _text(op.get("leaseOwner"))),
        ("deadline", _when(op.get("deadlineAt"))),
        ("cancel requested", _when(op.get("cancelRequestedAt"))),
        ("created", _when(op.get("createdAt"))),
        ("closed", _when(op.get("closedAt"))),
        ("last error", _text(op.get("lastError"))),
        ("callback url", _text(op.get("callbackUrl"))),
    ]
    if op.get("failure") is not None:
        pairs.append(("failure", _text(op.get("failure"))))
    if "result" in op:
        pairs.append(("result", _text(op.get("result"))))
    key_values(pairs, out)
    if callbacks:
        print("\ncallbacks:", file=out)
        rows = [
            [
                str(c.get("id")),
                str(c.get("state")),
                str(c.get("attempts", 0)),
                _when(c.get("deliveredAt")),
                _when(c.get("expiresAt")),
                _text(c.get("url")),
                _cut(_text(c.get("lastError")), 60),
            ]
            for c in callbacks
        ]
        headers = ["DELIVERY", "STATE", "ATTEMPTS", "DELIVERED", "EXPIRES", "URL", "LAST ERROR"]
        table(headers, rows, out)


async def ops_history(gw: Client, args: argparse.Namespace, out: TextIO) -> None:
    if args.follow:
        if not args.json:
            print(HISTORY_HEADER, file=out, flush=True)
        async for e in gw.follow(args.id):
            text = json.dumps(e, separators=(",", ":"), default=str) if args.json else None
            print(text if text is not None else event_line(e), file=out, flush=True)
        return
    events = await gw.events(args.id)
    if args.json:
        print_json({"operationId": args.id, "events": events}, out)
        return
    print(HISTORY_HEADER, file=out)
    for e in events:
        print(event_line(e), file=out)


async def ops_cancel(gw: Client, args: argparse.Namespace, out: TextIO) -> None:
    await gw.cancel_operation(args.id)
    print(f"cancel requested for {args.id}", file=out)


async def ops_redrive(gw: Client, args: argparse.Namespace, out: TextIO) -> None:
    if args.callback:
        await gw.redrive_callback(args.id, args.callback)
        print(f"callback {args.callback} of {args.id} redriven", file=out)
    else:
        await gw.redrive(args.id)
        print(f"operation {args.id} redriven", file=out)


# -- start / call -------------------------------------------------------------------------------


def parse_input(raw: str | None) -> Any:
    """``--input``: inline JSON, ``@path`` (a JSON file) or ``@-`` (JSON on stdin); none: null."""
    if raw is None:
        return None
    where = "--input"
    if raw.startswith("@"):
        path = raw[1:]
        where = "stdin" if path == "-" else path
        try:
            raw = sys.stdin.read() if path == "-" else Path(path).read_text()
        except OSError as exc:
            raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise UsageError(f"{where} is not valid JSON ({exc}); files are passed as @FILE") from exc


async def op_start(gw: Client, args: argparse.Namespace, out: TextIO) -> None:
    started = await gw.start(
        args.agent,
        args.operation,
        parse_input(args.input),
        request_id=args.request_id,
        timeout=args.timeout,
    )
    if args.json:
        body: dict[str, Any] = {"token": started.token, "state": started.state}
        if started.state == "succeeded":
            body["result"] = started.result
        print_json(body, out)
    else:
        print(started.token, file=out)


async def op_call(gw: Client, args: argparse.Namespace, out: TextIO) -> None:
    token = ""
    try:
        started = await gw.start(
            args.agent,
            args.operation,
            parse_input(args.input),
            request_id=args.request_id,
            timeout=args.timeout,
        )
        token = started.token
        if started.state == "succeeded":
            print_json(started.result, out)
            return
        if not args.wait:
            print_json({"token": token, "state": started.state}, out)
            print(
                f"operation {token} is still running: pass --wait, or see "
                f"`swarmgate ops show {token}`",
                file=sys.stderr,
            )
            return
        print_json(await gw.result(args.agent, args.operation, token), out)
    except OperationFailedError as exc:
        which = f"operation {token}" if token else "operation"
        message = exc.failure.get("message") if isinstance(exc.failure, dict) else None
        raise CommandError(f"{which} {exc.state}: {message or _text(exc.failure)}") from exc


# -- ops watch ----------------------------------------------------------------------------------

CLEAR = "\x1b[H\x1b[2J"


def watch_frame(url: str, ops: list[dict[str, Any]], now: datetime) -> list[str]:
    """One screen of ``ops watch``: a title with the counts per state, then the table."""
    counts = {s: 0 for s in OPERATION_STATES}
    for o in ops:
        counts[str(o.get("state"))] = counts.get(str(o.get("state")), 0) + 1
    summary = "  ".join(f"{state} {n}" for state, n in counts.items())
    lines = [f"swarmgate {url}  {now:%Y-%m-%d %H:%M:%S} UTC  newest {len(ops)}: {summary}"]
    rows = [
        [
            str(o.get("id")),
            str(o.get("state")),
            f"{o.get('service')}/{o.get('operation')}",
            str(o.get("attempts", 0)),
            _when(o.get("createdAt")),
            _cut(_text(o.get("lastError")), 50),
        ]
        for o in ops
    ]
    buf = io.StringIO()
    table(["ID", "STATE", "OPERATION", "ATTEMPTS", "CREATED", "LAST ERROR"], rows, buf)
    return lines + buf.getvalue().splitlines()


async def ops_watch(gw: Client, args: argparse.Namespace, out: TextIO) -> None:
    live = out.isatty()
    shown = 0
    while True:
        ops = await gw.operations(state=args.state, service=args.service, limit=args.limit)
        frame = watch_frame(gw.base_url, ops, datetime.now(UTC).replace(tzinfo=None))
        if live:
            out.write(CLEAR)
        elif shown:
            out.write("\n")
        out.write("\n".join(frame) + "\n")
        out.flush()
        shown += 1
        if args.count and shown >= args.count:
            return
        await asyncio.sleep(args.interval)


# -- agents init --------------------------------------------------------------------------------

SAMPLE_AGENTS = """\
# swarmgate agents file: register with `swarmgate agents register {name}`, or have the gateway
# register it at every start with SWARMGATE_AGENTS_FILE={name}.
# It holds one agent, a list of agents, or (as here) {{agents: [...]}}; JSON works too.
# The schema is spec/schemas/agent-registration.json (GET the gateway's /api/agents/NAME to see
# what it stored).
agents:
  - name: hello                    # the {{agent}} of /nexus/{{agent}}/{{operation}}
    endpoint: http://127.0.0.1:9000  # the gateway POSTs {{endpoint}}/{{operation}}; private and
                                     # loopback addresses need SWARMGATE_ALLOW_CIDRS on the gateway
    adapter: http                  # http (Nexus-style HTTP, plain webhooks too); a2a (A2A)
    version: "1"                   # your version label; the gateway adds registryVersion
    description: says hello
    operations:
      - name: greet
        description: 'answers {{"greeting": "hello, NAME"}}'
        input_schema:              # JSON Schema (2020-12) of the input; null: any body
          type: object
          required: [name]
          properties:
            name: {{type: string}}
        output_schema: null        # JSON Schema the agent's result must match; null: any
        timeout_s: 3600            # schedule-to-close: the operation fails after this long
        attempt_timeout_s: 10      # one request to the agent
        retry:                     # retryable failures (connection errors, 5xx, 429) back off
          initial_s: 1
          max_s: 60
          multiplier: 2
          jitter_s: 1
          max_attempts: null       # null: retry until timeout_s
        concurrency: null          # at most this many attempts in flight at once; null: no limit
"""


def agents_init(args: argparse.Namespace, out: TextIO) -> None:
    path = Path(args.file)
    if path.exists() and not args.force:
        raise UsageError(f"{path} exists; pass --force to overwrite it")
    try:
        path.write_text(SAMPLE_AGENTS.format(name=args.file))
    except OSError as exc:
        raise CommandError(f"cannot write {path}: {exc.strerror or exc}") from exc
    print(f"wrote {path}: edit it, then `swarmgate agents register {path}`", file=out)


# -- completion ---------------------------------------------------------------------------------

BASH_COMPLETION = """\
# swarmgate completion for {shell}: eval "$(swarmgate completion {shell})"
{prelude}declare -A _swarmgate_words=(
{words}
)
declare -A _swarmgate_values=(
{values}
)
_swarmgate() {{
  local cur="${{COMP_WORDS[COMP_CWORD]}}" prev="${{COMP_WORDS[COMP_CWORD-1]}}"
  local path=swarmgate w i
  for ((i = 1; i < COMP_CWORD; i++)); do
    w="${{COMP_WORDS[i]}}"
    if [[ -n "${{_swarmgate_words["$path $w"]+set}}" ]]; then path="$path $w"; fi
  done
  if [[ -n "${{_swarmgate_values["$path $prev"]+set}}" ]]; then
    COMPREPLY=($(compgen -W "${{_swarmgate_values["$path $prev"]}}" -- "$cur"))
  elif [[ "$cur" == @* ]]; then
    COMPREPLY=($(compgen -P @ -f -- "${{cur#@}}"))
  else
    COMPREPLY=($(compgen -W "${{_swarmgate_words["$path"]}}" -- "$cur"))
    if [[ ${{#COMPREPLY[@]}} -eq 0 && "$cur" != -* ]]; then
      COMPREPLY=($(compgen -f -- "$cur"))
    fi
  fi
}}
complete -F _swarmgate swarmgate
"""


def _completion_tree(
    parser: argparse.ArgumentParser, path: str, words: dict[str, str], values: dict[str, str]
) -> None:
    items: list[str] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                items.append(name)
                _completion_tree(child, f"{path} {name}", words, values)
            continue
        items.extend(o for o in action.option_strings if o.startswith("--"))
        if action.choices is not None:
            choices = " ".join(str(c) for c in action.choices)
            if action.option_strings:
                for opt in action.option_strings:
                    values[f"{path} {opt}"] = choices
            else:
                items.extend(str(c) for c in action.choices)
    words[path] = " ".join(items)


def completion_script(shell: str) -> str:
    words: dict[str, str] = {}
    values: dict[str, str] = {}
    _completion_tree(build_parser(), "swarmgate", words, values)

    def entries(table: dict[str, str]) -> str:
        return "\n".join(f"  [{shlex.quote(k)}]={shlex.quote(v)}" for k, v in sorted(table.items()))

    prelude = "autoload -U +X bashcompinit && bashcompinit\n" if shell == "zsh" else ""
    return BASH_COMPLETION.format(
        shell=shell, prelude=prelude, words=entries(words), values=entries(values)
    )


# -- token ----------------------------------------------------------------------------------


def _sqlite_file(url: str) -> str | None:
    """The file of a SQLite URL (None for other databases)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    return (parsed.database or "") if parsed.get_backend_name() == "sqlite" else None


async def stored_jwt_secret(settings: Settings) -> str:
    """The gateway's 'jwt_secret' setting (created, as the gateway would, if missing).

    Never creates a database: a SQLite file that is not there is an error."""
    from gateway.store.sqlstore import SqlStore

    path = _sqlite_file(settings.database_url)
    if path is not None and (path in ("", ":memory:") or not Path(path).is_file()):
        raise CommandError(
            f"no gateway database at {path or settings.database_url!r}: start the gateway once "
            "(it stores its JWT secret there), or set SWARMGATE_JWT_SECRET"
        )

    store = SqlStore(
        settings.database_url,
        pool_size=settings.db_pool_size,
        sqlite_synchronous=settings.sqlite_synchronous,
    )
    try:
        if not await store.migrations_current():
            raise CommandError(
                "the database is not migrated; run `swarmgate migrate` or start the gateway once"
            )
        return await store.get_or_create_setting("jwt_secret", secrets.token_urlsafe(32))
    finally:
        await store.close()


def _safe_url(url: str) -> str:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<database url>"


def token_command(args: argparse.Namespace, out: TextIO) -> None:
    from registry.auth import AuthConfig, mint_token

    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        raise UsageError(str(exc)) from exc
    if args.ttl <= 0:
        raise UsageError("--ttl must be a positive number of seconds")
    if settings.auth_mode != "hs256":
        print(
            f"warning: SWARMGATE_AUTH_MODE is {settings.auth_mode}; "
            "the gateway does not check HS256 tokens",
            file=sys.stderr,
        )
    secret = settings.jwt_secret
    if not secret:
        try:
            secret = asyncio.run(stored_jwt_secret(settings))
        except CommandError:
            raise
        except Exception as exc:
            raise CommandError(
                f"cannot read the JWT secret from {_safe_url(settings.database_url)}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
    try:
        config = AuthConfig(
            mode="hs256",
            secret=secret,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
        )
        print(mint_token(config, args.sub, args.scope, ttl_s=args.ttl), file=out)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


# -- serve / migrate ------------------------------------------------------------------------


def startup_error(exc: BaseException, settings: Settings) -> str | None:
    """One line for a failure to start (port busy, database down, ...); None: not one of those."""
    from gateway.domain.errors import StoreError

    where = f"{settings.host}:{settings.port}"
    if isinstance(exc, ConfigError):
        return f"configuration: {exc}"
    if isinstance(exc, StoreError):
        return (
            f"cannot open the database {_safe_url(settings.database_url)} "
            f"(SWARMGATE_DATABASE_URL): {exc or type(exc).__name__}"
        )
    if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
        return (
            f"cannot listen on {where}: the address is already in use "
            "(another gateway? choose SWARMGATE_PORT or --port)"
        )
    if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EADDRNOTAVAIL):
        return f"cannot listen on {where}: {exc.strerror} (SWARMGATE_HOST / SWARMGATE_PORT)"
    return None


def serve_command(args: argparse.Namespace) -> None:
    """Run the gateway; a failure to start is one line on stderr and a non-zero exit."""
    from dataclasses import replace

    from gateway.app import serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = Settings.from_env()
    if args.port is not None or args.host:
        port = settings.port if args.port is None else args.port
        settings = replace(settings, port=port, host=args.host or settings.host)
    workers.check(settings)
    started = False

    async def run() -> None:
        nonlocal started
        ready = asyncio.Event()
        serving = asyncio.create_task(serve(settings, ready=ready))
        waiting = asyncio.create_task(ready.wait())
        await asyncio.wait({serving, waiting}, return_when=asyncio.FIRST_COMPLETED)
        started = ready.is_set()
        waiting.cancel()
        await serving

    try:
        if settings.workers > 1:
            sys.exit(workers.Supervisor(settings, workers.migrate_once).run())
        run_event_loop(run(), settings.event_loop)
    except Exception as exc:
        message = None if started else startup_error(exc, settings)
        if message is None:
            raise
        fail(message, EXIT_USAGE if isinstance(exc, ConfigError) else EXIT_ERROR)


def migrate_command(out: TextIO) -> None:
    from gateway.store.sqlstore import SqlStore

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = Settings.from_env()

    async def migrate() -> None:
        store = SqlStore(settings.database_url)
        await store.migrate()
        await store.close()

    asyncio.run(migrate())
    print("migrations applied", file=out)


# -- parser ---------------------------------------------------------------------------------

ClientCommand = Callable[[Client, argparse.Namespace, TextIO], Awaitable[None]]


def _positive_int(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an integer: {raw!r}") from exc
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def _positive_float(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a number: {raw!r}") from exc
    if not value > 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def version() -> str:
    try:
        return metadata.version("swarmgate")
    except metadata.PackageNotFoundError:  # pragma: no cover - a checkout that was never installed
        return "0+unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="swarmgate", description="Durable agent RPC gateway")
    parser.add_argument("--version", action="version", version=f"swarmgate {version()}")
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    s = sub.add_parser("serve", help="run the gateway (settings from SWARMGATE_* variables)")
    s.add_argument("--port", type=int, help="listen port (SWARMGATE_PORT, 8080)")
    s.add_argument("--host", help="listen address (SWARMGATE_HOST, 127.0.0.1)")
    sub.add_parser("migrate", help="apply database migrations")

    t = sub.add_parser(
        "token",
        help="mint a dev HS256 JWT",
        description="Mint an HS256 JWT with the gateway's secret: SWARMGATE_JWT_SECRET, or the "
        "secret stored in the database at SWARMGATE_DATABASE_URL.",
    )
    t.add_argument("--sub", required=True, help="subject (the caller's name)")
    t.add_argument(
        "--scope",
        action="append",
        required=True,
        metavar="SCOPE",
        help="a granted scope (repeatable), e.g. admin, ops:read, ops:start:agent/*",
    )
    t.add_argument("--ttl", type=int, default=3600, metavar="SECONDS", help="lifetime (3600)")

    conn = argparse.ArgumentParser(add_help=False)
    conn.add_argument(
        "--url",
        default=os.environ.get("SWARMGATE_URL") or DEFAULT_URL,
        help="gateway base URL (SWARMGATE_URL, default %(default)s)",
    )
    conn.add_argument(
        "--token",
        default=os.environ.get("SWARMGATE_TOKEN") or None,
        help="bearer token (SWARMGATE_TOKEN)",
    )
    read = argparse.ArgumentParser(add_help=False, parents=[conn])
    read.add_argument("--json", action="store_true", help="machine-readable JSON output")

    starting = argparse.ArgumentParser(add_help=False, parents=[conn])
    starting.add_argument("agent", help="the agent (the service of /nexus/AGENT/OP)")
    starting.add_argument("operation", metavar="op", help="the operation")
    starting.add_argument(
        "--input", "-i", metavar="JSON|@FILE", help="the input: JSON, @file.json or @- (stdin)"
    )
    starting.add_argument(
        "--request-id", help="Nexus-Request-Id: the same id again gets the same operation back"
    )
    starting.add_argument(
        "--timeout", metavar="DURATION", help="Operation-Timeout (schedule-to-close), e.g. 30s"
    )
    c = sub.add_parser(
        "call",
        parents=[starting],
        help="start an operation and print its result (JSON)",
        description="Start an operation and print its result as JSON. Exit code 1 when it "
        "fails or is canceled (the reason goes to stderr). Without --wait an operation still "
        "running after the gateway's sync wait prints {token, state}.",
    )
    c.add_argument("--wait", "-w", action="store_true", help="wait until the operation ends")
    c.set_defaults(run=op_call)
    c = sub.add_parser(
        "start", parents=[starting], help="start an operation and print its token (its id)"
    )
    c.add_argument("--json", action="store_true", help="print {token, state[, result]}")
    c.set_defaults(run=op_start)

    c = sub.add_parser("completion", help="print a shell completion script")
    c.add_argument("shell", choices=("bash", "zsh"))

    agents = sub.add_parser("agents", help="list, show and register agents")
    asub = agents.add_subparsers(dest="action", required=True, metavar="ACTION")
    a = asub.add_parser("list", parents=[read], help="list registered agents")
    a.set_defaults(run=agents_list)
    a = asub.add_parser("show", parents=[read], help="show one agent")
    a.add_argument("name")
    a.set_defaults(run=agents_show)
    a = asub.add_parser("register", parents=[read], help="register agents from a JSON or YAML file")
    a.add_argument("file", help="one agent, a list of agents, or {agents: [...]}")
    a.set_defaults(run=agents_register)
    a = asub.add_parser("init", help="write a documented sample agents file")
    a.add_argument("file", nargs="?", default="agents.yaml", help="where (agents.yaml)")
    a.add_argument("--force", action="store_true", help="overwrite an existing file")
    a.set_defaults(local=agents_init)

    ops = sub.add_parser("ops", help="inspect and manage operations")
    osub = ops.add_subparsers(dest="action", required=True, metavar="ACTION")
    o = osub.add_parser("list", parents=[read], help="list operations (newest first)")
    o.add_argument("--state", choices=OPERATION_STATES)
    o.add_argument("--service", help="only this agent's operations")
    o.add_argument("--limit", type=_positive_int, default=50, help="at most N (50)")
    o.set_defaults(run=ops_list)
    o = osub.add_parser("watch", parents=[conn], help="a live table of the newest operations")
    o.add_argument("--state", choices=OPERATION_STATES)
    o.add_argument("--service", help="only this agent's operations")
    o.add_argument("--limit", type=_positive_int, default=20, help="at most N rows (20)")
    o.add_argument(
        "--interval", type=_positive_float, default=2.0, metavar="S", help="refresh every S (2)"
    )
    o.add_argument(
        "--count", type=_positive_int, default=0, metavar="N", help="stop after N refreshes"
    )
    o.set_defaults(run=ops_watch)
    o = osub.add_parser("show", parents=[read], help="show one operation and its callbacks")
    o.add_argument("id")
    o.set_defaults(run=ops_show)
    o = osub.add_parser("history", parents=[read], help="the event history of an operation")
    o.add_argument("id")
    o.add_argument("--follow", "-f", action="store_true", help="keep printing events until it ends")
    o.set_defaults(run=ops_history)
    o = osub.add_parser("cancel", parents=[conn], help="request cancellation")
    o.add_argument("id")
    o.set_defaults(run=ops_cancel)
    o = osub.add_parser(
        "redrive",
        parents=[conn],
        help="re-run a failed/canceled operation, or re-send an expired/disabled callback",
    )
    o.add_argument("id")
    o.add_argument("--callback", metavar="DELIVERY_ID", help="re-send this callback delivery")
    o.set_defaults(run=ops_redrive)
    return parser


async def run_client(command: ClientCommand, args: argparse.Namespace, out: TextIO) -> None:
    async with Client(args.url, token=args.token, retry_for_s=CLIENT_RETRY_S) as gw:
        await command(gw, args, out)


def fail(message: str, code: int) -> NoReturn:
    print(f"swarmgate: error: {message}", file=sys.stderr)
    raise SystemExit(code)


def run_event_loop(coro: Coroutine[Any, Any, None], loop: str) -> None:
    """Run the gateway on uvloop (the default: it measurably speeds up aiohttp) or asyncio."""
    if loop == "uvloop":
        try:
            import uvloop
        except ImportError:  # pragma: no cover - uvloop is a dependency on Linux/macOS
            asyncio.run(coro)
            return
        uvloop.run(coro)
    else:
        asyncio.run(coro)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = sys.stdout
    if args.cmd == "serve":
        try:
            serve_command(args)
        except ConfigError as exc:
            fail(f"configuration: {exc}", EXIT_USAGE)
        except KeyboardInterrupt:
            return 130
        return EXIT_OK
    if args.cmd == "migrate":
        try:
            migrate_command(out)
        except ConfigError as exc:
            fail(f"configuration: {exc}", EXIT_USAGE)
        return EXIT_OK
    if args.cmd == "completion":
        out.write(completion_script(args.shell))
        return EXIT_OK
    try:
        if args.cmd == "token":
            token_command(args, out)
        elif getattr(args, "local", None) is not None:
            args.local(args, out)
        else:
            asyncio.run(run_client(args.run, args, out))
    except UsageError as exc:
        fail(str(exc), EXIT_USAGE)
    except CommandError as exc:
        fail(str(exc), EXIT_ERROR)
    except GatewayError as exc:
        fail(describe_problem(exc), EXIT_ERROR)
    except BrokenPipeError:  # e.g. piped into head
        return EXIT_OK
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        where = getattr(args, "url", "")
        fail(f"cannot reach the gateway at {where}: {type(exc).__name__}: {exc}", EXIT_ERROR)
    except KeyboardInterrupt:
        return 130
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
