"""bench.abba: the run order, the figures read from a bench run's JSON, the summary."""

from __future__ import annotations

from typing import Any

import pytest

from bench.abba import _joined, figures, order, render, summarize


def test_rounds_alternate_abba_and_baab_so_each_variant_runs_twice_per_round() -> None:
    assert order(1) == ["A", "B", "B", "A"]
    assert order(2) == ["A", "B", "B", "A", "B", "A", "A", "B"]
    assert order(3).count("A") == order(3).count("B") == 6


def run(ops: float, box: float, postgres: float | None = None) -> dict[str, Any]:
    cpu: dict[str, float] = {"gateway": box / 2, "box": box}
    if postgres is not None:
        cpu["postgres"] = postgres
    mode = {
        "throughput_per_s": ops,
        "latency_ms": {"start": {"p50": 1.5, "p99": 4.0}, "e2e": {"p50": 3.0}},
        "cpu_us_per_op": cpu,
    }
    return {"targets": [{"name": "postgresql", "scenarios": {"lifecycle": {"closed": mode}}}]}


def test_a_runs_figures_are_keyed_by_target_scenario_and_mode_and_skip_what_it_lacks() -> None:
    found = figures(run(1200.0, 1100.0))
    assert list(found) == ["postgresql/lifecycle/closed"]
    figs = found["postgresql/lifecycle/closed"]
    assert figs["ops/s"] == 1200.0 and figs["box us/op"] == 1100.0
    assert figs["start p50 ms"] == 1.5 and figs["e2e p50 ms"] == 3.0
    assert "postgres us/op" not in figs  # as on SQLite: not there, not zero


def test_the_summary_gives_each_variants_values_and_the_ratio_of_medians() -> None:
    runs = [
        ("A", figures(run(1000.0, 1200.0, 400.0))),
        ("B", figures(run(1100.0, 1000.0, 300.0))),
        ("B", figures(run(1300.0, 1100.0, 350.0))),
        ("A", figures(run(900.0, 1300.0, 450.0))),
    ]
    by = {s.figure: s for s in summarize(runs)}
    assert by["box us/op"].a == [1200.0, 1300.0] and by["box us/op"].b == [1000.0, 1100.0]
    assert by["box us/op"].ratio == pytest.approx(1050.0 / 1250.0)
    assert by["ops/s"].ratio == pytest.approx(1200.0 / 950.0)
    table = render(summarize(runs))
    assert "postgresql/lifecycle/closed" in table and "0.840" in table


def test_a_figure_only_one_variant_has_is_not_compared() -> None:
    runs = [("A", figures(run(1.0, 2.0, 3.0))), ("B", figures(run(1.0, 2.0)))]
    assert "postgres us/op" not in {s.figure for s in summarize(runs)}


def test_a_variants_arguments_may_begin_with_dashes() -> None:
    argv = ["--a", "--workers 1", "--b", "--workers 2", "--", "--db", "sqlite", "--a"]
    assert _joined(argv) == ["--a=--workers 1", "--b=--workers 2", "--", "--db", "sqlite", "--a"]
