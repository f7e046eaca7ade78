"""The hot lanes run every statement on one generic plan, made once per connection, maybe while
the tables are empty: each must reach rows by primary key only, whatever the table sizes, or a
batch would walk every running operation (or every callback) once the tables are large."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import asyncpg

from gateway.store import sql_postgres as sql

# The indexes a lane statement may use: the primary keys (and the unique key of idempotency).
ALLOWED_INDEX = re.compile(r"_pkey$")


def _params(statement: str) -> int:
    return max(int(n) for n in re.findall(r"\$(\d+)", statement))


async def _plans(conn: asyncpg.Connection) -> dict[str, str]:
    out = {}
    for name, statement in sql.LANE_STATEMENTS.items():
        await conn.execute(f"PREPARE lane_{name} AS {statement}")
        args = ", ".join(["NULL"] * _params(statement))
        rows = await conn.fetch(f"EXPLAIN EXECUTE lane_{name}({args})")
        out[name] = "\n".join(r[0] for r in rows)
        await conn.execute(f"DEALLOCATE lane_{name}")
    return out


def _bad_steps(plan: str) -> list[str]:
    bad = []
    for line in plan.splitlines():
        if "Seq Scan" in line:
            bad.append(line.strip())
        m = re.search(r"Index (?:Only )?Scan (?:Backward )?(?:using|on) (\S+)", line)
        if m and not ALLOWED_INDEX.search(m.group(1)):
            bad.append(line.strip())
        # an array key beside a join key: the scan is rescanned once per outer row and sorts
        # the array each time (batch x batch log batch comparisons, 13% of PostgreSQL's CPU
        # under load before it was taken out of the completion and the ack)
        if "Index Cond:" in line and "ANY (" in line and " AND " in line:
            bad.append(line.strip())
    return bad


async def _fill(conn: asyncpg.Connection, n: int) -> None:
    now = datetime.now(UTC)
    await conn.execute(
        f"""
        INSERT INTO {sql._o.name} (id, service, operation, state, caller, input,
            callback_headers, links, handler_headers, attempts, created_at, work,
            next_attempt_at, lease_owner, lease_until, heartbeat_until)
        SELECT 'op-' || g, 'svc', 'op', CASE WHEN g % 2 = 0 THEN 'running' ELSE 'succeeded' END,
            'alice', '\\x00', '{{}}', '[]', '{{}}', 1, $1::timestamptz, 'dispatch',
            $1::timestamptz, 'r1', $2::timestamptz, $2::timestamptz
        FROM generate_series(1, $3::int) g""",
        now,
        now + timedelta(seconds=30),
        n,
    )
    await conn.execute(f"ANALYZE {sql._o.name}")


async def test_every_lane_statement_reaches_rows_by_primary_key_on_empty_and_filled_tables(
    pg_db: str,
) -> None:
    conn = await asyncpg.connect(pg_db, server_settings=dict(sql.LANE_SETTINGS))
    try:
        empty = await _plans(conn)
        await _fill(conn, 5000)
        filled = await _plans(conn)
    finally:
        await conn.close()
    assert set(empty) == set(sql.LANE_STATEMENTS)
    problems = {
        f"{when}/{name}": bad
        for when, plans in (("empty", empty), ("filled", filled))
        for name, plan in plans.items()
        if (bad := _bad_steps(plan))
    }
    assert problems == {}


def test_the_plan_check_sees_a_partial_index_and_a_sequential_scan() -> None:
    plan = (
        "Update on sg_operations o\n"
        "  ->  Index Scan using ix_sg_operations_running_deadline on sg_operations o\n"
        "  ->  Seq Scan on sg_callbacks c\n"
        "  ->  Index Scan using sg_operations_pkey on sg_operations o_1\n"
    )
    assert len(_bad_steps(plan)) == 2
