"""``swarmgate ops`` (list, show, history, cancel, redrive, watch), ``start`` and ``call``."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from gateway.cli._format import (
    HISTORY_HEADER,
    OPERATION_STATES,
    CommandError,
    UsageError,
    _cut,
    _text,
    _when,
    event_line,
    key_values,
    print_json,
    table,
)
from gateway.sdk.client import Client, OperationFailedError

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
