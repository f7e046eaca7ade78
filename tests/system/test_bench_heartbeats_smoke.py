"""Smoke test of ``python -m bench.heartbeats``: a very short SQLite run does real calls."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from gateway.testing import ROOT


def test_the_heartbeat_bench_measures_heartbeats_and_step_records(tmp_path: Path) -> None:
    out = tmp_path / "hb.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.heartbeats",
            "--db",
            "sqlite",
            "--ops",
            "20",
            "--duration",
            "0.5",
            "--warmup",
            "0.2",
            "--repeat",
            "1",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (result,) = json.loads(out.read_text())
    assert set(result["scenarios"]) == {"heartbeat", "heartbeat+details", "step"}
    for name, scenario in result["scenarios"].items():
        median = scenario["median"]
        assert median["throughput_per_s"] > 0 and median["errors"] == 0, name
        assert median["gateway_cpu_us_per_call"] > 0, name
    assert "heartbeat" in proc.stdout
