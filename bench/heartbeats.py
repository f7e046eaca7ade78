"""``python -m bench.heartbeats``: the cost of a heartbeat and of a step record (issue 12).

    python -m bench.heartbeats --db both --ops 1000 --duration 5 --repeat 3

Per database target: a real gateway subprocess (``bench.gwproc``), an in-process agent that
accepts every dispatch (201) and keeps the heartbeat URL, steps URL and token each dispatch
carried, and ``--ops`` accepted operations that declare ``heartbeat_timeout_s``. Then, closed
loop with one worker per operation (``--ops`` concurrent heartbeating operations):

heartbeat          ``POST /api/operations/{id}/heartbeat`` with ``{"attempt": n}``
heartbeat+details  the same with a ~100-byte checkpoint in ``details``
step               ``PUT /api/operations/{id}/steps/{name}``, a new name each time (a ~100-byte
                   result): one journal row and its ``step.completed`` event per call

Reports throughput, latency and the gateway process's CPU per call (CPU seconds over the
measured window / calls finished in it), medians over ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import uvloop
from aiohttp import web

from adapters.transport import HttpTransport
from bench import db as dbmod
from bench.load import OpFn, RunResult, Sample, closed_loop
from bench.procs import free_port, gateway_process
from bench.stats import CpuMeter, jsonable, median_of, process_tree
from gateway.domain.dispatch import (
    HEADER_ATTEMPT,
    HEADER_HEARTBEAT_URL,
    HEADER_STEPS_URL,
    TransportError,
)
from gateway.security.netguard import OutboundPolicy

SCENARIOS = ("heartbeat", "heartbeat+details", "step")
PG_ADMIN = os.environ.get(
    "SWARMGATE_BENCH_PG",
    os.environ.get("SWARMGATE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres"),
)
DETAILS = {"cursor": "x" * 64, "done": [1, 2, 3]}
RESULT = {"rows": ["y" * 32, "z" * 32], "n": 2}


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
            body = json.dumps({"result": RESULT}).encode()
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


async def _start_ops(http: HttpTransport, gw_url: str, n: int) -> None:
    sem = asyncio.Semaphore(32)

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


async def run_target(target: dbmod.Target, args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="sg-bench-hb-"))
    db = await dbmod.create_database(target, workdir, args.pg_admin)
    agent = Accepting()
    runner = web.AppRunner(agent.app(), access_log=None)
    await runner.setup()
    agent_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", agent_port).start()
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
    )
    gw_url = f"http://127.0.0.1:{port}"
    out: dict[str, Any] = {"target": target.name, "ops": args.ops, "scenarios": {}}
    http = HttpTransport(OutboundPolicy.loopback_allowed(), limit=args.ops)
    try:
        gw.spawn()
        await gw.wait_ready(f"{gw_url}/readyz", 60)
        await _start_ops(http, gw_url, args.ops)
        deadline = time.monotonic() + 120
        while len(agent.ops) < args.ops:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(agent.ops)} of {args.ops} dispatched")
            await asyncio.sleep(0.1)
        ops = list(agent.ops.values())
        for scenario in args.scenarios:
            runs = []
            for rep in range(args.repeat):
                cpu = CpuMeter(
                    {"gateway": process_tree(gw.pid), "harness": os.getpid()},
                    postgres=target.db == "postgresql",
                )
                pct: dict[str, float] = {}

                def measure(c: CpuMeter = cpu) -> None:
                    c.start(time.perf_counter())

                def end(c: CpuMeter = cpu, p: dict[str, float] = pct) -> None:
                    p.update(c.stop(time.perf_counter()))

                result: RunResult = await closed_loop(
                    _op_fn(scenario, http, ops, f"r{rep}-{uuid.uuid4().hex[:6]}"),
                    concurrency=args.ops,
                    warmup_s=args.warmup,
                    duration_s=args.duration,
                    on_measure=measure,
                    on_end=end,
                )
                s = result.summary()
                tput = s["throughput_per_s"]
                gw_pct = pct.get("gateway", 0.0)
                s["cpu_pct"] = pct
                s["gateway_cpu_us_per_call"] = round(gw_pct / 100 * 1e6 / tput, 1) if tput else None
                runs.append(s)
            out["scenarios"][scenario] = {
                "runs": runs,
                "median": {
                    "throughput_per_s": median_of([r["throughput_per_s"] for r in runs]),
                    "gateway_cpu_us_per_call": median_of(
                        [r["gateway_cpu_us_per_call"] or 0.0 for r in runs]
                    ),
                    "p50_ms": median_of([r["latency_ms"]["call"]["p50"] for r in runs]),
                    "p99_ms": median_of([r["latency_ms"]["call"]["p99"] for r in runs]),
                    "errors": sum(r["errors"] for r in runs),
                },
            }
    finally:
        await http.close()
        gw.stop()
        await runner.cleanup()
        await db.drop()
    return out


def render(results: list[dict[str, Any]]) -> str:
    lines = [
        f"{'target':<16} {'scenario':<18} {'ops':>5} {'calls/s':>9} {'p50 ms':>8} "
        f"{'p99 ms':>8} {'gw CPU us/call':>15} {'errors':>6}"
    ]
    for res in results:
        for name, sc in res["scenarios"].items():
            m = sc["median"]
            lines.append(
                f"{res['target']:<16} {name:<18} {res['ops']:>5} {m['throughput_per_s']:>9.1f} "
                f"{m['p50_ms']:>8.2f} {m['p99_ms']:>8.2f} {m['gateway_cpu_us_per_call']:>15.1f} "
                f"{m['errors']:>6}"
            )
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.heartbeats", description=__doc__)
    p.add_argument("--db", choices=("sqlite", "postgresql", "both"), default="both")
    p.add_argument("--ops", type=int, default=1000, help="concurrently heartbeating operations")
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument(
        "--scenarios",
        type=lambda v: tuple(x for x in v.split(",") if x),
        default=SCENARIOS,
        help=",".join(SCENARIOS),
    )
    p.add_argument("--sqlite-sync", default="NORMAL")
    p.add_argument("--pg-admin", default=PG_ADMIN)
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
    args = parser().parse_args(argv)
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
