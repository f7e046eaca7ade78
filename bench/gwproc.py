"""``python -m gateway.cli serve`` plus a watchdog, so a benchmark gateway stops by itself.

    python -m bench.gwproc [--max-seconds 3600]

Runs the unmodified gateway CLI (``serve``, settings from ``SWARMGATE_*``) in this process;
a daemon thread sends SIGTERM to it when standard input closes (the harness died or is done)
or after ``--max-seconds``, and hard-exits if the graceful stop hangs.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time

from gateway.cli import main as gateway_main


def _terminate_after(grace_s: float) -> None:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(grace_s)
    os._exit(3)


def start_watchdog(max_seconds: float, grace_s: float = 20.0) -> None:
    def on_eof() -> None:
        try:
            while sys.stdin.buffer.read(4096):
                pass
        except (OSError, ValueError):
            pass
        _terminate_after(grace_s)

    def on_deadline() -> None:
        time.sleep(max_seconds)
        _terminate_after(grace_s)

    threading.Thread(target=on_eof, name="bench-stdin-watch", daemon=True).start()
    threading.Thread(target=on_deadline, name="bench-deadline", daemon=True).start()


def start_tracemalloc(spec: str) -> None:
    """``SWARMGATE_DEBUG_TRACEMALLOC=DIR[,SECONDS[,FRAMES]]``: trace allocations and write a
    snapshot to ``DIR/snap-<pid>-<n>.tracemalloc`` every SECONDS (default 30) from a thread,
    for a diff of where a growing RSS goes (``python -m bench.memdiff DIR``). Diagnosis only:
    tracing makes every allocation slower, so never measure speed with it on."""
    import tracemalloc
    from pathlib import Path

    parts = spec.split(",")
    out = Path(parts[0])
    every_s = float(parts[1]) if len(parts) > 1 and parts[1] else 30.0
    frames = int(parts[2]) if len(parts) > 2 and parts[2] else 8
    out.mkdir(parents=True, exist_ok=True)
    tracemalloc.start(frames)

    def dump() -> None:
        n = 0
        while True:
            time.sleep(every_s)
            snap = tracemalloc.take_snapshot()
            snap.dump(str(out / f"snap-{os.getpid()}-{n:04d}.tracemalloc"))
            n += 1

    threading.Thread(target=dump, name="bench-tracemalloc", daemon=True).start()


def log_gc_pauses(path: str, at_least_ms: float = 5.0) -> None:
    """``SWARMGATE_DEBUG_GC_PAUSES=FILE``: append one line per cyclic-GC collection of this
    process that took ``at_least_ms`` or more: ``perf_counter() at its start, milliseconds,
    generation, objects collected`` (``perf_counter`` is the system's monotonic clock, so a
    harness can line the pauses up with its own samples). Diagnosis of latency spikes."""
    import gc

    out = open(path, "a", buffering=1)  # open for the process's lifetime
    started = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
            return
        ms = (time.perf_counter() - started[0]) * 1000
        if ms >= at_least_ms:
            out.write(f"{started[0]:.6f} {ms:.1f} {info['generation']} {info['collected']}\n")

    gc.callbacks.append(on_gc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gwproc")
    parser.add_argument("--max-seconds", type=float, default=3600.0)
    args = parser.parse_args(argv)
    start_watchdog(args.max_seconds)
    spec = os.environ.get("SWARMGATE_DEBUG_TRACEMALLOC")
    if spec:
        start_tracemalloc(spec)
    pauses = os.environ.get("SWARMGATE_DEBUG_GC_PAUSES")
    if pauses:
        log_gc_pauses(pauses)
    return gateway_main(["serve"])


if __name__ == "__main__":
    sys.exit(main())
