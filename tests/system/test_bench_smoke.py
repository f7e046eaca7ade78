"""Smoke test of the benchmark harness: a very short SQLite run, JSON shape, non-zero work."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.scenarios import SCENARIOS
from gateway.testing import ROOT


def run_module(
    module: str, tmp_path: Path, *args: str, timeout_s: float
) -> tuple[str, dict[str, Any]]:
    """``python -m MODULE --json F ARGS``; its stdout and its JSON."""
    out = tmp_path / f"{module}.json"
    proc = subprocess.run(
        [sys.executable, "-m", module, "--json", str(out), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, json.loads(out.read_text())


def run_bench(tmp_path: Path, *args: str, timeout_s: float) -> tuple[str, dict[str, Any]]:
    """``python -m bench ARGS --quiet --json F``; its table (stdout) and its JSON."""
    return run_module("bench", tmp_path, *args, "--quiet", timeout_s=timeout_s)


def test_bench_smoke(tmp_path: Path) -> None:
    t0 = time.monotonic()
    table, result = run_bench(
        tmp_path,
        "--db",
        "sqlite",
        "--sqlite-sync",
        "NORMAL",
        "--duration",
        "1",
        "--warmup",
        "0.2",
        "--concurrency",
        "4",
        "--rate",
        "20",
        "--op-timeout",
        "5",
        timeout_s=60,
    )
    elapsed = time.monotonic() - t0
    assert elapsed < 30, f"smoke run took {elapsed:.1f}s"
    assert "ratios durable/baseline" in table  # the readable table

    assert result["meta"]["options"]["scenarios"] == list(SCENARIOS)
    (target,) = result["targets"]
    assert target["name"] == "sqlite-normal"
    assert isinstance(target["gateway_rss_kb_ready"], int) and target["gateway_rss_kb_ready"] > 0
    for scenario in SCENARIOS:
        for mode in ("closed", "open"):
            r = target["scenarios"][scenario][mode]
            assert r["throughput_per_s"] > 0, (scenario, mode, r)
            assert r["ok"] > 0, (scenario, mode, r)
            assert isinstance(r["errors"], int) and "error_kinds" in r
            assert {"gateway", "agent", "harness"} <= set(r["cpu_pct"])
            assert r["gateway_rss_kb"]["start"] > 0 and r["gateway_rss_kb"]["end"] > 0
    lat = target["scenarios"]
    assert lat["baseline"]["closed"]["latency_ms"]["latency"]["p50"] > 0
    assert lat["start"]["open"]["latency_ms"]["start"]["p99"] > 0
    assert lat["lifecycle"]["closed"]["latency_ms"]["e2e"]["p50"] > 0
    assert lat["lifecycle"]["closed"]["callbacks"]["received"] > 0
    for mode in ("closed", "open"):
        ratios = target["ratios"][mode]
        for key in ("start_throughput", "lifecycle_throughput", "start_p50", "lifecycle_e2e_p50"):
            assert ratios[key] is not None and ratios[key] > 0, (mode, key, ratios)
    # the store census after the run (rows per state; gateway correctness is tested elsewhere)
    assert target["store"]["operations"].get("succeeded", 0) > 0
    assert {"callbacks", "events", "callback_attempts"} <= set(target["store"])
    assert set(target["targets"]) and all("met" in c for c in target["targets"].values())


def test_bench_runs_several_workers_with_jwt_checks_on_postgresql(
    pg_template: str, tmp_path: Path
) -> None:
    # pg_template: PostgreSQL is reachable (skipped or failed as the other PostgreSQL tests)
    _, result = run_bench(
        tmp_path,
        "--db",
        "postgresql",
        "--scenarios",
        "lifecycle",
        "--modes",
        "closed",
        "--duration",
        "1.5",
        "--warmup",
        "0.3",
        "--concurrency",
        "8",
        "--workers",
        "2",
        "--auth",
        "hs256",
        "--op-timeout",
        "5",
        "--workdir",
        str(tmp_path / "work"),
        timeout_s=90,
    )
    opts = result["meta"]["options"]
    assert (opts["auth"], opts["gateway_workers_postgresql"]) == ("hs256", 2)
    (target,) = result["targets"]
    run = target["scenarios"]["lifecycle"]["closed"]
    assert run["ok"] > 0 and run["errors"] == 0  # every start carried an accepted token
    # no worker ended (and was started again) while measured; if one did, its log says why
    log = (tmp_path / "work" / f"gateway-{target['name']}.log").read_text()[-4000:]
    assert run["processes_lost"] == {}, log
    # the gateway's CPU is its workers' (the supervisor itself only waits)
    assert run["cpu_pct"]["gateway"] > 10, run["cpu_pct"]
    # the supervisor's and both workers' memory (one gateway process alone is ~90 MB)
    assert target["gateway_rss_kb_ready"] > 150_000
    # the load began once both workers listened (before, its connections could all reach one)
    assert target["gateway_listeners"] == 2
    (shares,) = run["gateway_cpu_pct_by_process"]  # one repeat: the supervisor and two workers
    assert len(shares) == 3, shares


def test_bench_samples_rss_under_a_side_load_of_many_callers_on_a_preloaded_store(
    tmp_path: Path,
) -> None:
    _, result = run_bench(
        tmp_path,
        "--db",
        "sqlite",
        "--sqlite-sync",
        "NORMAL",
        "--scenarios",
        "lifecycle",
        "--modes",
        "open",
        "--rate",
        "20",
        "--duration",
        "2",
        "--warmup",
        "0.2",
        "--preload",
        "500",
        "--rss-interval",
        "0.2",
        "--side-rate",
        "20",
        "--hold-s",
        "1",
        "--auth",
        "hs256",
        "--callers",
        "7",
        "--op-timeout",
        "5",
        timeout_s=90,
    )
    (target,) = result["targets"]
    # the preload leaves what a real run leaves: four events, a delivered callback each
    store = target["store"]
    assert store["events"]["operation.started"] >= 500 + 1
    assert store["callbacks"]["delivered"] >= 500 + 1
    run = target["scenarios"]["lifecycle"]["open"]
    assert run["ok"] > 0 and run["errors"] == 0
    rss = run["gateway_rss"]
    assert len(rss["series"]) >= 5 and all(kb > 0 for _, kb in rss["series"])
    assert rss["start_kb"] > 0 and rss["end_kb"] > 0
    assert isinstance(rss["slope_mb_per_min_second_half"], float)
    side = run["side_load"]
    assert side["callers"] == 7
    counts = side["counts"]
    assert counts["info"].get("200", 0) > 0 and counts["show"].get("200", 0) > 0
    assert counts["longpoll"].get("408", 0) > 0  # the held operation outlives the poll
    assert counts["sse"].get("read one frame, disconnected", 0) > 0


def test_abba_runs_two_variants_interleaved_and_summarizes_both(tmp_path: Path) -> None:
    stdout, doc = run_module(
        "bench.abba",
        tmp_path,
        *("--rounds", "1"),
        *("--a", "--gateway-env SWARMGATE_CALLBACK_ACK_LINGER_S=0.005"),
        *("--b", "--gateway-env SWARMGATE_CALLBACK_ACK_LINGER_S=0.05"),
        "--",
        *("--db", "sqlite", "--sqlite-sync", "NORMAL", "--scenarios", "lifecycle"),
        *("--modes", "closed", "--concurrency", "4", "--duration", "0.3", "--warmup", "0.1"),
        timeout_s=120,
    )
    assert [r["variant"] for r in doc["runs"]] == ["A", "B", "B", "A"]
    box = {s["figure"]: s for s in doc["summary"]}["box us/op"]
    assert len(box["a"]) == len(box["b"]) == 2 and all(v > 0 for v in box["a"] + box["b"])
    assert "sqlite-normal/lifecycle/closed" in stdout and "B/A" in stdout
