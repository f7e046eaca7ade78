"""Orchestrates one benchmark run: processes, databases, scenarios, repeats, ratios.

Process layout (2 cores here, so keep it in mind when reading CPU figures):
  gateway   its own subprocess (``python -m bench.gwproc`` = ``gateway.cli serve`` + watchdog)
  agent     its own subprocess (``python -m bench.agent``), the echo agent
  harness   this process: the load generator (caller) and the callback receiver
"""

from __future__ import annotations

import asyncio
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from adapters.transport import HttpTransport
from bench import db as dbmod
from bench import receiver as receiver_server
from bench.load import OpFn, RunResult, closed_loop, open_loop
from bench.procs import (
    ROOT,
    Child,
    agent_process,
    free_port,
    gateway_process,
    listening_sockets,
    write_agents_file,
)
from bench.profile import PySpy
from bench.scenarios import Receiver, baseline_op, lifecycle_op, start_op
from bench.sideload import Callers, SideLoad
from bench.stats import (
    CpuMeter,
    ProcessTree,
    RssSampler,
    cpu_us_per_op,
    median_of,
    median_summary,
    tree_rss_kb,
)
from gateway.security.netguard import OutboundPolicy
from registry.auth import AuthConfig

TARGET_LIFECYCLE_PER_S = 1500.0
TARGET_START_P50_MS = 3.0
TARGET_START_P99_MS = 20.0
TARGET_START_VS_BASELINE = 0.40


@dataclass(frozen=True, kw_only=True)
class Options:
    targets: tuple[dbmod.Target, ...]
    scenarios: tuple[str, ...]
    modes: tuple[str, ...]
    concurrency: int
    rate: float | None  # None: auto = rate_fraction x the closed-loop durable throughput
    rate_fraction: float
    duration_s: float
    warmup_s: float
    repeat: int
    payload_bytes: int
    preload: int
    max_outstanding: int
    op_timeout_s: float
    pg_admin: str
    profile: bool
    profile_rate: int
    workdir: Path | None
    profile_dir: Path | None
    quiet: bool
    workers: int = 1  # gateway processes (PostgreSQL targets)
    auth: str = "none"  # "hs256": the gateway checks a JWT on every request
    rss_interval_s: float = 0.0  # > 0: sample the gateway's RSS this often during each run
    side_rate: float = 0.0  # > 0: the side load's requests per second (lifecycle runs)
    callers: int = 1  # distinct callers (JWT subjects) with --auth hs256
    hold_s: float = 2.0  # how long the echo agent's ``hold`` operation runs
    gateway_root: Path | None = None  # run another checkout's gateway (its .venv): a base
    gateway_env: dict[str, str] = field(default_factory=dict)  # more SWARMGATE_* settings
    receiver: str = "raw"  # the callback receiver's server: "raw" (bench.receiver) or "aiohttp"


def targets_for(db: str, sqlite_sync: tuple[str, ...]) -> tuple[dbmod.Target, ...]:
    out: list[dbmod.Target] = []
    if db in ("sqlite", "both"):
        out += [dbmod.Target(f"sqlite-{s.lower()}", "sqlite", s.upper()) for s in sqlite_sync]
    if db in ("postgresql", "both"):
        out.append(dbmod.Target("postgresql", "postgresql"))
    return tuple(out)


def _log(opts: Options, msg: str) -> None:
    if not opts.quiet:
        print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass
class Env:
    opts: Options
    workdir: Path
    agent: Child
    agent_url: str
    receiver: Receiver
    receiver_url: str
    run_id: str
    profile_dir: Path
    max_child_s: float
    auth_headers: dict[str, str] = field(default_factory=dict)  # --auth hs256: a bearer token
    callers: Callers = field(default_factory=lambda: Callers(None, 1, ()))


def auth_env(env: Env) -> dict[str, str]:
    """Gateway settings for ``--auth hs256``; the harness's bearer token goes in env."""
    if env.opts.auth != "hs256":
        return {}
    secret = secrets.token_urlsafe(32)
    cfg = AuthConfig(mode="hs256", secret=secret, issuer="swarmgate", audience="swarmgate")
    env.callers = Callers(cfg, env.opts.callers, ("admin",))
    env.auth_headers.clear()
    env.auth_headers.update(env.callers.headers(0))
    return {"SWARMGATE_AUTH_MODE": "hs256", "SWARMGATE_JWT_SECRET": secret}


async def quiesce(gw_url: str, timeout_s: float, headers: dict[str, str]) -> float:
    """Wait until the gateway has no running operation left; returns the seconds it took."""
    t0 = time.perf_counter()
    url = f"{gw_url}/api/operations?state=running&limit=1"
    async with aiohttp.ClientSession(headers=headers) as http:
        while time.perf_counter() - t0 < timeout_s:
            try:
                async with http.get(url, timeout=aiohttp.ClientTimeout(total=10)) as r:
                    if r.status == 200 and not (await r.json()).get("operations"):
                        return round(time.perf_counter() - t0, 2)
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.2)
    return -1.0


def _make_op(
    env: Env,
    http: HttpTransport,
    scenario: str,
    gw_url: str,
    run_id: str,
    side: SideLoad | None = None,
) -> OpFn:
    o = env.opts
    size, timeout_s, auth = o.payload_bytes, o.op_timeout_s, env.callers.headers
    if scenario == "baseline":
        return baseline_op(http, env.agent_url, size, timeout_s)
    if scenario == "start":
        return start_op(http, gw_url, run_id, size, timeout_s, auth)
    receiver, receiver_url = env.receiver, env.receiver_url
    on_started = side.started if side is not None else None
    return lifecycle_op(
        http, gw_url, receiver, receiver_url, run_id, size, timeout_s, auth, on_started
    )


async def run_scenario(
    env: Env,
    gw: Child,
    gw_url: str,
    target: str,
    scenario: str,
    mode: str,
    rep: int,
    profile: PySpy | None,
    rate: float,
    pg_database: str | None = None,
) -> dict[str, Any]:
    o = env.opts
    run_id = f"{env.run_id}-{target}-{scenario}-{mode}-{rep}"
    roots: dict[str, int | ProcessTree] = {
        "gateway": ProcessTree(gw.pid),  # with SWARMGATE_WORKERS: the supervisor and workers
        "agent": env.agent.pid,
        "harness": os.getpid(),
    }
    cpu = CpuMeter(roots, postgres=target == "postgresql", pg_database=pg_database)
    limit = o.concurrency if mode == "closed" else o.max_outstanding
    rss_start = tree_rss_kb(gw.pid)
    received_before, unexpected_before = env.receiver.received, env.receiver.unexpected

    def on_measure() -> None:
        cpu.start(time.perf_counter())
        if profile is not None:
            profile.start()

    cpu_pct: dict[str, float] = {}

    def on_end() -> None:
        cpu_pct.update(cpu.stop(time.perf_counter()))

    # The caller's requests go through the gateway's own lean transport: a load generator on
    # the same two cores should take as little CPU from the system under test as it can.
    http = HttpTransport(OutboundPolicy.loopback_allowed(), limit=limit)
    rss = RssSampler(gw.pid, o.rss_interval_s) if o.rss_interval_s > 0 else None
    side = None
    if o.side_rate > 0 and scenario == "lifecycle":
        side = SideLoad(gw_url, o.side_rate, env.callers, run_id, timeout_s=o.op_timeout_s)
    sampling = asyncio.create_task(rss.run()) if rss is not None else None
    side_task = asyncio.create_task(side.run()) if side is not None else None
    try:
        op = _make_op(env, http, scenario, gw_url, run_id, side)
        result: RunResult
        if mode == "closed":
            result = await closed_loop(
                op,
                concurrency=o.concurrency,
                warmup_s=o.warmup_s,
                duration_s=o.duration_s,
                on_measure=on_measure,
                on_end=on_end,
            )
        else:
            result = await open_loop(
                op,
                rate=rate,
                warmup_s=o.warmup_s,
                duration_s=o.duration_s,
                max_outstanding=o.max_outstanding,
                on_measure=on_measure,
                on_end=on_end,
            )
    finally:
        await http.close()
        if side is not None and side_task is not None:
            side.stop()
            await asyncio.gather(side_task, return_exceptions=True)
        if rss is not None and sampling is not None:
            sampling.cancel()
            await asyncio.gather(sampling, return_exceptions=True)
            rss.sample(time.perf_counter())
    rss_end = tree_rss_kb(gw.pid)
    summary = result.summary()
    summary["cpu_pct"] = cpu_pct
    summary["cpu_us_per_op"] = cpu_us_per_op(cpu_pct, float(summary["throughput_per_s"]))
    # processes that ended while measured (a gateway worker that crashed and was started again)
    summary["processes_lost"] = {name: len(pids) for name, pids in cpu.lost.items()}
    # the gateway's CPU per process, busiest first (with workers: how they shared the load)
    summary["gateway_cpu_pct_by_process"] = cpu.by_process.get("gateway", [])
    summary["gateway_rss_kb"] = {"start": rss_start, "end": rss_end}
    if rss is not None:
        summary["gateway_rss"] = rss.summary(o.warmup_s)
    if side is not None:
        summary["side_load"] = side.summary()
    if scenario == "lifecycle":
        summary["callbacks"] = {
            "received": env.receiver.received - received_before,
            "unexpected": env.receiver.unexpected - unexpected_before,
        }
    if scenario != "baseline":
        summary["drain_s"] = await quiesce(gw_url, 120.0, env.auth_headers)
    return summary


def _summed_counts(runs: list[dict[str, Any]], key: str) -> dict[str, int]:
    """The runs' ``key`` counts ({name: n}) added up over the repeats."""
    total: dict[str, int] = {}
    for r in runs:
        for k, v in r.get(key, {}).items():
            total[k] = total.get(k, 0) + int(v)
    return total


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over repeats (throughput, every latency percentile, CPU)."""
    first = runs[0]
    out: dict[str, Any] = {
        k: v
        for k, v in first.items()
        if k
        not in (
            "throughput_per_s",
            "latency_ms",
            "ok",
            "errors",
            "errors_outside_window",
            "error_kinds",
            "cpu_pct",
            "cpu_us_per_op",
            "gateway_rss_kb",
            "gateway_rss",
            "side_load",
            "offered",
            "callbacks",
            "drain_s",
            "waited_for_slot",
            "processes_lost",
            "gateway_cpu_pct_by_process",
        )
    }
    out["gateway_cpu_pct_by_process"] = [r.get("gateway_cpu_pct_by_process", []) for r in runs]
    out["repeats"] = len(runs)
    out["processes_lost"] = _summed_counts(runs, "processes_lost")
    out["throughput_per_s"] = round(median_of([r["throughput_per_s"] for r in runs]), 1)
    out["throughput_per_s_repeats"] = [r["throughput_per_s"] for r in runs]
    out["ok"] = sum(int(r["ok"]) for r in runs)
    out["errors"] = sum(int(r["errors"]) for r in runs)
    out["errors_outside_window"] = sum(int(r["errors_outside_window"]) for r in runs)
    out["error_kinds"] = _summed_counts(runs, "error_kinds")
    names = [n for n in first["latency_ms"]]
    out["latency_ms"] = {
        n: median_summary([r["latency_ms"][n] for r in runs if n in r["latency_ms"]]) for n in names
    }
    cpu_keys = {k for r in runs for k in r["cpu_pct"]}
    out["cpu_pct"] = {
        k: round(median_of([r["cpu_pct"][k] for r in runs if k in r["cpu_pct"]]), 1)
        for k in sorted(cpu_keys)
    }
    us_keys = {k for r in runs for k in r.get("cpu_us_per_op", {})}
    out["cpu_us_per_op"] = {
        k: round(median_of([r["cpu_us_per_op"][k] for r in runs if k in r["cpu_us_per_op"]]), 1)
        for k in sorted(us_keys)
    }
    out["gateway_rss_kb"] = {
        "start": runs[0]["gateway_rss_kb"]["start"],
        "end": runs[-1]["gateway_rss_kb"]["end"],
        "per_repeat": [r["gateway_rss_kb"] for r in runs],
    }
    for key in ("gateway_rss", "side_load"):
        if key in first:
            out[key] = first[key] if len(runs) == 1 else [r[key] for r in runs]
    for key in ("offered", "waited_for_slot"):
        if key in first:
            out[key] = [r[key] for r in runs]
    if "callbacks" in first:
        out["callbacks"] = {
            k: sum(int(r["callbacks"][k]) for r in runs) for k in first["callbacks"]
        }
    if "drain_s" in first:
        out["drain_s"] = [r["drain_s"] for r in runs]
    return out


def _get(d: dict[str, Any], *path: str) -> float | None:
    cur: Any = d
    for p in path:
        if not isinstance(cur, dict) or p not in cur:
            return None
        cur = cur[p]
    return float(cur) if isinstance(cur, int | float) else None


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 3)


def ratios(sc: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """durable / baseline, per loop mode: throughput, and p50 / p99 latency."""
    out: dict[str, Any] = {}
    for mode in ("closed", "open"):
        base = sc.get("baseline", {}).get(mode)
        if base is None:
            continue
        r: dict[str, float | None] = {}
        bt = _get(base, "throughput_per_s")
        b50 = _get(base, "latency_ms", "latency", "p50")
        b99 = _get(base, "latency_ms", "latency", "p99")
        start = sc.get("start", {}).get(mode)
        if start is not None:
            r["start_throughput"] = _ratio(_get(start, "throughput_per_s"), bt)
            r["start_p50"] = _ratio(_get(start, "latency_ms", "start", "p50"), b50)
            r["start_p99"] = _ratio(_get(start, "latency_ms", "start", "p99"), b99)
        life = sc.get("lifecycle", {}).get(mode)
        if life is not None:
            r["lifecycle_throughput"] = _ratio(_get(life, "throughput_per_s"), bt)
            r["lifecycle_e2e_p50"] = _ratio(_get(life, "latency_ms", "e2e", "p50"), b50)
            r["lifecycle_e2e_p99"] = _ratio(_get(life, "latency_ms", "e2e", "p99"), b99)
        out[mode] = r
    return out


def target_checks(sc: dict[str, dict[str, dict[str, Any]]], rats: dict[str, Any]) -> dict[str, Any]:
    """The issue's context targets, measured (None: not measured in this run)."""
    life = _get(sc.get("lifecycle", {}).get("closed", {}), "throughput_per_s")
    p50 = _get(sc.get("start", {}).get("open", {}), "latency_ms", "start", "p50")
    p99 = _get(sc.get("start", {}).get("open", {}), "latency_ms", "start", "p99")
    ratio = rats.get("closed", {}).get("start_throughput")

    def check(value: float | None, ok: bool) -> dict[str, Any]:
        return {"value": value, "met": ok if value is not None else None}

    return {
        f"lifecycle_closed_per_s>={TARGET_LIFECYCLE_PER_S:g}": check(
            life, life is not None and life >= TARGET_LIFECYCLE_PER_S
        ),
        f"start_open_p50_ms<={TARGET_START_P50_MS:g}": check(
            p50, p50 is not None and p50 <= TARGET_START_P50_MS
        ),
        f"start_open_p99_ms<={TARGET_START_P99_MS:g}": check(
            p99, p99 is not None and p99 <= TARGET_START_P99_MS
        ),
        f"start/baseline_closed_throughput>={TARGET_START_VS_BASELINE:g}": check(
            ratio, ratio is not None and ratio >= TARGET_START_VS_BASELINE
        ),
    }


async def run_target(env: Env, target: dbmod.Target) -> dict[str, Any]:
    o = env.opts
    _log(o, f"{target.name}: creating database")
    db = await dbmod.create_database(target, env.workdir, o.pg_admin)
    out: dict[str, Any] = {
        "name": target.name,
        "db": target.db,
        "sqlite_synchronous": target.sqlite_synchronous,
    }
    try:
        if o.preload:
            _log(o, f"{target.name}: preloading {o.preload} finished operations")
        out["preload"] = await dbmod.preload(db, o.preload)
        port = free_port()
        gw_url = f"http://127.0.0.1:{port}"
        agents_file = env.workdir / "agents.json"
        write_agents_file(agents_file, env.agent_url)
        gw = gateway_process(
            db_url=db.url,
            port=port,
            agents_file=agents_file,
            log=env.workdir / f"gateway-{target.name}.log",
            max_seconds=env.max_child_s,
            sqlite_synchronous=target.sqlite_synchronous,
            root=o.gateway_root,
            extra_env={
                **auth_env(env),
                **({"SWARMGATE_WORKERS": str(o.workers)} if target.db == "postgresql" else {}),
                **o.gateway_env,
            },
        )
        # other work may land during a long run; with --gateway-root: that checkout's commit
        out["git_commit_at_spawn"] = _git_commit(o.gateway_root or ROOT)
        gw.spawn()
        try:
            workers = o.workers if target.db == "postgresql" else 1
            await gw.wait_ready(gw_url + "/readyz", 60.0, port=port, listeners=workers)
            out["gateway_pid"] = gw.pid
            out["gateway_listeners"] = listening_sockets(port)
            out["gateway_rss_kb_ready"] = tree_rss_kb(gw.pid)
            runs: dict[str, dict[str, list[dict[str, Any]]]] = {
                s: {m: [] for m in o.modes} for s in o.scenarios
            }
            profile_at = ("lifecycle", "closed" if "closed" in o.modes else o.modes[0])
            profile: PySpy | None = None
            rate = o.rate
            for rep in range(o.repeat):
                for mode in o.modes:  # closed first: the auto open-loop rate derives from it
                    if mode == "open" and rate is None:
                        rate = auto_rate(runs, o.rate_fraction)
                        out["open_loop_rate"] = {"auto": True, "rate_per_s": rate}
                    for scenario in o.scenarios:
                        spy = None
                        if o.profile and rep == 0 and (scenario, mode) == profile_at:
                            spy = PySpy(
                                gw.pid,
                                o.duration_s,
                                env.profile_dir / f"profile-{env.run_id}-{target.name}.txt",
                                o.profile_rate,
                            )
                            profile = spy
                        _log(o, f"{target.name}: {scenario}/{mode} (repeat {rep + 1})")
                        res = await run_scenario(
                            env,
                            gw,
                            gw_url,
                            target.name,
                            scenario,
                            mode,
                            rep,
                            spy,
                            rate or 0.0,
                            pg_database=db.pg_name,
                        )
                        runs[scenario][mode].append(res)
                        _log(o, f"{target.name}: {scenario}/{mode}: {_brief(res)}")
                        if not gw.alive():
                            raise RuntimeError(f"gateway died: {gw.tail()}")
            out["gateway_rss_kb_end"] = tree_rss_kb(gw.pid)
            if profile is not None:
                out["profile"] = await profile.result()
        finally:
            out["gateway_exit_code"] = gw.stop()
        sc = {s: {m: aggregate(rs) for m, rs in modes.items() if rs} for s, modes in runs.items()}
        out["scenarios"] = sc
        out["ratios"] = ratios(sc)
        out["targets"] = target_checks(sc, out["ratios"])
        out["store"] = await dbmod.census(db)
        size = dbmod.db_size_bytes(db)
        if size is not None:
            out["store"]["sqlite_file_bytes"] = {"all": size}
    finally:
        await db.drop()
    return out


def auto_rate(runs: dict[str, dict[str, list[dict[str, Any]]]], fraction: float) -> float:
    """A moderate open-loop rate: ``fraction`` of the slowest closed-loop durable throughput."""
    seen = [
        float(r["throughput_per_s"])
        for s in ("lifecycle", "start")
        for r in runs.get(s, {}).get("closed", [])[:1]
        if r["throughput_per_s"] > 0
    ]
    if not seen:
        seen = [float(r["throughput_per_s"]) for r in runs.get("baseline", {}).get("closed", [])]
    return round(max(5.0, fraction * min(seen)), 1) if seen else 100.0


def _brief(res: dict[str, Any]) -> str:
    lat = res.get("latency_ms", {})
    parts = [f"{res['throughput_per_s']}/s", f"ok={res['ok']}", f"err={res['errors']}"]
    for name, s in lat.items():
        parts.append(f"{name} p50={s.get('p50')}ms p99={s.get('p99')}ms")
    parts.append(f"cpu={res.get('cpu_pct')}")
    return " ".join(parts)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str] = {}
    for pkg in ("aiohttp", "sqlalchemy", "asyncpg", "aiosqlite", "py-spy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def _git_commit(root: Path = ROOT) -> str | None:
    try:
        res = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except OSError:
        return None
    return res.stdout.strip() or None


def _meta(opts: Options) -> dict[str, Any]:
    return {
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "versions": _versions(),
        "git_commit": _git_commit(),
        "options": {
            "db": [t.name for t in opts.targets],
            "scenarios": list(opts.scenarios),
            "modes": list(opts.modes),
            "concurrency": opts.concurrency,
            "rate_per_s": opts.rate if opts.rate is not None else "auto",
            "rate_fraction": opts.rate_fraction,
            "duration_s": opts.duration_s,
            "warmup_s": opts.warmup_s,
            "repeat": opts.repeat,
            "payload_bytes": opts.payload_bytes,
            "preload": opts.preload,
            "max_outstanding": opts.max_outstanding,
            "profile": opts.profile,
            "gateway_workers_postgresql": opts.workers,
            "auth": opts.auth,
            "rss_interval_s": opts.rss_interval_s,
            "side_rate_per_s": opts.side_rate,
            "callers": opts.callers,
            "hold_s": opts.hold_s,
            "gateway_root": str(opts.gateway_root or ROOT),
            "gateway_env": dict(opts.gateway_env),
            "receiver": opts.receiver,
        },
        "layout": {
            "gateway": "subprocess: python -m bench.gwproc (gateway.cli serve + stdin watchdog)",
            "agent": "subprocess: python -m bench.agent (bare aiohttp echo, answers 200)",
            "harness": "this process: load generator + callback receiver "
            + ("(bench.receiver on httptools)" if opts.receiver == "raw" else "(aiohttp)"),
            "gateway_env": f"AUTH_MODE={opts.auth} ALLOW_CIDRS=127.0.0.0/8 SYNC_WAIT_S=0, "
            "else defaults",
        },
    }


async def run(opts: Options) -> dict[str, Any]:
    per_target = opts.repeat * len(opts.scenarios) * len(opts.modes)
    per_target_s = per_target * (opts.warmup_s + opts.duration_s + 10.0) + 120.0
    max_child_s = per_target_s * len(opts.targets) * 2 + 600.0
    tmp = None
    if opts.workdir is not None:
        workdir = opts.workdir
        workdir.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="sg-bench-")
        workdir = Path(tmp.name)
    agent_port = free_port()
    agent = agent_process(agent_port, workdir / "agent.log", max_child_s, opts.hold_s)
    receiver = Receiver()
    recv_server: asyncio.Server | None = None  # --receiver raw
    recv_runner: web.AppRunner | None = None  # --receiver aiohttp
    result: dict[str, Any] = {"meta": _meta(opts), "targets": []}
    try:
        agent.spawn()
        agent_url = f"http://127.0.0.1:{agent_port}"
        await agent.wait_ready(agent_url + "/healthz", 30.0)
        recv_port = free_port()
        if opts.receiver == "raw":
            recv_server = await receiver_server.serve(receiver, "127.0.0.1", recv_port)
        else:
            recv_runner = web.AppRunner(receiver.app(), access_log=None)
            await recv_runner.setup()
            await web.TCPSite(recv_runner, "127.0.0.1", recv_port, backlog=1024).start()
        env = Env(
            opts=opts,
            workdir=workdir,
            agent=agent,
            agent_url=agent_url,
            receiver=receiver,
            receiver_url=f"http://127.0.0.1:{recv_port}",
            run_id=uuid.uuid4().hex[:8],
            profile_dir=opts.profile_dir or workdir,
            max_child_s=max_child_s,
        )
        for target in opts.targets:
            result["targets"].append(await run_target(env, target))
            if opts.profile_dir is None and tmp is not None:
                prof = result["targets"][-1].get("profile")
                if isinstance(prof, dict):
                    prof.pop("raw_file", None)  # the temporary directory goes away
    finally:
        if recv_server is not None:
            recv_server.close()
            await recv_server.wait_closed()
        if recv_runner is not None:
            await recv_runner.cleanup()
        agent.stop()
        if tmp is not None:
            tmp.cleanup()
    result["meta"]["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return result
