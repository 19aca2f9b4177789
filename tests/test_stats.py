"""stats: bootstrap CIs, time-to-target (including misses), speedup, on fixture data."""

import math

import numpy as np
import pytest

from lpo_bench.analysis import stats


def test_mean_ci_is_deterministic_and_brackets_the_mean():
    x = np.arange(10, dtype=float)
    m, lo, hi = stats.mean_ci(x)
    assert m == 4.5 and lo < 4.5 < hi
    assert stats.mean_ci(x) == (m, lo, hi)
    assert stats.mean_ci([3.0]) == (3.0, 3.0, 3.0)
    assert all(math.isnan(v) for v in stats.mean_ci([]))


def test_constant_sample_has_zero_width_ci():
    assert stats.mean_ci([2.0] * 50) == (2.0, 2.0, 2.0)


def test_paired_diff_ci_excludes_zero_for_a_clear_shift():
    rng = np.random.default_rng(0)
    a = rng.normal(size=200)
    m, lo, hi = stats.paired_diff_ci(a + 0.5, a)
    assert m == pytest.approx(0.5) and lo == pytest.approx(0.5) and hi == pytest.approx(0.5)
    b = a + rng.normal(0.3, 0.1, size=200)
    m, lo, hi = stats.paired_diff_ci(b, a)
    assert lo > 0 and m == pytest.approx(float((b - a).mean()))
    with pytest.raises(ValueError):
        stats.paired_diff_ci([1, 2], [1])


def test_win_rate_and_pairwise_accuracy_count_ties_half():
    assert stats.win_rate([1, 2, 3, 4], [0, 2, 5, 1]) == pytest.approx((1 + 0.5 + 0 + 1) / 4)
    assert stats.pairwise_accuracy([1, 1, 0], [0, 1, 1]).tolist() == [1.0, 0.5, 0.0]


def test_time_to_target_first_crossing_and_unsorted_input():
    g = [3.0, 1.0, 2.0, 4.0]
    v = [0.7, 0.2, 0.55, 0.9]
    assert stats.time_to_target(g, v, 0.5) == 2.0
    assert stats.time_to_target(g, v, 0.95) == math.inf  # a miss
    assert stats.time_to_target(g, [5, 3, 4, 1], 2.5, higher_is_better=False) == 4.0


def test_median_time_to_target_with_misses():
    assert stats.median_time_to_target([1.0, 3.0, 2.0]) == 2.0
    assert stats.median_time_to_target([1.0, math.inf, 2.0]) == 2.0
    assert stats.median_time_to_target([1.0, math.inf, math.inf]) == math.inf
    assert stats.median_time_to_target([1.0, 2.0, 3.0, math.inf]) == 2.5
    assert stats.median_time_to_target([1.0, 2.0, math.inf, math.inf]) == math.inf
    assert stats.median_time_to_target([]) == math.inf


def test_speedup_including_misses():
    assert stats.speedup(240.0, 23.0) == pytest.approx(240 / 23)
    assert stats.speedup(10.0, math.inf) == 0.0
    assert stats.speedup(math.inf, 5.0) == math.inf
    assert math.isnan(stats.speedup(math.inf, math.inf))


def test_geometric_mean_skips_non_finite():
    assert stats.geometric_mean([2.0, 8.0]) == pytest.approx(4.0)
    assert stats.geometric_mean([2.0, 8.0, math.inf, 0.0]) == pytest.approx(4.0)
    assert math.isnan(stats.geometric_mean([]))


def test_median_range_over_seeds_ignores_non_finite():
    assert stats.median_range([3.0, 1.0, 2.0]) == (2.0, 1.0, 3.0)
    assert stats.median_range([4.0, 1.0, 2.0, 3.0]) == (2.5, 1.0, 4.0)
    assert stats.median_range([5.0, math.nan]) == (5.0, 5.0, 5.0)
    assert all(math.isnan(v) for v in stats.median_range([]))
