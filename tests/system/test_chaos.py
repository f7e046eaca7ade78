"""The chaos run in its short, bounded form (``python -m tests.chaos --short``): replicas on a
throw-away PostgreSQL, SIGKILLs, a database restart and a callback receiver outage, then the
reliability checks; then the targeted scenarios (kill -9 between a start's commit and its
answer with an Idempotency-Key, a frozen replica, a fault proxy, a full SQLite disk), all in
one process within the limit. Needs the PostgreSQL server binaries (initdb, pg_ctl): skipped locally
without them, a failure under CI=true."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.testing import ROOT
from tests.chaos.pg import find_pg_bin

IN_CI = os.environ.get("CI", "").lower() == "true"
# A bound against a hung run, not a speed check: the short run took 80 s on a slow 2-core VM
# (2026-12-03), where 90 s left too little headroom.
LIMIT_S = 150


@pytest.mark.timeout(LIMIT_S + 30)
def test_short_chaos_run_loses_nothing_and_repeats_nothing(tmp_path: Path) -> None:
    if find_pg_bin() is None:
        if IN_CI:
            pytest.fail("the chaos test needs the PostgreSQL server binaries (initdb, pg_ctl)")
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not installed")
    out = tmp_path / "chaos.json"
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "tests.chaos", "--short", "--seed", "1", "--json", str(out)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=LIMIT_S,
        )
    except subprocess.TimeoutExpired as exc:
        out_text = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else ""
        pytest.fail(f"the short chaos run took longer than {LIMIT_S}s:\n{out_text}")
    assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-4000:]
    doc = json.loads(out.read_text())
    assert doc["ok"] is True and doc["violations"] == []
    counts, faults = doc["counts"], doc["faults"]
    # every start was answered and stored exactly once
    assert counts["lost"] == 0
    assert counts["answered"] == counts["distinct_request_ids"] == counts["stored"] > 0
    assert counts["agent_duplicate_effects"] == 0
    assert sum(counts["states"].values()) == counts["stored"]
    assert counts["states"].get("running", 0) == 0
    # the faults really happened, and really hit work in flight
    assert faults["replica_kills"] >= 1 and faults["replica_restarts"] == faults["replica_kills"]
    assert faults["pg_restarts"] == 1
    assert faults["receiver_drops"] >= 1
    assert counts["timed_out"] >= 1  # the hanging operations ended by their timeout
    assert counts["ops_with_2plus_attempts"] >= 1
    # every operation answered async (201) gets its callback; a synchronous answer (200/424)
    # gets none (checked per operation by the harness)
    sync_answers = counts["start_status"].get("200", 0) + counts["start_status"].get("424", 0)
    assert counts["callback_arrivals"] >= counts["stored"] - sync_answers
    assert counts["start_status"].get("201", 0) > 0 and sync_answers > 0
    checks = {c["name"]: c for c in doc["checks"]}
    assert all(c["ok"] for c in checks.values()), [c for c in checks.values() if not c["ok"]]
    assert doc["elapsed_s"] < LIMIT_S
    scenarios = {o["name"]: o for o in json.loads((tmp_path / "chaos.scenarios.json").read_text())}
    assert set(scenarios) == {"idempotency_kill", "frozen_replica", "fault_proxy", "disk_full"}
    assert all(o["ok"] for o in scenarios.values()), [o for o in scenarios.values() if not o["ok"]]
    if IN_CI:  # root in CI: the tmpfs mounts; PostgreSQL binaries are checked above
        assert not any(o["skipped"] for o in scenarios.values()), scenarios
    assert scenarios["fault_proxy"]["numbers"]["retried"]["reset"] >= 1
    assert scenarios["frozen_replica"]["numbers"]["frozen_s"] > 1.0
