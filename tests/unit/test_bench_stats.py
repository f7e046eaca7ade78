"""The RSS slope of ``bench --rss-interval``: least squares over the measured second half."""

from __future__ import annotations

from bench.stats import RssSampler, slope_per_min


def test_slope_is_in_units_per_minute() -> None:
    assert slope_per_min([(0.0, 10.0), (30.0, 11.0), (60.0, 12.0)]) == 2.0
    assert slope_per_min([(0.0, 1.0)]) is None


def test_the_rss_summary_skips_warm_up_and_fits_the_second_half() -> None:
    s = RssSampler(pid=1, interval_s=1.0)
    # warm-up climbs 100 MB, then the measured part is flat for 60 s apart from one bump early
    s.points = [(0.0, 0), (5.0, 100 * 1024)]
    s.points += [(10.0 + t, 100 * 1024 + (2048 if t == 5 else 0)) for t in range(0, 61, 5)]
    out = s.summary(measure_from_s=10.0)
    assert (out["start_kb"], out["end_kb"], out["max_kb"]) == (102400, 102400, 104448)
    assert out["slope_mb_per_min_second_half"] == 0.0
    assert out["series"][0] == [0.0, 0]  # the series keeps everything, warm-up included
