"""Load drivers: closed loop (N workers back to back) and open loop (fixed arrival rate).

Every unit of work gets an *intended* start time. In the closed loop it is the moment the
worker issues it; in the open loop it is ``t0 + i / rate`` whatever happens, and all latencies
are measured from it, so a stalled system cannot hide its queueing delay (no coordinated
omission). The open loop bounds the number of outstanding units; a unit that has to wait for
a free slot still counts its wait in its latency.

A run is ``warmup`` seconds (discarded) followed by ``duration`` measured seconds. Throughput is
the number of successful units *finished* inside the measured window divided by its length;
latencies are those of the units *intended to start* inside it. Units still outstanding when
the window closes are awaited (each is bounded by its own timeout) before the run returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

from bench.stats import summarize


@dataclass
class Sample:
    intended: float  # perf_counter() at which the unit was meant to start
    done: float  # perf_counter() at which it finished (success or failure)
    ok: bool
    lat: dict[str, float] = field(default_factory=dict)  # name -> seconds since ``intended``
    error: str | None = None


OpFn = Callable[[int, float], Awaitable[Sample]]
Hook = Callable[[], Any]


@dataclass
class Window:
    start: float
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start


@dataclass
class RunResult:
    mode: str
    window: Window
    samples: list[Sample]
    offered: int  # units issued in total (warmup included)
    params: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        w = self.window
        in_window = [s for s in self.samples if w.start <= s.intended < w.end]
        ok = [s for s in in_window if s.ok]
        finished = sum(1 for s in self.samples if s.ok and w.start <= s.done < w.end)
        names: list[str] = []
        for s in ok:
            for k in s.lat:
                if k not in names:
                    names.append(k)
        errors: dict[str, int] = {}
        for s in in_window:
            if not s.ok:
                key = (s.error or "error")[:120]
                errors[key] = errors.get(key, 0) + 1
        last = max((s.done for s in ok), default=w.start)
        return {
            "mode": self.mode,
            **self.params,
            "measured_s": round(w.seconds, 3),
            "offered": self.offered,
            "ok": len(ok),
            "errors": sum(errors.values()),
            "errors_outside_window": sum(
                1 for s in self.samples if not s.ok and not (w.start <= s.intended < w.end)
            ),
            "error_kinds": dict(sorted(errors.items(), key=lambda kv: -kv[1])[:5]),
            "throughput_per_s": round(finished / w.seconds, 1) if w.seconds > 0 else 0.0,
            # the window's units over the time until the last of them finished (open loop:
            # below the offered rate when the system falls behind)
            "achieved_per_s": round(len(ok) / (last - w.start), 1) if last > w.start else 0.0,
            "latency_ms": {n: summarize([s.lat[n] for s in ok if n in s.lat]) for n in names},
        }


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic garbage collection in the load generator while a run's clock runs.

    The samples of a run are long-lived objects that grow by thousands a second, so Python
    scans its whole heap every few seconds: measured in the open-loop heartbeat bench (10,000
    operations, 2,000 calls/s), a 100-116 ms pause of this process every ~17 s, each charged
    to the calls it delayed (p99 36-100 ms where the gateway's own is ~10 ms). A run is
    bounded in length and its garbage is freed by reference counting; the collector catches up
    when the run ends. ``gc.freeze()`` first keeps the set-up objects out of that last scan.
    """
    was_enabled = gc.isenabled()
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
        gc.unfreeze()


P = ParamSpec("P")
R = TypeVar("R")


def without_collector(fn: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Awaitable[R]]:
    """A load loop that runs under ``collector_paused``."""

    @functools.wraps(fn)
    async def run(*args: P.args, **kwargs: P.kwargs) -> R:
        with collector_paused():
            return await fn(*args, **kwargs)

    return run


async def _marks(window: Window, on_measure: Hook | None, on_end: Hook | None) -> None:
    await asyncio.sleep(max(0.0, window.start - time.perf_counter()))
    if on_measure is not None:
        on_measure()
    await asyncio.sleep(max(0.0, window.end - time.perf_counter()))
    if on_end is not None:
        on_end()


@without_collector
async def closed_loop(
    op: OpFn,
    *,
    concurrency: int,
    warmup_s: float,
    duration_s: float,
    on_measure: Hook | None = None,
    on_end: Hook | None = None,
) -> RunResult:
    t0 = time.perf_counter()
    window = Window(t0 + warmup_s, t0 + warmup_s + duration_s)
    samples: list[Sample] = []
    counter = 0

    async def worker() -> None:
        nonlocal counter
        while time.perf_counter() < window.end:
            seq = counter
            counter += 1
            samples.append(await op(seq, time.perf_counter()))

    marks = asyncio.create_task(_marks(window, on_measure, on_end))
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    await marks
    return RunResult(
        mode="closed",
        window=window,
        samples=samples,
        offered=counter,
        params={"concurrency": concurrency},
    )


@without_collector
async def open_loop(
    op: OpFn,
    *,
    rate: float,
    warmup_s: float,
    duration_s: float,
    max_outstanding: int,
    on_measure: Hook | None = None,
    on_end: Hook | None = None,
) -> RunResult:
    t0 = time.perf_counter()
    window = Window(t0 + warmup_s, t0 + warmup_s + duration_s)
    samples: list[Sample] = []
    slots = asyncio.Semaphore(max_outstanding)
    tasks: set[asyncio.Task[None]] = set()
    waited_for_slot = 0

    async def unit(seq: int, intended: float) -> None:
        try:
            samples.append(await op(seq, intended))
        finally:
            slots.release()

    marks = asyncio.create_task(_marks(window, on_measure, on_end))
    seq = 0
    while True:
        intended = t0 + seq / rate
        if intended >= window.end:
            break
        delay = intended - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if slots.locked():
            waited_for_slot += 1
        await slots.acquire()
        task = asyncio.create_task(unit(seq, intended))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        seq += 1
    if tasks:
        await asyncio.gather(*tasks)
    await marks
    return RunResult(
        mode="open",
        window=window,
        samples=samples,
        offered=seq,
        params={
            "rate_per_s": rate,
            "max_outstanding": max_outstanding,
            "waited_for_slot": waited_for_slot,
        },
    )
