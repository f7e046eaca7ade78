"""``python -m bench``: durable-vs-direct benchmark of a real gateway subprocess on loopback.

    python -m bench --db both --duration 10 --concurrency 32 --json bench.json
    python -m bench --db sqlite --preload 100000 --scenarios lifecycle
    python -m bench --profile --scenarios lifecycle --modes closed

Measures, in the same run and per database target: the direct baseline (caller -> echo
agent), the durable start (201 after commit) and the complete lifecycle (start -> dispatch ->
result -> callback delivered), closed loop and open loop, and the ratios durable/baseline.
Prints a table (stdout) and writes JSON (``--json PATH``, or ``--json -`` for stdout).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import uvloop

from bench.procs import add_gateway_env_argument, parse_gateway_env
from bench.report import render
from bench.runner import Options, run, targets_for
from bench.scenarios import SCENARIOS
from bench.stats import jsonable

PG_ADMIN = os.environ.get(
    "SWARMGATE_BENCH_PG",
    os.environ.get("SWARMGATE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres"),
)


def _csv(allowed: tuple[str, ...]) -> Callable[[str], tuple[str, ...]]:
    def parse(value: str) -> tuple[str, ...]:
        items = tuple(v.strip() for v in value.split(",") if v.strip())
        bad = [v for v in items if v not in allowed]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"choose from {','.join(allowed)} (got {value!r})")
        return items

    return parse


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--db", choices=("sqlite", "postgresql", "both"), default="sqlite")
    p.add_argument(
        "--sqlite-sync",
        type=_csv(("FULL", "NORMAL", "full", "normal")),
        default=("FULL", "NORMAL"),
        help="SQLite synchronous settings to measure (comma list; default FULL,NORMAL)",
    )
    p.add_argument(
        "--scenarios",
        type=_csv(SCENARIOS),
        default=SCENARIOS,
        help="comma list of " + ",".join(SCENARIOS),
    )
    p.add_argument(
        "--modes", type=_csv(("closed", "open")), default=("closed", "open"), help="closed,open"
    )
    p.add_argument("--concurrency", type=int, default=32, help="closed-loop workers")
    p.add_argument(
        "--rate",
        default="auto",
        help="open-loop arrivals per second, or 'auto' (default): --rate-fraction x the "
        "closed-loop durable throughput measured just before on the same database",
    )
    p.add_argument("--rate-fraction", type=float, default=0.5)
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per run")
    p.add_argument("--warmup", type=float, default=1.0, help="discarded seconds before each run")
    p.add_argument("--repeat", type=int, default=1, help="runs per scenario; medians reported")
    p.add_argument("--payload-bytes", type=int, default=64)
    p.add_argument(
        "--preload", type=int, default=0, help="finished operations inserted before measuring"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="gateway worker processes on the PostgreSQL target (SWARMGATE_WORKERS)",
    )
    p.add_argument(
        "--auth",
        choices=("none", "hs256"),
        default="none",
        help="hs256: the gateway verifies a bearer JWT on every request, as in production",
    )
    p.add_argument(
        "--rss-interval",
        type=float,
        default=0.0,
        metavar="S",
        help="sample the gateway's RSS every S seconds during each run: series, start/end and "
        "the slope (MB/min) over the second half of the measured window",
    )
    p.add_argument(
        "--side-rate",
        type=float,
        default=0.0,
        metavar="R",
        help="during lifecycle runs, R requests/s of a demanding user: info, result and "
        "operation reads, long-polls that time out, SSE clients that disconnect",
    )
    p.add_argument(
        "--callers",
        type=int,
        default=1,
        help="with --auth hs256: this many distinct callers (JWT subjects), unit seq %% N",
    )
    p.add_argument(
        "--hold-s", type=float, default=2.0, help="run time of the side load's held operations"
    )
    p.add_argument(
        "--receiver",
        choices=("raw", "aiohttp"),
        default="raw",
        help="the callback receiver's server in this process: raw (httptools, lean) or aiohttp",
    )
    p.add_argument(
        "--gateway-root",
        type=Path,
        help="run the gateway of this checkout (its .venv), e.g. the base of a before/after",
    )
    add_gateway_env_argument(p)
    p.add_argument("--max-outstanding", type=int, default=1024, help="open-loop in-flight cap")
    p.add_argument("--op-timeout", type=float, default=30.0, help="per unit of work, seconds")
    p.add_argument("--pg-admin", default=PG_ADMIN, help="admin DSN for throw-away databases")
    p.add_argument("--profile", action="store_true", help="py-spy the gateway (lifecycle load)")
    p.add_argument("--profile-rate", type=int, default=100, help="py-spy samples per second")
    p.add_argument("--profile-dir", type=Path, help="keep py-spy raw stacks here")
    p.add_argument("--workdir", type=Path, help="keep databases and logs here (default: temp)")
    p.add_argument("--json", dest="json_path", help="write the JSON result here ('-': stdout)")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return p


def _gateway_env(p: argparse.ArgumentParser, pairs: list[str]) -> dict[str, str]:
    try:
        return parse_gateway_env(pairs)
    except ValueError as exc:
        p.error(str(exc))


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    try:
        rate = None if args.rate == "auto" else float(args.rate)
    except ValueError:
        rate = -1.0
    if args.duration <= 0 or args.concurrency < 1 or args.repeat < 1 or (rate or 1) <= 0:
        print("duration, concurrency, rate and repeat must be positive", file=sys.stderr)
        return 2
    opts = Options(
        targets=targets_for(args.db, tuple(s.upper() for s in args.sqlite_sync)),
        scenarios=tuple(s for s in SCENARIOS if s in args.scenarios),
        modes=tuple(m for m in ("closed", "open") if m in args.modes),
        concurrency=args.concurrency,
        rate=rate,
        rate_fraction=args.rate_fraction,
        duration_s=args.duration,
        warmup_s=max(0.0, args.warmup),
        repeat=args.repeat,
        payload_bytes=args.payload_bytes,
        preload=max(0, args.preload),
        max_outstanding=max(1, args.max_outstanding),
        op_timeout_s=args.op_timeout,
        pg_admin=args.pg_admin,
        profile=args.profile,
        profile_rate=args.profile_rate,
        workdir=args.workdir,
        profile_dir=args.profile_dir,
        quiet=args.quiet,
        workers=max(1, args.workers),
        auth=args.auth,
        rss_interval_s=max(0.0, args.rss_interval),
        side_rate=max(0.0, args.side_rate),
        callers=max(1, args.callers),
        hold_s=max(0.0, args.hold_s),
        receiver=args.receiver,
        gateway_root=args.gateway_root.resolve() if args.gateway_root else None,
        gateway_env=_gateway_env(p, args.gateway_env),
    )
    result = jsonable(uvloop.run(run(opts)))
    text = json.dumps(result, indent=2)
    if args.json_path == "-":
        print(text)
        print(render(result), file=sys.stderr)
    else:
        if args.json_path:
            Path(args.json_path).write_text(text + "\n")
        print(render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
