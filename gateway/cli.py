"""``swarmgate`` command line.

Server side: ``serve``, ``migrate`` and ``token`` (mint a dev HS256 JWT). Client side, over HTTP
to the gateway at ``--url`` (``SWARMGATE_URL``) with ``--token`` (``SWARMGATE_TOKEN``):

    swarmgate agents list | show NAME | register FILE
    swarmgate ops list [--state S] [--service NAME] [--limit N]
    swarmgate ops show ID | history ID [--follow] | cancel ID | redrive ID [--callback DELIVERY]

Every read command takes ``--json`` for machine output. Exit codes: 0 ok, 1 the gateway refused
the request or could not be reached (the problem+json detail goes to stderr), 2 usage errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn, TextIO

import aiohttp
import yaml

from gateway import workers
from gateway.config import Settings
from gateway.domain.errors import ConfigError
from gateway.sdk.client import Client, GatewayError

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


# -- token ----------------------------------------------------------------------------------


async def stored_jwt_secret(settings: Settings) -> str:
    """The gateway's 'jwt_secret' setting (created, as the gateway would, if missing)."""
    from gateway.store.sqlstore import SqlStore

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


def serve_command(args: argparse.Namespace) -> None:
    from dataclasses import replace

    from gateway.app import serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = Settings.from_env()
    if args.port or args.host:
        settings = replace(
            settings, port=args.port or settings.port, host=args.host or settings.host
        )
    workers.check(settings)
    if settings.workers > 1:
        sys.exit(workers.Supervisor(settings, workers.migrate_once).run())
    run_event_loop(serve(settings), settings.event_loop)


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="swarmgate", description="Durable agent RPC gateway")
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    s = sub.add_parser("serve", help="run the gateway (settings from SWARMGATE_* variables)")
    s.add_argument("--port", type=int)
    s.add_argument("--host")
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

    ops = sub.add_parser("ops", help="inspect and manage operations")
    osub = ops.add_subparsers(dest="action", required=True, metavar="ACTION")
    o = osub.add_parser("list", parents=[read], help="list operations (newest first)")
    o.add_argument("--state", choices=OPERATION_STATES)
    o.add_argument("--service", help="only this agent's operations")
    o.add_argument("--limit", type=_positive_int, default=50, help="at most N (50)")
    o.set_defaults(run=ops_list)
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
        return EXIT_OK
    if args.cmd == "migrate":
        migrate_command(out)
        return EXIT_OK
    try:
        if args.cmd == "token":
            token_command(args, out)
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
