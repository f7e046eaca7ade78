"""``python -m bench.statements``: what the hot-path batch statements cost, per operation.

    python -m bench.statements --batches 1,4,16,64 --ops 4000 --repeat 3

Straight against the store (no HTTP, no engine): on a throw-away PostgreSQL database, rounds of
``create_operations`` (a batch of starts, each with its events and a request-id key), then
``complete_many`` (their terminal transitions, each with a callback delivery row leased to
the bench), then ``callbacks_delivered`` (the acks of those deliveries), at a fixed batch size;
then the same three kinds as write cycles (``sql_postgres.compose``: one statement per round
holding one round's starts, the round before's completions and the acks of the one before).
Reports, per operation and per batch size, the client's CPU (this process: building the
parameters, asyncpg encoding them) and the CPU of the database's backends (planning,
executing, committing), medians of ``--repeat`` runs. Group commit makes the batch size follow
the load, so the curve says what a smaller batch (a lighter load, or several gateway processes
each batching alone) costs per operation.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import sys
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench import db as dbmod
from bench.stats import median_of, postgres_cpu_seconds
from gateway.domain.model import (
    CallbackDelivery,
    Completion,
    Event,
    IdempotencyRecord,
    Operation,
    OperationState,
    Work,
)
from gateway.domain.ports import NewOperation
from gateway.store import PostgresStore, sql_postgres
from gateway.store import postgres as pg

PG_ADMIN = os.environ.get(
    "SWARMGATE_BENCH_PG",
    os.environ.get("SWARMGATE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres"),
)


def _start(
    now: datetime, run: str, i: int
) -> tuple[Operation, list[Event], list[IdempotencyRecord]]:
    op_id = str(uuid.uuid4())
    op = Operation(
        id=op_id,
        service="bench",
        operation="echo",
        state=OperationState.RUNNING,
        caller="anonymous",
        created_at=now,
        input=b'{"pad": "' + b"x" * 48 + b'"}',
        input_content_type="application/json",
        request_id=f"{run}-{i}",
        callback_url="http://127.0.0.1:9/cb",
        work=Work.DISPATCH,
        attempts=1,
        next_attempt_at=now,
        lease_owner="bench",
        lease_until=now + timedelta(seconds=30),
        deadline_at=now + timedelta(seconds=60),
    )
    events = [
        Event(operation_id=op_id, kind="operation.started", at=now, data={"service": "bench"}),
        Event(operation_id=op_id, kind="attempt.started", at=now, data={"attempt": 1}),
    ]
    key = IdempotencyRecord(
        scope="anonymous",
        key=f"rid:{run}-{i}",
        fingerprint="f" * 64,
        operation_id=op_id,
        created_at=now,
        expires_at=now + timedelta(hours=24),
    )
    return op, events, [key]


def _complete(op: Operation, now: datetime) -> Completion:
    return Completion(
        operation_id=op.id,
        state=OperationState.SUCCEEDED,
        at=now,
        result=b'{"pad": "' + b"x" * 48 + b'"}',
        result_content_type="application/json",
        event=Event(operation_id=op.id, kind="operation.succeeded", at=now, data={"attempt": 1}),
        callback=CallbackDelivery(
            id=f"cb-{op.id}",
            operation_id=op.id,
            url="http://127.0.0.1:9/cb",
            headers={"content-type": "application/json"},
            body=b'{"ok": true}',
            created_at=now,
            expires_at=now + timedelta(hours=1),
            next_attempt_at=now,
            caller="anonymous",
            attempts=1,
            lease_owner="bench",  # leased to us, as a direct delivery is: the ack marks it
            lease_until=now + timedelta(seconds=30),
        ),
        only_if_owner="bench",
    )


def _delivered(op: Operation, now: datetime) -> Event:
    """The ack of the callback _complete wrote (as the outbox records a delivery)."""
    return Event(
        operation_id=op.id,
        kind="callback.delivered",
        at=now,
        data={"delivery_id": f"cb-{op.id}", "status": 200, "attempt": 1},
    )


# composed once, as the store composes its statements: not inside the measured loop
_CYCLES = {
    kinds: sql_postgres.compose(kinds)
    for kinds in itertools.product((False, True), repeat=3)
    if any(kinds)
}


async def _write_cycle(
    store: PostgresStore,
    starts: Sequence[NewOperation],
    completions: Sequence[Completion],
    acks: Sequence[Event],
) -> None:
    """One statement and one commit for all three kinds (the store's own parts, composed)."""
    statement = _CYCLES[(bool(starts), bool(completions), bool(acks))]
    args: list[Any] = []
    if starts:
        args += pg.start_args(starts)
    if completions:
        args += pg.complete_args(completions)
    if acks:
        args += pg.ack_args("bench", acks)
    if args:
        async with store._driver() as conn:  # the store's own lane connection
            await conn.fetchrow(statement, *args)


async def _one_run(store: PostgresStore, db_name: str, batch: int, ops: int) -> dict[str, float]:
    run = uuid.uuid4().hex[:8]
    rounds = max(1, ops // batch)
    # one warm-up round: connections open, statements prepared
    now = datetime.now(UTC)
    items = [_start(now, run + "w", i) for i in range(batch)]
    await store.create_operations(items)
    await store.complete_many([_complete(op, now) for op, _, _ in items])
    cpu = {"start": [0.0, 0.0], "complete": [0.0, 0.0], "ack": [0.0, 0.0]}
    now = datetime.now(UTC)
    rows = [[_start(now, run, r * batch + i) for i in range(batch)] for r in range(rounds)]
    # Each phase measured as a whole: process CPU counters tick in 10 ms steps.
    pg0, c0 = postgres_cpu_seconds(db_name) or 0.0, time.process_time()
    for items in rows:
        await store.create_operations(items)
    c1 = time.process_time()
    pg1 = postgres_cpu_seconds(db_name) or 0.0
    cpu["start"] = [c1 - c0, pg1 - pg0]
    pg0, c0 = postgres_cpu_seconds(db_name) or 0.0, time.process_time()
    for items in rows:
        await store.complete_many([_complete(op, now) for op, _, _ in items])
    c1 = time.process_time()
    pg1 = postgres_cpu_seconds(db_name) or 0.0
    cpu["complete"] = [c1 - c0, pg1 - pg0]
    acks = [[_delivered(op, now) for op, _, _ in items] for items in rows]
    pg0, c0 = postgres_cpu_seconds(db_name) or 0.0, time.process_time()
    for events in acks:
        await store.callbacks_delivered("bench", events)
    c1 = time.process_time()
    pg1 = postgres_cpu_seconds(db_name) or 0.0
    cpu["ack"] = [c1 - c0, pg1 - pg0]
    # The same writes as write cycles (sql_postgres.compose): each statement holds the
    # starts of one round, the completions of the round before and the acks of the one before
    # that, as a busy gateway's cycle does (two extra cycles drain the pipeline).
    run_c = run + "c"
    rows = [[_start(now, run_c, r * batch + i) for i in range(batch)] for r in range(rounds)]
    none: list[Any] = []
    pg0, c0 = postgres_cpu_seconds(db_name) or 0.0, time.process_time()
    for r in range(rounds + 2):
        starts = rows[r] if r < rounds else none
        done = rows[r - 1] if 0 < r <= rounds else none
        acked = rows[r - 2] if 1 < r else none
        await _write_cycle(
            store,
            starts,
            [_complete(op, now) for op, _, _ in done],
            [_delivered(op, now) for op, _, _ in acked],
        )
    c1 = time.process_time()
    pg1 = postgres_cpu_seconds(db_name) or 0.0
    cpu["cycle"] = [c1 - c0, pg1 - pg0]
    n = rounds * batch
    return {
        f"{name}_{side}_us": round(1e6 * cpu[name][k] / n, 1)
        for name in cpu
        for k, side in ((0, "client"), (1, "postgres"))
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    target = dbmod.Target(name="postgresql", db="postgresql")
    out: dict[str, Any] = {"batches": {}}
    db = await dbmod.create_database(target, Path("/tmp"), args.pg_admin)
    # one lane: the same backend all along, so its CPU counter is read consistently
    store = PostgresStore(db.url, pool_size=2)
    try:
        for batch in args.batches:
            runs = [
                await _one_run(store, db.pg_name or "", batch, args.ops) for _ in range(args.repeat)
            ]
            med = {k: round(median_of([r[k] for r in runs]), 1) for k in runs[0]}
            out["batches"][batch] = med
            print(
                f"batch {batch:>4}: start client {med['start_client_us']:>7} us, "
                f"postgres {med['start_postgres_us']:>7} us | complete client "
                f"{med['complete_client_us']:>7} us, postgres {med['complete_postgres_us']:>7} us"
                f" | ack client {med['ack_client_us']:>7} us, "
                f"postgres {med['ack_postgres_us']:>7} us"
                f" | all three in cycles client {med['cycle_client_us']:>7} us, "
                f"postgres {med['cycle_postgres_us']:>7} us"
                " (per operation; CPU, medians)",
                file=sys.stderr,
            )
    finally:
        await store.close()
        await db.drop()
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.statements", description=__doc__)
    p.add_argument("--batches", default="1,4,16,64")
    p.add_argument("--ops", type=int, default=4000, help="operations per run and batch size")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--pg-admin", default=PG_ADMIN)
    p.add_argument("--json", dest="json_path")
    args = p.parse_args(argv)
    args.batches = [int(b) for b in args.batches.split(",")]
    out = asyncio.run(main_async(args))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
