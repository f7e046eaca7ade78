"""``python -m tests.chaos [--short|--long] [--replicas N] [--ops N] [--duration S]
[--seed S] [--json PATH] [--no-scenarios | --scenarios-only [--scenario NAME ...]]``

The main run (replicas, kills, a PostgreSQL restart, a receiver outage), then the targeted
scenarios of ``tests/chaos/scenarios.py`` (kill -9 between commit and answer with an
Idempotency-Key, a frozen replica, a fault proxy, a full disk)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import random
import signal
import sys
from pathlib import Path

from tests.chaos.harness import ChaosConfig, preset, run
from tests.chaos.scenarios import SCENARIOS, run_scenarios


def parse(argv: list[str] | None) -> ChaosConfig:
    p = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--short", action="store_true", help="bounded CI form (default)")
    size.add_argument("--long", action="store_true", help="longer local form")
    p.add_argument("--replicas", type=int, help="gateway replicas (default 3)")
    p.add_argument("--ops", type=int, help="operations to start")
    p.add_argument("--duration", type=float, help="seconds of load + faults")
    p.add_argument("--seed", type=int, help="random seed (default: random, printed)")
    p.add_argument("--json", type=Path, help="write the counts and checks as JSON here")
    p.add_argument(
        "--pg-mode", choices=("fast", "immediate"), help="pg_ctl restart mode (default fast)"
    )
    p.add_argument("--keep", action="store_true", help="keep the logs even when all is well")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--no-scenarios", action="store_true", help="the main run only")
    which.add_argument("--scenarios-only", action="store_true", help="the scenarios only")
    p.add_argument(
        "--scenario", action="append", choices=sorted(SCENARIOS), help="run only these scenarios"
    )
    args = p.parse_args(argv)
    global SELECTION
    SELECTION = Selection(
        main=not args.scenarios_only, scenarios=not args.no_scenarios, names=args.scenario
    )
    cfg = preset("long" if args.long else "short")
    changes: dict[str, object] = {
        "seed": args.seed if args.seed is not None else random.randrange(1, 1_000_000),
        "json_path": args.json,
        "keep": args.keep,
    }
    if args.replicas is not None:
        if args.replicas < 1:
            p.error("--replicas must be at least 1")
        changes["replicas"] = args.replicas
    if args.ops is not None:
        if args.ops < 1:
            p.error("--ops must be at least 1")
        changes["ops"] = args.ops
    if args.duration is not None:
        if args.duration <= 0:
            p.error("--duration must be positive")
        changes["duration_s"] = args.duration
    if args.pg_mode:
        changes["pg_mode"] = args.pg_mode
    return dataclasses.replace(cfg, **changes)  # type: ignore[arg-type]


@dataclasses.dataclass(frozen=True)
class Selection:
    main: bool = True
    scenarios: bool = True
    names: list[str] | None = None


SELECTION = Selection()


async def _both(cfg: ChaosConfig) -> int:
    rc = await run(cfg) if SELECTION.main else 0
    if not SELECTION.scenarios:
        return rc
    outcomes = await run_scenarios(SELECTION.names)
    failed = [o for o in outcomes if not o.ok]
    print(
        f"chaos scenarios {'PASS' if not failed else 'FAIL'}: "
        f"{len(outcomes) - len(failed)}/{len(outcomes)} ok"
        + "".join(f"; {o.name} skipped" for o in outcomes if o.skipped),
        flush=True,
    )
    if cfg.json_path is not None:
        path = cfg.json_path.with_name(cfg.json_path.stem + ".scenarios.json")
        path.write_text(json.dumps([dataclasses.asdict(o) for o in outcomes], indent=2))
    return rc or (1 if failed else 0)


async def _main(cfg: ChaosConfig) -> int:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, task.cancel)
    try:
        return await asyncio.wait_for(_both(cfg), cfg.hard_limit_s + 120.0)
    except TimeoutError:
        print(f"chaos ERROR: hard time limit of {cfg.hard_limit_s:g}s reached", flush=True)
        return 2
    except asyncio.CancelledError:
        print("chaos: interrupted; everything was stopped", flush=True)
        return 130


def main(argv: list[str] | None = None) -> int:
    cfg = parse(argv)
    try:
        return asyncio.run(_main(cfg))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
