"""The chaos run: replicas on one throw-away PostgreSQL, a seeded load, faults, drain, checks.

Phases:
1. setup: a private PostgreSQL 15 cluster, the agent and the callback receiver (in this
   process), N gateway replicas (subprocesses), the agent registered;
2. load + faults (``duration_s``): ``ops`` starts spread evenly over the duration and over the
   live replicas, while a random replica is SIGKILLed and restarted every few seconds,
   PostgreSQL is restarted once (``pg_ctl restart``) and the callback receiver is stopped for
   a while (then restarted on the same port). A start that fails (its replica died, the
   database restarted) is retried on another replica with the same Nexus-Request-Id;
3. drain: every replica and the receiver up, until nothing runs and every callback is
   delivered (bounded);
4. checks (see ``verify``), printed as a table; violations make the exit code non-zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from aiohttp import web

from gateway.store import schema
from tests.chaos.actors import (
    AGENT_NAME,
    EXPECTED,
    HAS_EFFECT,
    AgentStats,
    CallbackReceiver,
    chaos_agent,
)
from tests.chaos.cluster import Replica
from tests.chaos.pg import PgError, ThrowawayPostgres, find_pg_bin, free_port

TERMINAL_EVENTS = {
    "operation.succeeded",
    "operation.failed",
    "operation.canceled",
    "operation.timed_out",
}
KIND_WEIGHTS: dict[str, float] = {
    "quick": 0.3,
    "slow": 0.2,
    "slow_async": 0.3,
    "broken": 0.1,
    "hang": 0.1,
}
SYNC_KINDS = {"quick", "slow", "broken"}
OPS_TABLE = schema.operations.name
CALLBACKS_TABLE = schema.callbacks.name
EVENTS_TABLE = schema.events.name
# the database is (re)starting: try again later; anything else is a harness bug and raises
DB_TRANSIENT: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.InterfaceError,
)


@dataclass(frozen=True, kw_only=True)
class ChaosConfig:
    mode: str = "short"
    replicas: int = 3
    ops: int = 300
    duration_s: float = 20.0
    seed: int = 1
    json_path: Path | None = None
    keep: bool = False
    lease_s: float = 2.0
    poll_s: float = 0.05
    sync_wait_s: float = 0.5
    kill_every_s: tuple[float, float] = (2.0, 4.0)
    down_s: tuple[float, float] = (0.3, 1.5)
    pg_restart_at: float = 0.5  # fraction of the load phase
    pg_mode: str = "fast"
    receiver_drops: tuple[float, ...] = (0.2,)  # fractions of the load phase
    receiver_drop_s: float = 4.0
    receiver_refuse_fraction: float = 0.03
    hang_timeout_s: float = 3.0
    op_timeout_s: float = 20.0
    drain_timeout_s: float = 30.0
    start_give_up_s: float = 30.0
    concurrency: int = 64
    late_slack_s: float = 1.0  # sampling/CPU slack on top of lease + poll
    # The per-replica circuit breaker opens after 5 consecutive retryable agent errors, which
    # this load's 503s trip now and then; with the default 60 s cooldown an open circuit defers
    # work past the operations' timeouts, so the run uses a short one.
    breaker_threshold: int = 5
    breaker_cooldown_s: float = 1.0

    @property
    def stuck_after_s(self) -> float:
        """A running operation past its deadline by more than this is stuck."""
        return self.lease_s + self.poll_s + self.late_slack_s

    @property
    def hard_limit_s(self) -> float:
        return self.duration_s + self.drain_timeout_s + self.start_give_up_s + 60.0


def preset(mode: str) -> ChaosConfig:
    if mode == "long":
        # Sized for a small (2-CPU) box: a faster kill rate keeps a replica restarting (Python
        # start-up is CPU-bound) most of the time and the load then outruns the survivors.
        return ChaosConfig(
            mode="long",
            replicas=3,
            ops=3000,
            duration_s=150.0,
            kill_every_s=(3.0, 7.0),
            receiver_drops=(0.2, 0.7),
            receiver_drop_s=8.0,
            op_timeout_s=60.0,
            drain_timeout_s=75.0,
            start_give_up_s=60.0,
            concurrency=128,
        )
    return ChaosConfig()


@dataclass
class StartRecord:
    index: int
    rid: str
    kind: str
    payload: dict[str, Any]
    tokens: set[str] = field(default_factory=set)
    status: int | None = None
    tries: int = 0
    errors: list[str] = field(default_factory=list)
    rejected: str | None = None
    replayed: bool = False


@dataclass
class Check:
    name: str
    value: int | str
    expected: str
    ok: bool
    examples: list[str] = field(default_factory=list)


class Timeline:
    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.events: list[tuple[float, str]] = []
        # wall-clock windows when the gateways could not make progress (database down, or
        # no replica up); timeouts due then are excused until the window closes + grace.
        self.degraded: list[tuple[float, float | None]] = []

    def note(self, what: str) -> None:
        self.events.append((time.time() - self.t0, what))

    def open_window(self) -> int:
        self.degraded.append((time.time(), None))
        return len(self.degraded) - 1

    def close_window(self, i: int) -> None:
        self.degraded[i] = (self.degraded[i][0], time.time())

    def excused(self, start: float, end: float, grace: float) -> bool:
        """Does [start, end] (wall clock) overlap a degraded window extended by ``grace``?"""
        for s, e in self.degraded:
            e2 = (e if e is not None else time.time() + 3600) + grace
            if start <= e2 and end >= s:
                return True
        return False


class Chaos:
    def __init__(self, cfg: ChaosConfig) -> None:
        self.cfg = cfg
        self.rng_plan = random.Random(cfg.seed)
        self.rng_faults = random.Random(cfg.seed * 7919 + 1)
        self.rng_pick = random.Random(cfg.seed * 104729 + 2)
        self.workdir = Path(tempfile.mkdtemp(prefix="swarmgate-chaos-"))
        self.pg: ThrowawayPostgres | None = None
        self.replicas: list[Replica] = []
        self.records: list[StartRecord] = []
        self.timeline = Timeline(time.time())
        self.faults: Counter[str] = Counter()
        self.harness_errors: list[str] = []
        self.sampled_stuck: dict[str, tuple[float, float]] = {}  # op id -> (lag, when)
        self.samples = 0
        self.agent, self.agent_stats = chaos_agent(
            op_timeout_s=cfg.op_timeout_s, hang_timeout_s=cfg.hang_timeout_s
        )
        self.receiver = CallbackReceiver(
            free_port(),
            refuse_fraction=cfg.receiver_refuse_fraction,
            seed=cfg.seed,
        )
        self.db_url = ""
        self._agent_runner: web.AppRunner | None = None
        self._stop_sampler = asyncio.Event()

    # -- setup / teardown -------------------------------------------------------------------

    async def setup(self) -> None:
        bin_dir = find_pg_bin()
        if bin_dir is None:
            raise PgError("PostgreSQL server binaries (initdb, pg_ctl) not found")
        self.pg = ThrowawayPostgres(bin_dir, max_connections=100 + 60 * self.cfg.replicas)
        await self.pg.create()
        await self.pg.start()
        self.db_url = await self.pg.create_database("swarmgate")
        self.timeline.note(f"postgres up on 127.0.0.1:{self.pg.port}")

        self._agent_runner = web.AppRunner(self.agent.app, access_log=None)
        await self._agent_runner.setup()
        agent_port = free_port()
        await web.TCPSite(self._agent_runner, "127.0.0.1", agent_port).start()
        agent_url = f"http://127.0.0.1:{agent_port}"
        await self.receiver.start()

        env = {
            "SWARMGATE_AUTH_MODE": "none",
            "SWARMGATE_ALLOW_CIDRS": "127.0.0.0/8",
            "SWARMGATE_LEASE_S": str(self.cfg.lease_s),
            "SWARMGATE_POLL_S": str(self.cfg.poll_s),
            "SWARMGATE_SYNC_WAIT_S": str(self.cfg.sync_wait_s),
            "SWARMGATE_CALLBACK_RETRY_INITIAL_S": "0.1",
            "SWARMGATE_CALLBACK_RETRY_MAX_S": "0.5",
            "SWARMGATE_CALLBACK_TIMEOUT_S": "2",
            "SWARMGATE_BREAKER_THRESHOLD": str(self.cfg.breaker_threshold),
            "SWARMGATE_BREAKER_COOLDOWN_S": str(self.cfg.breaker_cooldown_s),
        }
        self.replicas = [
            Replica(i, free_port(), self.db_url, self.workdir, env)
            for i in range(self.cfg.replicas)
        ]
        # The first replica migrates the database and registers the agent; then the others.
        await self.replicas[0].start()
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{self.replicas[0].url}/api/agents",
                json=self.agent.spec(agent_url).to_json(),
            ) as r,
        ):
            if r.status not in (200, 201):
                raise RuntimeError(f"agent registration failed: {r.status} {await r.text()}")
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{self.replicas[0].url}/api/callback-secret") as r,
        ):
            if r.status != 200:
                raise RuntimeError(f"no callback secret: {r.status} {await r.text()}")
            self.receiver.secrets = [str((await r.json())["secret"])]
        await asyncio.gather(*(r.start() for r in self.replicas[1:]))
        self.timeline.note(f"{len(self.replicas)} replicas up")

    async def teardown(self, failed: bool) -> Path | None:
        for r in self.replicas:
            r.kill()
        with contextlib.suppress(Exception):
            await self.receiver.stop()
        if self._agent_runner is not None:
            with contextlib.suppress(Exception):
                await self._agent_runner.cleanup()
        keep = failed or self.cfg.keep
        if self.pg is not None:
            await self.pg.stop()
            self.pg.remove(keep_log_in=self.workdir if keep else None)
        if keep:
            return self.workdir
        shutil.rmtree(self.workdir, ignore_errors=True)
        return None

    # -- helpers ----------------------------------------------------------------------------

    def pick(self, avoid: Replica | None = None) -> Replica:
        live = [r for r in self.replicas if r.up and r is not avoid]
        if not live:
            live = [r for r in self.replicas if r is not avoid] or self.replicas
        return self.rng_pick.choice(live)

    async def db(self) -> asyncpg.Connection:
        return await asyncpg.connect(self.db_url, timeout=3)

    def rel(self, at: datetime | str) -> str:
        """A wall-clock time as seconds since the run began (as in the timeline)."""
        if isinstance(at, str):
            at = datetime.fromisoformat(at.replace("Z", "+00:00"))
        return f"{at.timestamp() - self.timeline.t0:.2f}s"

    async def sleep_until(self, t: float) -> None:
        delay = t - asyncio.get_running_loop().time()
        if delay > 0:
            await asyncio.sleep(delay)

    # -- load -------------------------------------------------------------------------------

    def plan(self) -> list[StartRecord]:
        kinds = list(KIND_WEIGHTS)
        weights = [KIND_WEIGHTS[k] for k in kinds]
        out = []
        for i in range(self.cfg.ops):
            kind = self.rng_plan.choices(kinds, weights)[0]
            payload: dict[str, Any] = {
                "i": i,
                "sleep": round(self.rng_plan.uniform(0.2, 1.0), 3),
                "gate_fail": self.rng_plan.choice((1, 2)) if self.rng_plan.random() < 0.2 else 0,
                "retry_later": (
                    self.rng_plan.choice((1, 2))
                    if kind in SYNC_KINDS and self.rng_plan.random() < 0.2
                    else 0
                ),
            }
            out.append(
                StartRecord(index=i, rid=f"chaos-{self.cfg.seed}-{i}", kind=kind, payload=payload)
            )
        return out

    async def start_one(self, http: aiohttp.ClientSession, rec: StartRecord) -> None:
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.cfg.start_give_up_s
        body = json.dumps(rec.payload).encode()
        headers = {"Nexus-Request-Id": rec.rid, "Content-Type": "application/json"}
        params = {"callback": f"{self.receiver.url}/cb/{rec.index}"}
        avoid: Replica | None = None
        delay = 0.1
        while True:
            replica = self.pick(avoid)
            rec.tries += 1
            try:
                async with http.post(
                    f"{replica.url}/nexus/{AGENT_NAME}/{rec.kind}",
                    data=body,
                    headers=headers,
                    params=params,
                    timeout=aiohttp.ClientTimeout(total=15),
                ) as r:
                    data = await r.read()
                    if r.status in (200, 201, 424):
                        token = r.headers.get("Nexus-Operation-Token")
                        if not token and r.status == 201:
                            token = str(json.loads(data).get("token"))
                        rec.tokens.add(token or "")
                        rec.status = r.status
                        rec.replayed = rec.replayed or "Idempotent-Replayed" in r.headers
                        return
                    if r.status >= 500 or r.status in (408, 429):
                        err = f"HTTP {r.status}"
                    else:
                        rec.rejected = f"HTTP {r.status}: {data[:300].decode(errors='replace')}"
                        return
            except (aiohttp.ClientError, TimeoutError) as exc:
                err = type(exc).__name__
            rec.errors.append(f"{replica.owner}: {err}")
            if loop.time() > give_up:
                return
            avoid = replica
            await asyncio.sleep(delay * (0.5 + self.rng_pick.random()))
            delay = min(delay * 2, 1.0)

    async def load(self, load_end: float) -> None:
        loop = asyncio.get_running_loop()
        self.records = self.plan()
        sem = asyncio.Semaphore(self.cfg.concurrency)
        t0 = loop.time()
        step = self.cfg.duration_s / max(1, self.cfg.ops)

        async def guarded(http: aiohttp.ClientSession, rec: StartRecord) -> None:
            async with sem:
                await self.start_one(http, rec)

        connector = aiohttp.TCPConnector(limit=self.cfg.concurrency * 2)
        async with aiohttp.ClientSession(connector=connector) as http:
            tasks = []
            for rec in self.records:
                await self.sleep_until(t0 + rec.index * step)
                tasks.append(asyncio.create_task(guarded(http, rec)))
            await asyncio.gather(*tasks)
        self.timeline.note(
            f"load done: {sum(1 for r in self.records if r.tokens)}/{len(self.records)} "
            f"answered ({loop.time() - load_end:+.1f}s vs planned end)"
        )

    # -- faults -----------------------------------------------------------------------------

    async def kill_replicas(self, load_end: float) -> None:
        """Every few seconds SIGKILL a random live replica and restart it after a short pause
        (restarts run in the background, so kills may overlap; one replica is always left up
        unless there is only one)."""
        loop = asyncio.get_running_loop()
        lo, hi = self.cfg.kill_every_s
        restarts: list[asyncio.Task[None]] = []
        while True:
            await asyncio.sleep(self.rng_faults.uniform(lo, hi))
            if loop.time() >= load_end:
                break
            candidates = [r for r in self.replicas if r.up]
            if not candidates or (len(candidates) == 1 and len(self.replicas) > 1):
                continue
            victim = self.rng_faults.choice(candidates)
            self.timeline.note(f"SIGKILL {victim.owner}")
            victim.kill()
            self.faults["replica_kills"] += 1
            restarts.append(asyncio.create_task(self._restart(victim)))
        await asyncio.gather(*restarts)

    async def _restart(self, victim: Replica) -> None:
        window = self.timeline.open_window() if not any(r.up for r in self.replicas) else -1
        await asyncio.sleep(self.rng_faults.uniform(*self.cfg.down_s))
        try:
            await victim.start()
            self.faults["replica_restarts"] += 1
            self.timeline.note(f"restarted as {victim.owner}")
        except TimeoutError as exc:
            self.harness_errors.append(str(exc))
        if window >= 0:
            self.timeline.close_window(window)

    async def restart_postgres(self, at: float) -> None:
        assert self.pg is not None
        await self.sleep_until(at)
        window = self.timeline.open_window()
        self.timeline.note(f"pg_ctl restart -m {self.cfg.pg_mode}")
        try:
            outage = await self.pg.restart(self.cfg.pg_mode)
            self.faults["pg_restarts"] += 1
            self.faults["pg_outage_ms"] += round(outage * 1000)
            self.timeline.note(f"postgres back after {outage:.2f}s")
        except PgError as exc:
            self.harness_errors.append(str(exc))
        finally:
            self.timeline.close_window(window)

    async def drop_receiver(self, at: float) -> None:
        await self.sleep_until(at)
        await self.receiver.stop()
        self.faults["receiver_drops"] += 1
        self.timeline.note("callback receiver stopped")
        await asyncio.sleep(self.cfg.receiver_drop_s)
        await self.receiver.start()
        self.timeline.note("callback receiver restarted on the same port")

    async def sample_stuck(self) -> None:
        """Now and then: running operations whose deadline passed more than lease + poll
        (+ slack) ago, outside degraded windows."""
        grace = self.cfg.lease_s + 2.0
        while not self._stop_sampler.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_sampler.wait(), 1.0)
            now = time.time()
            if self.timeline.excused(now, now, grace):
                continue
            try:
                conn = await self.db()
                try:
                    rows = await conn.fetch(
                        "SELECT id, extract(epoch from now() - deadline_at)::float8 AS lag "
                        f"FROM {OPS_TABLE} WHERE state = 'running' "
                        "AND deadline_at < now() - make_interval(secs => $1)",
                        self.cfg.stuck_after_s,
                    )
                finally:
                    await conn.close()
            except DB_TRANSIENT:
                continue
            if self.timeline.excused(now, time.time(), grace):
                continue
            self.samples += 1
            for row in rows:
                lag = float(row["lag"])
                if lag > self.sampled_stuck.get(row["id"], (0.0, 0.0))[0]:
                    self.sampled_stuck[row["id"]] = (lag, now - self.timeline.t0)

    # -- drain ------------------------------------------------------------------------------

    async def drain(self) -> tuple[bool, float, dict[str, int]]:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        if not self.receiver.up:
            await self.receiver.start()
        for r in self.replicas:
            if not r.up:
                try:
                    await r.start()
                except TimeoutError as exc:
                    self.harness_errors.append(str(exc))
        deadline = t0 + self.cfg.drain_timeout_s
        last: dict[str, int] = {}
        while loop.time() < deadline:
            try:
                conn = await self.db()
                try:
                    row = await conn.fetchrow(
                        "SELECT "
                        f"(SELECT count(*) FROM {OPS_TABLE} WHERE state = 'running') AS running, "
                        f"(SELECT count(*) FROM {CALLBACKS_TABLE} WHERE state <> 'delivered') "
                        "AS pending, "
                        f"(SELECT count(*) FROM {OPS_TABLE} o WHERE o.state <> 'running' "
                        " AND o.callback_url IS NOT NULL AND NOT EXISTS "
                        f" (SELECT 1 FROM {CALLBACKS_TABLE} c WHERE c.operation_id = o.id)"
                        # answered synchronously (200/424): no callback is owed
                        f" AND NOT EXISTS (SELECT 1 FROM {EVENTS_TABLE} e"
                        "  WHERE e.operation_id = o.id AND e.data->>'answered' = 'sync')) "
                        "AS no_cb"
                    )
                finally:
                    await conn.close()
            except DB_TRANSIENT:
                await asyncio.sleep(0.5)
                continue
            assert row is not None
            last = {k: int(row[k]) for k in ("running", "pending", "no_cb")}
            if not any(last.values()):
                return True, loop.time() - t0, last
            await asyncio.sleep(0.5)
        return False, loop.time() - t0, last

    # -- checks -----------------------------------------------------------------------------

    async def fetch_details(
        self, ids: Sequence[str]
    ) -> dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
        """Events and callback deliveries of every operation, through the gateways' API."""
        out: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {}
        sem = asyncio.Semaphore(32)

        async def get(http: aiohttp.ClientSession, path: str) -> Any:
            last: Exception | None = None
            for attempt in range(6):
                base = self.replicas[(hash(path) + attempt) % len(self.replicas)].url
                try:
                    async with http.get(base + path) as r:
                        if r.status == 200:
                            return await r.json()
                        last = RuntimeError(f"HTTP {r.status} on {path}")
                except (aiohttp.ClientError, TimeoutError) as exc:
                    last = exc
                await asyncio.sleep(0.2)
            raise RuntimeError(f"GET {path} failed: {last}")

        async def one(http: aiohttp.ClientSession, op_id: str) -> None:
            async with sem:
                events = await get(http, f"/api/operations/{op_id}/events")
                cbs = await get(http, f"/api/operations/{op_id}/callbacks")
                out[op_id] = (list(events["events"]), list(cbs["callbacks"]))

        timeout = aiohttp.ClientTimeout(total=15)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            await asyncio.gather(*(one(http, i) for i in ids))
        return out

    async def verify(self) -> tuple[list[Check], dict[str, Any]]:
        cfg = self.cfg
        conn = await self.db()
        try:
            rows = await conn.fetch(
                "SELECT id, request_id, operation, state, attempts, deadline_at, closed_at "
                f"FROM {OPS_TABLE}"
            )
            now_db: datetime = await conn.fetchval("SELECT now()")
        finally:
            await conn.close()
        ops = {r["id"]: r for r in rows}
        by_rid: dict[str | None, list[str]] = {}
        for r in rows:
            by_rid.setdefault(r["request_id"], []).append(r["id"])
        attempted = {rec.rid: rec for rec in self.records}
        answered = [rec for rec in self.records if rec.tokens]
        details = await self.fetch_details(list(ops))

        checks: list[Check] = []

        def check(name: str, bad: Sequence[str], expected: str = "0") -> None:
            checks.append(
                Check(
                    name=name,
                    value=len(bad),
                    expected=expected,
                    ok=not bad,
                    examples=[str(b) for b in list(bad)[:5]],
                )
            )

        unanswered = [rec.rid for rec in self.records if not rec.tokens and not rec.rejected]
        rejected = [f"{rec.rid}: {rec.rejected}" for rec in self.records if rec.rejected]
        lost = [
            rec.rid for rec in answered if not any(t in ops for t in rec.tokens)
        ]  # acknowledged, but not stored
        two_tokens = [f"{rec.rid}: {sorted(rec.tokens)}" for rec in answered if len(rec.tokens) > 1]
        wrong_token = [
            rec.rid
            for rec in answered
            if len(rec.tokens) == 1 and by_rid.get(rec.rid, []) != list(rec.tokens)
        ]
        dup_rids = [f"{rid}: {len(ids)} operations" for rid, ids in by_rid.items() if len(ids) > 1]
        phantoms = [i for i, r in ops.items() if r["request_id"] not in attempted]
        distinct_rids = len(attempted)
        checks.append(
            Check(
                name="operations started (distinct request ids)",
                value=distinct_rids,
                expected=str(cfg.ops),
                ok=distinct_rids == cfg.ops,
            )
        )
        checks.append(
            Check(
                name="operations stored",
                value=len(ops),
                expected=f"= {distinct_rids} request ids",
                ok=len(ops) == distinct_rids,
            )
        )
        check("starts never answered (gave up)", unanswered)
        check("starts rejected (4xx other than 424)", rejected)
        check("lost (answered, not stored)", lost)
        check("request ids answered with 2+ tokens", two_tokens)
        check("request ids stored under another id", wrong_token)
        check("request ids stored twice", dup_rids)
        check("stored operations nobody started", phantoms)

        not_terminal, terminal_events_bad, unexpected = [], [], []
        cb_rows_bad, cb_not_delivered, cb_never_received, cb_many_ids = [], [], [], []
        cb_id_mismatch, cb_state_mismatch, cb_after_sync, sync_mismatch = [], [], [], []
        answered_sync = {t for rec in answered if rec.status in (200, 424) for t in rec.tokens}
        answered_tokens = {t for rec in answered for t in rec.tokens}
        for op_id, r in ops.items():
            events, cbs = details[op_id]
            kinds = [e["kind"] for e in events]
            # A start answered synchronously (200/424) gets no callback (Nexus: callbacks are
            # for async operations only); every other operation gets exactly one.
            sync = any((e.get("data") or {}).get("answered") == "sync" for e in events)
            if op_id in answered_tokens and sync != (op_id in answered_sync):
                sync_mismatch.append(f"{op_id}: closed sync={sync}, answered 200/424={not sync}")
            term = [k for k in kinds if k in TERMINAL_EVENTS]
            if r["state"] == "running":
                not_terminal.append(op_id)
            if len(term) != 1:
                terminal_events_bad.append(f"{op_id}: {term}")
            exp_state, exp_event = EXPECTED[r["operation"]]
            if r["state"] != exp_state or term != [exp_event]:
                unexpected.append(f"{op_id} ({r['operation']}): {r['state']} {term}")
            if sync:
                if cbs or self.receiver.ids_for(op_id):
                    cb_after_sync.append(f"{op_id}: {len(cbs)} deliveries")
                continue
            if len(cbs) != 1:
                cb_rows_bad.append(f"{op_id}: {len(cbs)} deliveries")
            if any(cb["state"] != "delivered" for cb in cbs):
                cb_not_delivered.append(f"{op_id}: {[cb['state'] for cb in cbs]}")
            got = self.receiver.ids_for(op_id)
            if not got:
                cb_never_received.append(op_id)
            elif len(got) > 1:
                cb_many_ids.append(f"{op_id}: {sorted(got)}")
            if got and cbs and got != {cb["id"] for cb in cbs}:
                cb_id_mismatch.append(f"{op_id}: got {sorted(got)}, gateway {cbs[0]['id']}")
            states = {a.state for a in self.receiver.arrivals.get(op_id, [])}
            if states and states != {r["state"]}:
                cb_state_mismatch.append(f"{op_id}: {states} vs {r['state']}")
        check("operations not terminal", not_terminal)
        check("histories without exactly 1 terminal event", terminal_events_bad)
        check("unexpected outcomes", unexpected)

        effects = self.agent.effects
        dup_effects = [f"{k}: {v}" for k, v in effects.items() if v != 1]
        missing_effects = [
            i
            for i, r in ops.items()
            if r["operation"] in HAS_EFFECT
            and r["state"] == EXPECTED[r["operation"]][0]
            and effects.get(i, 0) == 0
        ]
        unknown_effects = [k for k in effects if k not in ops]
        check("duplicate agent effects (effects != 1)", dup_effects)
        check("outcomes without an agent effect", missing_effects)
        check("agent effects for unknown keys", unknown_effects)

        check("callback deliveries != 1 per async operation", cb_rows_bad)
        check("callbacks after a synchronous answer", cb_after_sync)
        check("synchronous close != synchronous answer", sync_mismatch)
        check("callbacks not delivered (gateway)", cb_not_delivered)
        check("callbacks never received", cb_never_received)
        check("callbacks with 2+ webhook-ids", cb_many_ids)
        check("webhook-id != gateway delivery id", cb_id_mismatch)
        check("callback state != operation state", cb_state_mismatch)
        n_bad = sum(self.receiver.bad_signatures.values())
        checks.append(
            Check(
                name="callbacks with a bad signature",
                value=n_bad,
                expected="0",
                ok=n_bad == 0,
                examples=[f"{r} (x{n})" for r, n in self.receiver.bad_signatures.items()],
            )
        )

        grace = cfg.lease_s + 2.0
        stuck_end = [
            f"{i}: {(now_db - r['deadline_at']).total_seconds():.1f}s past deadline"
            for i, r in ops.items()
            if r["state"] == "running"
            and r["deadline_at"] is not None
            and (now_db - r["deadline_at"]).total_seconds() > cfg.stuck_after_s
        ]
        late = []
        for i, r in ops.items():
            if r["closed_at"] is None or r["deadline_at"] is None:
                continue
            lag = (r["closed_at"] - r["deadline_at"]).total_seconds()
            d = r["deadline_at"].timestamp()
            if lag > cfg.stuck_after_s and not self.timeline.excused(
                d, d + cfg.stuck_after_s, grace
            ):
                closer = [
                    f"{e['kind']}@{self.rel(e['at'])} by {e['data'].get('owner', '?')}"
                    for e in details[i][0]
                    if e["kind"] in TERMINAL_EVENTS
                ]
                late.append(
                    f"{i} ({r['operation']}): deadline {self.rel(r['deadline_at'])}, "
                    f"closed {lag:.2f}s later; {closer}"
                )
        sampled = [
            f"{i}: {lag:.1f}s past its deadline at {when:.2f}s"
            for i, (lag, when) in sorted(self.sampled_stuck.items())
        ]
        check(f"running past deadline + {cfg.stuck_after_s:g}s (end)", stuck_end)
        check(f"running past deadline + {cfg.stuck_after_s:g}s (sampled)", sampled)
        check(f"closed later than deadline + {cfg.stuck_after_s:g}s", late)
        check("harness errors", self.harness_errors)

        # Full histories of every operation named in a failed check, for the post-mortem.
        named = {ex.split(" ", 1)[0].rstrip(":") for c in checks if not c.ok for ex in c.examples}
        problem_lists = (
            not_terminal,
            terminal_events_bad,
            unexpected,
            missing_effects,
            cb_rows_bad,
            cb_not_delivered,
            cb_never_received,
            cb_many_ids,
            cb_id_mismatch,
            cb_state_mismatch,
            stuck_end,
            late,
        )
        named |= {str(x).split(" ", 1)[0].rstrip(":") for lst in problem_lists for x in lst}
        dump = {
            i: {
                "row": {k: str(v) for k, v in dict(ops[i]).items()},
                "events": details[i][0],
                "callbacks": details[i][1],
                "receiver": [asdict(a) for a in self.receiver.arrivals.get(i, [])],
                "effects": self.agent.effects.get(i, 0),
            }
            for i in sorted(named)
            if i in ops
        }
        if dump:
            (self.workdir / "problem-histories.json").write_text(
                json.dumps(dump, indent=1, default=str)
            )

        state_counts = Counter(r["state"] for r in rows)
        timed_out = sum(
            1 for i in ops if any(e["kind"] == "operation.timed_out" for e in details[i][0])
        )
        taken_over = sum(
            1
            for i in ops
            if len(
                {e["data"].get("owner") for e in details[i][0] if e["kind"] == "attempt.started"}
            )
            > 1
        )
        arrivals = self.receiver.total_arrivals
        stats: AgentStats = self.agent_stats
        info: dict[str, Any] = {
            "distinct_request_ids": distinct_rids,
            "answered": len(answered),
            "stored": len(ops),
            "lost": len(lost),
            "start_requests": sum(rec.tries for rec in self.records),
            "start_retries": sum(rec.tries - 1 for rec in self.records),
            "starts_retried": sum(1 for rec in self.records if rec.tries > 1),
            "start_replays": sum(1 for rec in self.records if rec.replayed),
            "start_status": dict(Counter(str(rec.status) for rec in answered)),
            "start_errors": dict(
                Counter(e.split(": ", 1)[1] for rec in self.records for e in rec.errors)
            ),
            "kinds": dict(Counter(r["operation"] for r in rows)),
            "states": dict(state_counts),
            "timed_out": timed_out,
            "ops_with_2plus_attempts": sum(1 for r in rows if r["attempts"] > 1),
            "attempts_deferred_by_breaker": sum(
                1 for i in ops for e in details[i][0] if e["kind"] == "attempt.deferred"
            ),
            "ops_attempted_by_2plus_owners": taken_over,
            "agent_calls": self.agent.calls,
            "agent_effects": len(effects),
            "agent_duplicate_effects": len(dup_effects),
            "agent_overlapping_calls": self.agent.overlapping_calls,
            "agent_gate_503s": stats.gate_refusals,
            "agent_retry_laters": stats.retry_laters,
            "callback_arrivals": arrivals,
            "callback_redeliveries": arrivals - len(self.receiver.arrivals),
            "callback_refused_503": self.receiver.refused,
            "stuck_samples": self.samples,
            "replica_start_crashes": sum(len(r.start_crashes) for r in self.replicas),
            "start_http_500": sum(
                1 for rec in self.records for e in rec.errors if e.endswith("HTTP 500")
            ),
        }
        return checks, info


# -- the run ---------------------------------------------------------------------------------


async def run(cfg: ChaosConfig) -> int:
    chaos = Chaos(cfg)
    started = time.monotonic()
    failed = True
    checks: list[Check] = []
    info: dict[str, Any] = {}
    drained = False
    drain_s = 0.0
    leftover: dict[str, int] = {}
    error: str | None = None
    logs: Path | None = None
    try:
        print(
            f"swarmgate chaos ({cfg.mode}): seed={cfg.seed} replicas={cfg.replicas} "
            f"ops={cfg.ops} duration={cfg.duration_s:g}s lease={cfg.lease_s:g}s "
            f"poll={cfg.poll_s:g}s workdir={chaos.workdir}",
            flush=True,
        )
        await chaos.setup()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        load_end = t0 + cfg.duration_s
        sampler = asyncio.create_task(chaos.sample_stuck())
        faults = [
            asyncio.create_task(chaos.kill_replicas(load_end)),
            asyncio.create_task(chaos.restart_postgres(t0 + cfg.pg_restart_at * cfg.duration_s)),
            *(
                asyncio.create_task(chaos.drop_receiver(t0 + f * cfg.duration_s))
                for f in cfg.receiver_drops
            ),
        ]
        await chaos.load(load_end)
        await asyncio.gather(*faults)
        chaos.timeline.note("faults over; draining")
        drained, drain_s, leftover = await chaos.drain()
        chaos.timeline.note(f"drain {'done' if drained else 'TIMED OUT'} after {drain_s:.1f}s")
        chaos._stop_sampler.set()
        await sampler
        checks, info = await chaos.verify()
        if not drained:
            checks.append(
                Check(
                    name="drain finished in time",
                    value=str(leftover),
                    expected=f"<= {cfg.drain_timeout_s:g}s",
                    ok=False,
                )
            )
        failed = not all(c.ok for c in checks)
    except asyncio.CancelledError:
        error = "interrupted"
        raise
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
    finally:
        logs = await chaos.teardown(failed)
        if error != "interrupted":
            report(cfg, chaos, checks, info, drain_s, error, logs, time.monotonic() - started)
    if error is not None:
        return 2
    return 1 if failed else 0


def report(
    cfg: ChaosConfig,
    chaos: Chaos,
    checks: list[Check],
    info: dict[str, Any],
    drain_s: float,
    error: str | None,
    logs: Path | None,
    elapsed: float,
) -> None:
    print("\ntimeline:")
    for t, what in chaos.timeline.events:
        print(f"  {t:7.2f}s  {what}")
    faults = dict(chaos.faults)
    print(
        "\nfaults: "
        + ", ".join(f"{k}={v}" for k, v in sorted(faults.items()))
        + f"; drain {drain_s:.1f}s; elapsed {elapsed:.1f}s"
    )
    if info:
        print("\ncounts:")
        for k, v in info.items():
            print(f"  {k:32} {v}")
    if checks:
        w = max(len(c.name) for c in checks)
        print(f"\n{'check':{w}}  {'value':>8}  {'expected':<22} result")
        print("-" * (w + 42))
        for c in checks:
            print(f"{c.name:{w}}  {c.value!s:>8}  {c.expected:<22} {'ok' if c.ok else 'FAIL'}")
            for ex in c.examples:
                print(f"{'':{w}}    e.g. {ex}")
    violations = [c for c in checks if not c.ok]
    if info.get("start_http_500"):
        print(
            f"\nWARNING: the gateways answered HTTP 500 to {info['start_http_500']} start "
            "request(s); store outages should be 503 UNAVAILABLE (retried anyway)"
        )
    crashes = [c for r in chaos.replicas for c in r.start_crashes]
    if crashes:
        print(
            f"\nWARNING: {len(crashes)} gateway start(s) exited before becoming ready "
            f"(respawned); last one:\n{crashes[-1]}"
        )
    if error:
        print(f"\nHARNESS ERROR: {error}")
    verdict = "ERROR" if error else ("FAIL" if violations else "PASS")
    print(f"\nchaos {verdict}: {len(violations)} violation(s) in {len(checks)} checks")
    if logs is not None:
        print(f"logs kept in {logs}")
    if cfg.json_path is not None:
        cfg_json = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
        doc = {
            "ok": error is None and not violations,
            "verdict": verdict,
            "error": error,
            "config": cfg_json,
            "faults": faults,
            "counts": info,
            "drain_s": round(drain_s, 2),
            "elapsed_s": round(elapsed, 2),
            "checks": [asdict(c) for c in checks],
            "violations": [c.name for c in violations],
            "timeline": [[round(t, 3), w] for t, w in chaos.timeline.events],
            "logs": str(logs) if logs else None,
            "start_crash_logs": crashes,
        }
        cfg.json_path.parent.mkdir(parents=True, exist_ok=True)
        cfg.json_path.write_text(json.dumps(doc, indent=2, default=str))
