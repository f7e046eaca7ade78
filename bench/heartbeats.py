"""``python -m bench.heartbeats``: the cost of a heartbeat and of a step record (issue 12).

    python -m bench.heartbeats --db both --ops 1000 --duration 5 --repeat 3

Per database target: a real gateway subprocess (``bench.gwproc``), an in-process agent that
accepts every dispatch (201) and keeps the heartbeat URL, steps URL and token each dispatch
carried, and ``--ops`` accepted operations that declare ``heartbeat_timeout_s``. Then, closed
loop with one worker per operation (``--ops`` concurrent heartbeating operations):

heartbeat          ``POST /api/operations/{id}/heartbeat`` with ``{"attempt": n}``
heartbeat+details  the same with a ~100-byte checkpoint in ``details``
step               ``PUT /api/operations/{id}/steps/{name}``, a new name each time (a ~100-byte
                   result and the attempt, as the SDK sends them): one journal row and its
                   ``step.completed`` event per call

Reports throughput, latency and CPU per call (CPU seconds over the measured window / calls
finished in it) of the gateway process, of PostgreSQL (``pg own``: the backends and autovacuum
workers of the bench database; ``pg box``: those plus the server's shared processes, the
postmaster, checkpointer, background writer and WAL writer) and of the load generator (this
process, reported apart), medians over ``--repeat`` runs. "Box CPU" per call = gateway + pg box.

Open loop (``--interval S``, e.g. ``--ops 10000 --interval 5``): every operation heartbeats
every ``S`` seconds (a random phase, each gap jittered +-10%), whatever the answers do; each
call's latency counts from its intended send time, so a gateway that falls behind cannot hide
its queue. The warmup is at least one interval (every operation's first heartbeat, which reads
the operation, lands before the window). Only ``heartbeat`` by default.

``--gateway-root DIR`` runs the gateway of another checkout (its ``.venv``) under this same
harness: the base commit of a before/after comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import os
import random
import sqlite3
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import uvloop
from aiohttp import web

from adapters.transport import HttpTransport
from bench import db as dbmod
from bench.load import Hook, OpFn, RunResult, Sample, Window, closed_loop, without_collector
from bench.procs import (
    ROOT,
    add_gateway_env_argument,
    free_port,
    gateway_process,
    parse_gateway_env,
)
from bench.stats import (
    CpuMeter,
    ProcessTree,
    cpu_seconds,
    jsonable,
    median_of,
    pg_pids,
    summarize,
)
from gateway.domain.dispatch import (
    HEADER_ATTEMPT,
    HEADER_HEARTBEAT_URL,
    HEADER_STEPS_URL,
    TransportError,
)
from gateway.security.netguard import OutboundPolicy
from gateway.testing import pg_database_url

SCENARIOS = ("heartbeat", "heartbeat+details", "step")
PG_ADMIN = os.environ.get(
    "SWARMGATE_BENCH_PG",
    os.environ.get("SWARMGATE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres"),
)
DETAILS = {"cursor": "x" * 64, "done": [1, 2, 3]}
RESULT = {"rows": ["y" * 32, "z" * 32], "n": 2}


class PgCpu:
    """CPU seconds of the bench database's PostgreSQL processes between ``start`` and ``stop``
    (a backend that appears in between counts from zero; one that exits is lost)."""

    def __init__(self, dbname: str | None) -> None:
        self.dbname = dbname
        self._t0: dict[int, float] = {}
        self._shared: set[int] = set()

    def _now(self) -> dict[int, float]:
        if self.dbname is None:
            return {}
        own, shared = pg_pids(self.dbname)
        self._shared |= set(shared)
        out = {}
        for pid in own + shared:
            secs = cpu_seconds(pid)
            if secs is not None:
                out[pid] = secs
        return out

    def start(self) -> None:
        self._t0 = self._now()

    def stop(self) -> dict[str, float]:
        """CPU seconds: ``own`` (the database's backends) and ``shared`` (server processes)."""
        after = self._now()
        own = shared = 0.0
        for pid, secs in after.items():
            d = secs - self._t0.get(pid, 0.0)
            if pid in self._shared:
                shared += d
            else:
                own += d
        return {"own": own, "shared": shared}


class Accepting:
    """The agent: answers 201 to every dispatch and remembers where to heartbeat."""

    def __init__(self) -> None:
        self.ops: dict[str, dict[str, str]] = {}

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/{op}", self.start)
        return app

    async def start(self, request: web.Request) -> web.Response:
        await request.read()
        h = request.headers
        self.ops[h["Idempotency-Key"]] = {
            "heartbeat": h[HEADER_HEARTBEAT_URL],
            "steps": h[HEADER_STEPS_URL],
            "attempt": h[HEADER_ATTEMPT],
            "auth": h["Nexus-Callback-Authorization"],
        }
        return web.json_response({"token": h["Idempotency-Key"]}, status=201)


def _op_fn(scenario: str, http: HttpTransport, ops: list[dict[str, str]], run: str) -> OpFn:
    n = len(ops)

    async def op(seq: int, intended: float) -> Sample:
        o = ops[seq % n]
        headers = {"Authorization": o["auth"], "Content-Type": "application/json"}
        if scenario == "step":
            method, url = "PUT", f"{o['steps']}/{run}-{seq}"
            # with the attempt, as the SDK's ctx.step sends it
            body = json.dumps({"result": RESULT, "attempt": int(o["attempt"])}).encode()
        else:
            method, url = "POST", o["heartbeat"]
            data: dict[str, Any] = {"attempt": int(o["attempt"])}
            if scenario == "heartbeat+details":
                data["details"] = {**DETAILS, "seq": seq}
            body = json.dumps(data).encode()
        try:
            r = await http.request(method, url, headers=headers, body=body, timeout_s=30)
        except TransportError as exc:
            return Sample(intended, time.perf_counter(), False, error=str(exc))
        done = time.perf_counter()
        if r.status not in (200, 201):
            return Sample(intended, done, False, error=f"HTTP {r.status} {r.body[:80]!r}")
        return Sample(intended, done, True, {"call": done - intended})

    return op


async def _start_ops(http: HttpTransport, gw_url: str, n: int, concurrency: int = 64) -> None:
    """``n`` accepted operations, ``concurrency`` starts in flight (each a real Nexus start)."""
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with sem:
            r = await http.request(
                "POST",
                f"{gw_url}/nexus/beat/work",
                headers={"Content-Type": "application/json", "Nexus-Request-Id": f"hb-{i}"},
                body=b"{}",
                timeout_s=60,
            )
            if r.status not in (200, 201):
                raise RuntimeError(f"start HTTP {r.status}: {r.body[:200]!r}")

    await asyncio.gather(*(one(i) for i in range(n)))


@without_collector
async def periodic_loop(
    op: OpFn,
    *,
    n: int,
    interval_s: float,
    warmup_s: float,
    duration_s: float,
    on_measure: Hook,
    on_end: Hook,
    seed: int = 17,
) -> RunResult:
    """Open loop for ``n`` operations, each calling every ``interval_s`` (random phase, gaps
    jittered +-10%): the intended send times are fixed in advance and kept in one heap, so a
    late answer delays nothing but is charged from its intended time (no coordinated
    omission); an operation whose previous call is still out sends the next one anyway."""
    rng = random.Random(seed)
    t0 = time.perf_counter() + 0.05
    window = Window(t0 + warmup_s, t0 + warmup_s + duration_s)
    samples: list[Sample] = []
    due = [(t0 + rng.uniform(0.0, interval_s), i) for i in range(n)]
    heapq.heapify(due)
    tasks: set[asyncio.Task[None]] = set()
    offered = 0
    measuring = ended = False

    async def unit(i: int, intended: float) -> None:
        samples.append(await op(i, intended))

    while due:
        intended, i = due[0]
        now = time.perf_counter()
        if not measuring and now >= window.start:
            measuring = True
            on_measure()
        if not ended and now >= window.end:
            ended = True
            on_end()
        if intended >= window.end:
            if ended:
                break
            await asyncio.sleep(window.end - now)
            continue
        if intended > now:
            await asyncio.sleep(min(intended, window.start if not measuring else intended) - now)
            continue
        heapq.heapreplace(due, (intended + interval_s * rng.uniform(0.9, 1.1), i))
        task = asyncio.create_task(unit(i, intended))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        offered += 1
    if tasks:
        await asyncio.gather(*tasks)
    return RunResult(
        mode="open",
        window=window,
        samples=samples,
        offered=offered,
        params={"operations": n, "interval_s": interval_s, "rate_per_s": n / interval_s},
    )


def _per_call_us(cpu_pct: float | None, tput: float) -> float | None:
    return round(cpu_pct / 100 * 1e6 / tput, 1) if tput and cpu_pct is not None else None


async def _run_once(
    scenario: str,
    rep: int,
    args: argparse.Namespace,
    http: HttpTransport,
    ops: list[dict[str, str]],
    gw_pid: int,
    pg_db: str | None,
) -> dict[str, Any]:
    cpu = CpuMeter({"gateway": ProcessTree(gw_pid), "harness": os.getpid()})
    pg = PgCpu(pg_db)
    pct: dict[str, float] = {}
    marks: dict[str, float] = {}

    def measure() -> None:
        marks["t0"] = time.perf_counter()
        cpu.start(marks["t0"])
        pg.start()

    def end() -> None:
        now = time.perf_counter()
        pct.update(cpu.stop(now))
        wall = max(1e-9, now - marks["t0"])
        for name, secs in pg.stop().items():
            pct[f"pg_{name}"] = round(100.0 * secs / wall, 1)

    fn = _op_fn(scenario, http, ops, f"r{rep}-{uuid.uuid4().hex[:6]}")
    result: RunResult
    if args.interval:
        result = await periodic_loop(
            fn,
            n=len(ops),
            interval_s=args.interval,
            warmup_s=max(args.warmup, args.interval * 1.1),
            duration_s=args.duration,
            on_measure=measure,
            on_end=end,
        )
    else:
        result = await closed_loop(
            fn,
            concurrency=len(ops),
            warmup_s=args.warmup,
            duration_s=args.duration,
            on_measure=measure,
            on_end=end,
        )
    s = result.summary()
    tput = s["throughput_per_s"]
    s["cpu_pct"] = pct
    s["gateway_cpu_us_per_call"] = _per_call_us(pct.get("gateway", 0.0), tput)
    s["harness_cpu_us_per_call"] = _per_call_us(pct.get("harness"), tput)
    if pg_db is not None:
        own = pct.get("pg_own", 0.0)
        s["pg_own_cpu_us_per_call"] = _per_call_us(own, tput)
        s["pg_box_cpu_us_per_call"] = _per_call_us(own + pct.get("pg_shared", 0.0), tput)
        s["box_cpu_us_per_call"] = _per_call_us(
            pct.get("gateway", 0.0) + own + pct.get("pg_shared", 0.0), tput
        )
    else:
        s["box_cpu_us_per_call"] = s["gateway_cpu_us_per_call"]
    return s


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def med(key: str) -> float | None:
        vals = [r[key] for r in runs if r.get(key) is not None]
        return median_of(vals) if vals else None

    lat = [r["latency_ms"].get("call", summarize([])) for r in runs]
    return {
        "throughput_per_s": med("throughput_per_s"),
        "gateway_cpu_us_per_call": med("gateway_cpu_us_per_call") or 0.0,
        "pg_own_cpu_us_per_call": med("pg_own_cpu_us_per_call"),
        "pg_box_cpu_us_per_call": med("pg_box_cpu_us_per_call"),
        "box_cpu_us_per_call": med("box_cpu_us_per_call"),
        "harness_cpu_us_per_call": med("harness_cpu_us_per_call"),
        "p50_ms": median_of([x["p50"] for x in lat]),
        "p99_ms": median_of([x["p99"] for x in lat]),
        "p99_9_ms": median_of([x["p99_9"] for x in lat]),
        "max_ms": median_of([x["max"] for x in lat]),
        "errors": sum(r["errors"] for r in runs),
    }


async def _create_database(
    target: dbmod.Target, workdir: Path, args: argparse.Namespace
) -> dbmod.Database:
    """The run's database, migrated by the gateway under test (another checkout's gateway has
    its own migrations)."""
    if not args.gateway_root:
        return await dbmod.create_database(target, workdir, args.pg_admin)
    if target.db == "sqlite":
        db = dbmod.Database(target=target, url=f"sqlite:///{workdir / target.name}.db")
    else:
        name = f"sg_bench_{uuid.uuid4().hex[:12]}"
        conn = await asyncpg.connect(args.pg_admin, timeout=10)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        url = pg_database_url(args.pg_admin, name)
        db = dbmod.Database(target=target, url=url, pg_admin=args.pg_admin, pg_name=name)
    root = Path(args.gateway_root).resolve()
    proc = await asyncio.create_subprocess_exec(
        str(root / ".venv" / "bin" / "python"),
        "-m",
        "gateway.cli",
        "migrate",
        cwd=root,
        env={**os.environ, "SWARMGATE_DATABASE_URL": db.url},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        await db.drop()
        raise RuntimeError(f"migrate in {root} failed: {out.decode(errors='replace')[-2000:]}")
    return db


async def run_target(target: dbmod.Target, args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="sg-bench-hb-"))
    db = await _create_database(target, workdir, args)
    agent = Accepting()
    runner = web.AppRunner(agent.app(), access_log=None)
    await runner.setup()
    agent_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", agent_port, backlog=4096).start()
    agents_file = workdir / "agents.json"
    agents_file.write_text(
        json.dumps(
            [
                {
                    "name": "beat",
                    "endpoint": f"http://127.0.0.1:{agent_port}",
                    "operations": [
                        {"name": "work", "heartbeat_timeout_s": 3600, "timeout_s": 86400}
                    ],
                }
            ]
        )
    )
    port = free_port()
    gw = gateway_process(
        db_url=db.url,
        port=port,
        agents_file=agents_file,
        log=workdir / "gateway.log",
        max_seconds=3600,
        sqlite_synchronous=target.sqlite_synchronous,
        root=Path(args.gateway_root).resolve() if args.gateway_root else None,
        extra_env=args.gateway_env,
    )
    gw_url = f"http://127.0.0.1:{port}"
    out: dict[str, Any] = {
        "target": target.name,
        "ops": args.ops,
        "mode": f"open {args.interval:g}s" if args.interval else "closed",
        "gateway_root": args.gateway_root or str(ROOT),
        "gateway_env": dict(args.gateway_env),
        "scenarios": {},
    }
    # closed loop: a connection per operation; open loop: as many as the calls in flight
    # need, up to 1,024 (waiting for one counts in the latency)
    conns = min(args.ops, 1024) if args.interval else args.ops
    http = HttpTransport(OutboundPolicy.loopback_allowed(), limit=conns, max_idle_per_origin=conns)
    try:
        gw.spawn()
        await gw.wait_ready(f"{gw_url}/readyz", 60)
        t_setup = time.perf_counter()
        await _start_ops(http, gw_url, args.ops)
        out["started_s"] = round(time.perf_counter() - t_setup, 2)
        deadline = time.monotonic() + 300
        while len(agent.ops) < args.ops:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(agent.ops)} of {args.ops} dispatched")
            await asyncio.sleep(0.05)
        # the agent has every dispatch; the gateway may still be recording the acceptances
        # (one write each): measuring before they are all in would count their cost
        while await _accepted(db) < args.ops:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {await _accepted(db)} of {args.ops} accepted")
            await asyncio.sleep(0.2)
        out["setup_s"] = round(time.perf_counter() - t_setup, 2)
        ops = list(agent.ops.values())
        for scenario in args.scenarios:
            runs = [
                await _run_once(scenario, rep, args, http, ops, gw.pid, db.pg_name)
                for rep in range(args.repeat)
            ]
            out["scenarios"][scenario] = {"runs": runs, "median": _median(runs)}
        if db.pg_name is not None:
            out["pg_stats"] = await _pg_stats(db.url)
    finally:
        await http.close()
        gw.stop()
        await runner.cleanup()
        await db.drop()
    return out


_ACCEPTED = "SELECT count(*) FROM sg_events WHERE kind = 'attempt.accepted'"


async def _accepted(db: dbmod.Database) -> int:
    """Acceptances the gateway has committed (``attempt.accepted`` events)."""
    if db.pg_name is None:  # SQLite: a read next to the gateway's writer (WAL)
        path = db.url.removeprefix("sqlite:///")
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10) as conn:
            return int(conn.execute(_ACCEPTED).fetchone()[0])
    pg = await asyncpg.connect(db.url, timeout=10)
    try:
        return int(await pg.fetchval(_ACCEPTED))
    finally:
        await pg.close()


async def _pg_stats(url: str) -> dict[str, Any]:
    """Row-update statistics of the tables heartbeats and steps write (HOT share)."""
    conn = await asyncpg.connect(url, timeout=10)
    try:
        rs = await conn.fetch(
            "SELECT relname, n_tup_upd, n_tup_hot_upd, n_tup_ins, n_dead_tup"
            " FROM pg_stat_user_tables WHERE relname IN ('sg_operations', 'sg_steps', 'sg_events')"
        )
    finally:
        await conn.close()
    return {r["relname"]: {k: int(v) for k, v in dict(r).items() if k != "relname"} for r in rs}


def _us(v: float | None) -> str:
    return "-" if v is None else f"{v:,.1f}"


def render(results: list[dict[str, Any]]) -> str:
    lines = [
        f"{'target':<14} {'mode':<8} {'scenario':<18} {'ops':>6} {'calls/s':>8} {'p50 ms':>7} "
        f"{'p99 ms':>7} {'gw us':>7} {'pg own':>7} {'pg box':>7} {'box us':>7} "
        f"{'load us':>7} {'errors':>6}"
    ]
    for res in results:
        for name, sc in res["scenarios"].items():
            m = sc["median"]
            lines.append(
                f"{res['target']:<14} {res['mode']:<8} {name:<18} {res['ops']:>6} "
                f"{m['throughput_per_s']:>8.1f} {m['p50_ms']:>7.2f} {m['p99_ms']:>7.2f} "
                f"{_us(m['gateway_cpu_us_per_call']):>7} {_us(m['pg_own_cpu_us_per_call']):>7} "
                f"{_us(m['pg_box_cpu_us_per_call']):>7} {_us(m['box_cpu_us_per_call']):>7} "
                f"{_us(m['harness_cpu_us_per_call']):>7} {m['errors']:>6}"
            )
        if "pg_stats" in res:
            lines.append(f"  {res['target']} table stats: {json.dumps(res['pg_stats'])}")
    lines.append(
        "CPU per call in us: gw = gateway, pg own = the bench database's backends, pg box = "
        "those + PostgreSQL's shared processes, box = gw + pg box, load = the load generator"
    )
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.heartbeats",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--db", choices=("sqlite", "postgresql", "both"), default="both")
    p.add_argument("--ops", type=int, default=1000, help="concurrently heartbeating operations")
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument(
        "--interval",
        type=float,
        default=None,
        help="open loop: each operation calls every INTERVAL seconds (default: closed loop)",
    )
    p.add_argument(
        "--scenarios",
        type=lambda v: tuple(x for x in v.split(",") if x),
        default=None,
        help=",".join(SCENARIOS) + " (default: all; open loop: heartbeat)",
    )
    p.add_argument("--sqlite-sync", default="NORMAL")
    p.add_argument("--pg-admin", default=PG_ADMIN)
    p.add_argument(
        "--gateway-root", default=None, help="run the gateway of this checkout (its .venv)"
    )
    add_gateway_env_argument(p)
    p.add_argument("--json", default=None, help="write the results as JSON here ('-': stdout)")
    return p


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    targets = []
    if args.db in ("sqlite", "both"):
        sync = args.sqlite_sync.upper()
        targets.append(dbmod.Target(f"sqlite-{sync.lower()}", "sqlite", sync))
    if args.db in ("postgresql", "both"):
        targets.append(dbmod.Target("postgresql", "postgresql"))
    return [await run_target(t, args) for t in targets]


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    try:
        args.gateway_env = parse_gateway_env(args.gateway_env)
    except ValueError as exc:
        p.error(str(exc))
    if args.scenarios is None:
        args.scenarios = ("heartbeat",) if args.interval else SCENARIOS
    bad = [s for s in args.scenarios if s not in SCENARIOS]
    if bad:
        print(f"unknown scenarios {bad}; choose from {','.join(SCENARIOS)}", file=sys.stderr)
        return 2
    results = uvloop.run(main_async(args))
    print(render(results))
    if args.json:
        text = json.dumps(jsonable(results), indent=2)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
