"""The ``swarmgate`` parser and entry point."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from importlib import metadata
from typing import TextIO

import aiohttp

from gateway.cli._agents import agents_init, agents_list, agents_register, agents_show
from gateway.cli._completion import completion_script
from gateway.cli._format import (
    CLIENT_RETRY_S,
    DEFAULT_URL,
    EXIT_ERROR,
    EXIT_OK,
    EXIT_USAGE,
    OPERATION_STATES,
    CommandError,
    UsageError,
    describe_problem,
    fail,
)
from gateway.cli._ops import (
    op_call,
    op_start,
    ops_cancel,
    ops_history,
    ops_list,
    ops_redrive,
    ops_show,
    ops_watch,
)
from gateway.cli._server import migrate_command, serve_command, token_command
from gateway.domain.errors import ConfigError
from gateway.sdk.client import Client, GatewayError

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
        out.write(completion_script(args.shell, build_parser()))
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
