"""Latency summaries and process probes (RSS, CPU time) for the benchmark harness."""

from __future__ import annotations

import asyncio
import math
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

PERCENTILES = (50.0, 90.0, 95.0, 99.0, 99.9)
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of already sorted values (0.0 for an empty list)."""
    if not sorted_values:
        return 0.0
    rank = math.ceil(p / 100.0 * len(sorted_values))
    return sorted_values[min(len(sorted_values), max(1, rank)) - 1]


def summarize(seconds: Sequence[float]) -> dict[str, float]:
    """p50/p90/p95/p99/p99.9/max/mean in milliseconds, plus the sample count."""
    values = sorted(seconds)
    out: dict[str, float] = {"count": float(len(values))}
    for p in PERCENTILES:
        key = "p" + (f"{p:g}".replace(".", "_"))
        out[key] = round(percentile(values, p) * 1000.0, 3)
    out["max"] = round(values[-1] * 1000.0, 3) if values else 0.0
    out["mean"] = round(statistics.fmean(values) * 1000.0, 3) if values else 0.0
    return out


def median_of(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else 0.0


def median_summary(summaries: Sequence[dict[str, float]]) -> dict[str, float]:
    """Per-key median over repeats (each repeat summarized on its own)."""
    if not summaries:
        return {}
    keys = summaries[0].keys()
    return {k: round(median_of([s.get(k, 0.0) for s in summaries]), 3) for k in keys}


def rss_kb(pid: int) -> int | None:
    """VmRSS of a process in KiB (None when it is gone or /proc is unavailable)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (a gateway with worker processes)."""
    children: dict[int, list[int]] = {}
    try:
        entries = [e for e in os.listdir("/proc") if e.isdigit()]
    except OSError:
        return [pid]
    for entry in entries:
        try:
            with open(f"/proc/{entry}/stat") as f:
                raw = f.read()
        except OSError:
            continue
        ppid = int(raw[raw.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def tree_rss_kb(pid: int) -> int | None:
    """VmRSS summed over a process and its descendants."""
    sizes = [rss_kb(p) for p in process_tree(pid)]
    known = [s for s in sizes if s is not None]
    return sum(known) if known else None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (all its threads) in seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            raw = f.read()
    except OSError:
        return None
    # the command name may contain spaces: fields start after the closing parenthesis
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


_PG_SHARED = (
    "checkpointer",
    "background writer",
    "walwriter",
    "autovacuum launcher",
    "logical replication launcher",
    "archiver",
    "stats collector",
)


def pg_pids(dbname: str) -> tuple[list[int], list[int]]:
    """PostgreSQL processes on this machine, by their titles: (the backends and autovacuum
    workers of ``dbname``, the server's shared processes). Other databases' backends (other
    users of the same server) are in neither."""
    own: list[int] = []
    shared: list[int] = []
    for pid in _postgres_pids():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                title = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if not title.startswith("postgres:"):
            shared.append(pid)  # the postmaster
            continue
        rest = title.split(": ", 2)[-1]  # after "postgres: 15/main: "
        if rest.startswith(_PG_SHARED):
            shared.append(pid)
        elif f" {dbname} " in f" {rest} ":
            own.append(pid)
    return own, shared


def postgres_cpu_by_pid(database: str | None = None) -> dict[int, float]:
    """CPU seconds of each process named ``postgres`` on this machine: every one, or with
    ``database`` the server, its shared processes and that database's backends only (other
    work on a shared server, such as a test suite, is left out; it still shares the WAL
    writer and checkpointer)."""
    if database is None:
        pids = _postgres_pids()
    else:
        own, shared = pg_pids(database)
        pids = own + shared
    return cpu_by_pid(pids)


def cpu_by_pid(pids: Sequence[int]) -> dict[int, float]:
    """CPU seconds of each of ``pids`` that can be read now (a process gone is left out)."""
    out: dict[int, float] = {}
    for pid in pids:
        secs = cpu_seconds(pid)
        if secs is not None:
            out[pid] = secs
    return out


def _postgres_pids() -> list[int]:
    pids: list[int] = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return pids
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as f:
                if f.read().strip() == "postgres":
                    pids.append(int(entry))
        except OSError:
            continue
    return pids


def postgres_cpu_seconds(database: str | None = None) -> float | None:
    """The sum of :func:`postgres_cpu_by_pid` (None: no PostgreSQL process found)."""
    found = postgres_cpu_by_pid(database)
    return sum(found.values()) if found else None


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds spent between two per-process readings: per process, so one that exits in
    between takes away only what it did after the first reading (lost), never what it did
    before (which would make the sum negative); one that started counts whole."""
    return sum(secs - before.get(pid, 0.0) for pid, secs in after.items())


def system_busy() -> tuple[float, float] | None:
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            parts = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
    return float(sum(parts) - idle), float(sum(parts))


@dataclass(frozen=True)
class ProcessTree:
    """A process and its descendants, as read at each reading (see :class:`CpuMeter`)."""

    root: int


class CpuMeter:
    """CPU use of a few processes over an interval, as percent of one core; ``postgres`` is
    all PostgreSQL processes together, ``system`` the whole machine (100 = all cores busy).

    Each name is one process (a pid) or a :class:`ProcessTree`, read anew at the start and
    at the stop; either is counted per process, so a worker that a supervisor starts again
    in between counts with its new pid, and the pids gone at the stop are in :attr:`lost` (a
    restarted worker shows there instead of as negative CPU)."""

    def __init__(
        self,
        roots: dict[str, int | ProcessTree],
        *,
        postgres: bool = False,
        pg_database: str | None = None,
    ) -> None:
        self.roots = roots
        self.postgres = postgres
        self.pg_database = pg_database
        self.lost: dict[str, list[int]] = {}
        # per process of a tree, busiest first (percent of one core): how the workers shared it
        self.by_process: dict[str, list[float]] = {}
        self._start: dict[str, dict[int, float]] = {}
        self._pg_start: dict[int, float] = {}
        self._sys: tuple[float, float] | None = None
        self._t0 = 0.0

    def _read(self) -> dict[str, dict[int, float]]:
        return {name: _cpu_by_pid(what) for name, what in self.roots.items()}

    def start(self, now: float) -> None:
        self._t0 = now
        self._start = self._read()
        if self.postgres:
            self._pg_start = postgres_cpu_by_pid(self.pg_database)
        self._sys = system_busy()

    def stop(self, now: float) -> dict[str, float]:
        wall = max(1e-9, now - self._t0)
        out: dict[str, float] = {}
        after_all = self._read()
        if self.postgres:
            pg_after = postgres_cpu_by_pid(self.pg_database)
            if pg_after:
                out["postgres"] = round(100.0 * cpu_delta(self._pg_start, pg_after) / wall, 1)
        self.lost = {}
        for name, after in after_all.items():
            before = self._start.get(name, {})
            gone = sorted(set(before) - set(after))
            if gone:
                self.lost[name] = gone
            # per process, as cpu_delta counts them: one that started in between counts whole
            shares = [100.0 * (secs - before.get(pid, 0.0)) / wall for pid, secs in after.items()]
            if after:
                out[name] = round(sum(shares), 1)
            if isinstance(self.roots[name], ProcessTree):
                self.by_process[name] = sorted((round(x, 1) for x in shares), reverse=True)
        sys_now = system_busy()
        if self._sys is not None and sys_now is not None and sys_now[1] > self._sys[1]:
            busy = (sys_now[0] - self._sys[0]) / (sys_now[1] - self._sys[1])
            out["system"] = round(100.0 * busy, 1)
        return out


def _cpu_by_pid(what: int | ProcessTree) -> dict[int, float]:
    """CPU seconds of a process or of each process of a tree, by pid (the ones readable now)."""
    return cpu_by_pid(process_tree(what.root) if isinstance(what, ProcessTree) else [what])


def jsonable(value: Any) -> Any:
    """Round floats for stable, readable JSON."""
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


# What one operation costs in CPU, from the percentages above: "box" is what the issue calls the
# box's CPU per operation, the system under test and its agent (gateway + echo agent +
# PostgreSQL); the harness (load generator and callback receiver) is reported apart.
BOX_PARTS = ("gateway", "agent", "postgres")


def cpu_us_per_op(cpu_pct: dict[str, float], per_s: float) -> dict[str, float]:
    """Microseconds of CPU per unit of work for each measured process, plus ``box``."""
    if per_s <= 0:
        return {}
    out = {k: round(v * 1e4 / per_s, 1) for k, v in cpu_pct.items() if k != "system"}
    parts = [out[k] for k in BOX_PARTS if k in out]
    if parts:
        out["box"] = round(sum(parts), 1)
    return out


def slope_per_min(points: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, value) points, in value units per minute."""
    if len(points) < 2:
        return None
    mx = statistics.fmean(t for t, _ in points)
    my = statistics.fmean(v for _, v in points)
    var = sum((t - mx) ** 2 for t, _ in points)
    if var <= 0:
        return None
    return 60.0 * sum((t - mx) * (v - my) for t, v in points) / var


class RssSampler:
    """The gateway's RSS (the process and its workers) every ``interval_s`` seconds.

    ``summary(measure_from_s)`` gives the series, start / end / max and the slope in MB per
    minute over the second half of the measured part (after warm-up), where a leak shows as
    a steady climb and start-up growth (allocator arenas, caches filling) has settled."""

    def __init__(self, pid: int, interval_s: float) -> None:
        self.pid = pid
        self.interval_s = max(0.05, interval_s)
        self.points: list[tuple[float, int]] = []
        self._t0 = 0.0

    def sample(self, now: float) -> None:
        kb = tree_rss_kb(self.pid)
        if kb is not None:
            self.points.append((round(now - self._t0, 2), kb))

    async def run(self) -> None:
        """Sample until cancelled (the first sample at once)."""
        self._t0 = time.perf_counter()
        while True:
            self.sample(time.perf_counter())
            await asyncio.sleep(self.interval_s)

    def summary(self, measure_from_s: float) -> dict[str, Any]:
        pts = self.points
        if not pts:
            return {"interval_s": self.interval_s, "series": []}
        measured = [p for p in pts if p[0] >= measure_from_s] or pts
        half = measured[0][0] + (measured[-1][0] - measured[0][0]) / 2.0
        second = [(t, kb / 1024.0) for t, kb in measured if t >= half]
        whole = [(t, kb / 1024.0) for t, kb in measured]
        s2, s1 = slope_per_min(second), slope_per_min(whole)
        return {
            "interval_s": self.interval_s,
            "start_kb": measured[0][1],
            "end_kb": measured[-1][1],
            "max_kb": max(kb for _, kb in measured),
            "slope_mb_per_min_second_half": round(s2, 3) if s2 is not None else None,
            "slope_mb_per_min_measured": round(s1, 3) if s1 is not None else None,
            "measure_from_s": measure_from_s,
            "series": [[t, kb] for t, kb in pts],  # seconds since the run began, KiB
        }
