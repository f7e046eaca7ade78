"""``python -m bench.abba``: two variants of one bench command, in interleaved rounds.

    python -m bench.abba --rounds 2 \\
        --a "--gateway-env SWARMGATE_WRITE_LINGER_S=0" \\
        --b "--gateway-env SWARMGATE_WRITE_LINGER_S=0.002" \\
        -- --db postgresql --scenarios lifecycle --modes closed --concurrency 64 \\
        --duration 6 --warmup 2

Each round runs ``python -m bench COMMON VARIANT`` four times, A B B A (the next round B A A B),
so a machine that drifts within minutes weighs on both sides alike. Every run is printed as it
ends; then, per target, scenario and mode, the median of each variant over its runs, its range
(min-max: where the two ranges overlap widely, the medians are not a result), and B / A.
``--json PATH`` writes every run's figures and the summary.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# (name in the summary, path in a run's JSON under scenarios[scenario][mode])
FIGURES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("ops/s", ("throughput_per_s",)),
    ("start p50 ms", ("latency_ms", "start", "p50")),
    ("start p99 ms", ("latency_ms", "start", "p99")),
    ("e2e p50 ms", ("latency_ms", "e2e", "p50")),
    ("gateway us/op", ("cpu_us_per_op", "gateway")),
    ("postgres us/op", ("cpu_us_per_op", "postgres")),
    ("box us/op", ("cpu_us_per_op", "box")),
    ("agent us/op", ("cpu_us_per_op", "agent")),
    ("harness us/op", ("cpu_us_per_op", "harness")),
)


def order(rounds: int) -> list[str]:
    """A B B A, then B A A B, alternating: each variant runs 2 x ``rounds`` times."""
    out: list[str] = []
    for r in range(rounds):
        out += ["A", "B", "B", "A"] if r % 2 == 0 else ["B", "A", "A", "B"]
    return out


def _dig(node: Any, path: Sequence[str]) -> float | None:
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return float(node) if isinstance(node, int | float) and not isinstance(node, bool) else None


def figures(result: dict[str, Any]) -> dict[str, dict[str, float]]:
    """One bench run's figures: ``{"target/scenario/mode": {figure: value}}`` (the figures a
    run does not have, such as PostgreSQL's CPU on SQLite, are left out)."""
    out: dict[str, dict[str, float]] = {}
    for target in result.get("targets", []):
        for scenario, modes in (target.get("scenarios") or {}).items():
            for mode, run in (modes or {}).items():
                found = {name: _dig(run, path) for name, path in FIGURES}
                out[f"{target.get('name')}/{scenario}/{mode}"] = {
                    k: v for k, v in found.items() if v is not None
                }
    return out


@dataclass(frozen=True, kw_only=True)
class Summary:
    key: str
    figure: str
    a: list[float]
    b: list[float]

    @property
    def ratio(self) -> float | None:
        a = statistics.median(self.a)
        return statistics.median(self.b) / a if a else None


def summarize(runs: Iterable[tuple[str, dict[str, dict[str, float]]]]) -> list[Summary]:
    """Per key and figure, the values of each variant over its runs, in run order."""
    values: dict[tuple[str, str], dict[str, list[float]]] = {}
    for variant, found in runs:
        for key, figs in found.items():
            for figure, value in figs.items():
                values.setdefault((key, figure), {"A": [], "B": []})[variant].append(value)
    names = [name for name, _ in FIGURES]
    out = [
        Summary(key=key, figure=figure, a=v["A"], b=v["B"])
        for (key, figure), v in values.items()
        if v["A"] and v["B"]
    ]
    return sorted(out, key=lambda s: (s.key, names.index(s.figure)))


def _fmt(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.2f}"


def render(summaries: Sequence[Summary]) -> str:
    lines = [
        f"{'target/scenario/mode':36} {'figure':15} {'n':>5} {'A median':>10} "
        f"{'A range':>17} {'B median':>10} {'B range':>17} {'B/A':>6}"
    ]
    for s in summaries:
        ratio = "-" if s.ratio is None else f"{s.ratio:.3f}"
        lines.append(
            f"{s.key:36} {s.figure:15} {f'{len(s.a)}+{len(s.b)}':>5} "
            f"{_fmt(statistics.median(s.a)):>10} "
            f"{_fmt(min(s.a)) + '-' + _fmt(max(s.a)):>17} "
            f"{_fmt(statistics.median(s.b)):>10} "
            f"{_fmt(min(s.b)) + '-' + _fmt(max(s.b)):>17} {ratio:>6}"
        )
    return "\n".join(lines)


def run_bench(args: Sequence[str], workdir: Path, n: int) -> dict[str, Any]:
    out = workdir / f"run-{n}.json"
    cmd = [sys.executable, "-m", "bench", *args, "--quiet", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(
            f"bench failed ({proc.returncode}): {shlex.join(cmd)}\n{proc.stderr[-2000:]}"
        )
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.abba", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=2, help="rounds of four runs (default 2)")
    p.add_argument("--a", default="", help="variant A: bench arguments, one shell-quoted string")
    p.add_argument("--b", default="", help="variant B: bench arguments, one shell-quoted string")
    p.add_argument("--json", dest="json_path", type=Path, help="write the runs and the summary")
    p.add_argument("common", nargs=argparse.REMAINDER, help="-- then the arguments of both")
    return p


def _joined(argv: Sequence[str]) -> list[str]:
    """``--a VALUE`` as ``--a=VALUE``: a variant's value starts with ``--`` itself, which
    argparse would take for an option of its own."""
    out: list[str] = []
    it = iter(argv)
    for arg in it:
        if arg == "--":
            out.append(arg)
            out.extend(it)
            break
        if arg in ("--a", "--b"):
            out.append(f"{arg}={next(it, '')}")
        else:
            out.append(arg)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    opts = parser().parse_args(_joined(sys.argv[1:] if argv is None else argv))
    common = opts.common[1:] if opts.common[:1] == ["--"] else opts.common
    if opts.rounds < 1:
        raise SystemExit("--rounds must be at least 1")
    if opts.a == opts.b:
        raise SystemExit("--a and --b are the same: nothing to compare")
    variants = {"A": shlex.split(opts.a), "B": shlex.split(opts.b)}
    runs: list[tuple[str, dict[str, dict[str, float]]]] = []
    log: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="sg-abba-") as tmp:
        for n, variant in enumerate(order(opts.rounds)):
            result = run_bench([*common, *variants[variant]], Path(tmp), n)
            found = figures(result)
            runs.append((variant, found))
            stamp = time.strftime("%H:%M:%S", time.gmtime())
            log.append({"at": stamp, "variant": variant, "figures": found})
            for key, figs in found.items():
                shown = "  ".join(f"{k} {_fmt(v)}" for k, v in figs.items())
                print(f"[{stamp}] {variant} {key}: {shown}", flush=True)
    summaries = summarize(runs)
    print(f"A: {opts.a or '(no arguments)'}\nB: {opts.b or '(no arguments)'}")
    print(f"both: {shlex.join(common)}")
    print(render(summaries))
    if opts.json_path is not None:
        summary = [
            {"key": s.key, "figure": s.figure, "a": s.a, "b": s.b, "ratio": s.ratio}
            for s in summaries
        ]
        doc = {"a": opts.a, "b": opts.b, "common": common, "runs": log, "summary": summary}
        opts.json_path.write_text(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
