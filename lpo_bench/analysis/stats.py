"""Every headline number comes from one function here, computed from records only.

Bootstrap CIs are percentile intervals over ``n_boot`` resamples drawn from a seeded
generator, so the same inputs always give the same interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

DEFAULT_N_BOOT = 2000


def mean_ci(
    values: Sequence[float], *, level: float = 0.95, n_boot: int = DEFAULT_N_BOOT, seed: int = 0
) -> tuple[float, float, float]:
    """(mean, ci_low, ci_high): percentile bootstrap of the mean. A single value gives a zero-width CI."""
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return (math.nan, math.nan, math.nan)
    m = float(x.mean())
    if x.size == 1:
        return (m, m, m)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_boot, x.size))
    boots = x[idx].mean(axis=1)
    a = (1 - level) / 2
    return (m, float(np.quantile(boots, a)), float(np.quantile(boots, 1 - a)))


def paired_diff_ci(
    a: Sequence[float], b: Sequence[float], *, level: float = 0.95, n_boot: int = DEFAULT_N_BOOT, seed: int = 0
) -> tuple[float, float, float]:
    """Mean of a - b with a paired bootstrap CI (same prompts and seeds on both sides)."""
    a_, b_ = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a_.shape != b_.shape:
        raise ValueError(f"paired samples differ in length: {a_.shape} vs {b_.shape}")
    return mean_ci(a_ - b_, level=level, n_boot=n_boot, seed=seed)


def mean_of_means_ci(
    groups: Sequence[Sequence[float]], *, level: float = 0.95, n_boot: int = DEFAULT_N_BOOT, seed: int = 0
) -> tuple[float, float, float]:
    """(unweighted mean of the group means, ci_low, ci_high): a stratified percentile bootstrap that resamples
    within each group (e.g. GenEval's overall score, the mean of six task accuracies over per-prompt scores).
    Non-finite values and empty groups are dropped; a group of one value contributes it without spread."""
    xs = [x[np.isfinite(x)] for x in (np.asarray(g, dtype=np.float64) for g in groups)]
    xs = [x for x in xs if x.size]
    if not xs:
        return (math.nan, math.nan, math.nan)
    m = float(np.mean([x.mean() for x in xs]))
    rng = np.random.default_rng(seed)
    boots = np.mean([x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1) for x in xs], axis=0)
    a = (1 - level) / 2
    return (m, float(np.quantile(boots, a)), float(np.quantile(boots, 1 - a)))


def diff_ci(
    a: Sequence[float], b: Sequence[float], *, level: float = 0.95, n_boot: int = DEFAULT_N_BOOT, seed: int = 0
) -> tuple[float, float, float]:
    """mean(a) - mean(b) with an unpaired bootstrap CI (independent resampling of each side)."""
    a_, b_ = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    rng = np.random.default_rng(seed)
    ba = a_[rng.integers(0, a_.size, size=(n_boot, a_.size))].mean(axis=1)
    bb = b_[rng.integers(0, b_.size, size=(n_boot, b_.size))].mean(axis=1)
    d = ba - bb
    q = (1 - level) / 2
    return (float(a_.mean() - b_.mean()), float(np.quantile(d, q)), float(np.quantile(d, 1 - q)))


def win_rate(a: Sequence[float], b: Sequence[float]) -> float:
    """Fraction of paired samples where a > b, ties counting one half."""
    a_, b_ = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(((a_ > b_) + 0.5 * (a_ == b_)).mean())


def pairwise_accuracy(score_w: Sequence[float], score_l: Sequence[float]) -> np.ndarray:
    """Per-pair correctness: 1 if s_w > s_l, 0.5 on a tie, else 0 (diffusers' implicit_acc convention)."""
    w, lo = np.asarray(score_w, dtype=np.float64), np.asarray(score_l, dtype=np.float64)
    return (w > lo).astype(np.float64) + 0.5 * (w == lo)


def time_to_target(
    gpu_h: Sequence[float], values: Sequence[float], target: float, *, higher_is_better: bool = True
) -> float:
    """First counted GPU-hour at which ``values`` reaches ``target``; ``inf`` when never reached.

    Points are sorted by GPU-hours first, so the order of records does not matter.
    """
    g, v = np.asarray(gpu_h, dtype=np.float64), np.asarray(values, dtype=np.float64)
    order = np.argsort(g, kind="stable")
    for gi, vi in zip(g[order], v[order]):
        if (vi >= target) if higher_is_better else (vi <= target):
            return float(gi)
    return math.inf


def median_time_to_target(times: Sequence[float]) -> float:
    """Median over seeds; a miss (inf) counts as never reached, so a majority of misses gives inf."""
    t = np.sort(np.asarray(times, dtype=np.float64))
    if t.size == 0:
        return math.inf
    n = t.size
    if n % 2:
        return float(t[n // 2])
    lo, hi = t[n // 2 - 1], t[n // 2]
    return math.inf if math.isinf(hi) else float((lo + hi) / 2)


def median_range(values: Sequence[float]) -> tuple[float, float, float]:
    """(median, min, max) of the finite values (e.g. a cost over training seeds); nan when none."""
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return (math.nan, math.nan, math.nan)
    return (float(np.median(x)), float(x.min()), float(x.max()))


def speedup(reference_cost: float, method_cost: float) -> float:
    """How many times cheaper the method is than the reference: reference / method.

    A method that never reached the target (inf) has speedup 0; a reference that never reached it
    gives inf. Both inf: nan (no comparison possible).
    """
    if math.isinf(reference_cost) and math.isinf(method_cost):
        return math.nan
    if math.isinf(method_cost):
        return 0.0
    if method_cost <= 0:
        return math.inf
    return reference_cost / method_cost


def geometric_mean(values: Sequence[float]) -> float:
    """Geometric mean of positive finite values (AlgoPerf's cross-suite speedup aggregate)."""
    x = np.asarray([v for v in values if np.isfinite(v) and v > 0], dtype=np.float64)
    if x.size == 0:
        return math.nan
    return float(np.exp(np.log(x).mean()))


def plateau(ci_lows: Sequence[float], ci_highs: Sequence[float]) -> bool:
    """True when the intervals (e.g. a learning curve's last three evaluations) share a common point: every
    pair overlaps, max(lows) <= min(highs). False for fewer than two or any non-finite bound."""
    lo, hi = np.asarray(ci_lows, dtype=np.float64), np.asarray(ci_highs, dtype=np.float64)
    if lo.size < 2 or lo.shape != hi.shape or not (np.isfinite(lo).all() and np.isfinite(hi).all()):
        return False
    return bool(lo.max() <= hi.min())


def excludes(ci_low: float, ci_high: float, value: float = 0.0) -> bool:
    """True when the interval [ci_low, ci_high] lies wholly on one side of ``value`` (nan: False)."""
    return bool(ci_low > value or ci_high < value)


def overlap(a_low: float, a_high: float, b_low: float, b_high: float) -> bool:
    """True when two intervals (CIs, or min-max ranges over seeds) share a point; nan bounds: True (unknown)."""
    if any(math.isnan(v) for v in (a_low, a_high, b_low, b_high)):
        return True
    return bool(a_low <= b_high and b_low <= a_high)
