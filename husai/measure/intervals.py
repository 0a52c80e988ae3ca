"""Small-sample intervals over seeds (docs/metrics.md, "Stability across seeds"): what every
bound HUSAI records rests on.

- A mean over seed pairs (`pair_mean`) is a U-statistic: pairs share seeds and are not
  independent. Its 95% interval is a jackknife over seeds (leave one seed out, recompute) with a
  t quantile on n - 1 degrees of freedom; a difference of two such means over the same seed
  indices (trained minus a null) leaves the same index out of both.
- A mean of per-seed values gets a t-interval (`seed_mean_interval`).
- A mean over a seeds x controls table (each seed scored against SAEs it never saw: the
  lambda = 0 recipe's own seeds) has two independent sources of randomness; `cross_interval` is
  a two-way jackknife: leave a seed out, leave a control out, add the two variances, t quantile
  on min(n, m) - 1 degrees of freedom. One control (or one reference) would leave its own
  randomness out of the interval: simulated, a one-control interval covered 76-85% at 5 seeds.

Fewer than MIN_SEEDS_FOR_CI units on a side give no interval. The simulations that check the
coverage of each are in tests/measure/test_intervals.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np
from scipy import stats

MIN_SEEDS_FOR_CI = 3  # leaving one of 2 seeds out leaves no pair: no variance to estimate
LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """A statistic over seeds with its 95% interval; lcb and ucb None with fewer than
    MIN_SEEDS_FOR_CI seeds (or controls) or a non-finite value."""

    value: float
    lcb: float | None
    ucb: float | None
    n_seeds: int


def pair_mean(mat: np.ndarray, idx: Sequence[int] | np.ndarray | None = None) -> float:
    """Mean of mat over pairs a < b of the seeds `idx` (all by default), skipping a seed paired
    with itself; NaN without a pair."""
    idx = range(mat.shape[0]) if idx is None else idx
    vals = [mat[i, j] for i, j in combinations(idx, 2) if i != j]
    return float(np.mean(vals)) if vals else float("nan")


def pair_mean_interval(mat: np.ndarray, minus: np.ndarray | None = None) -> Interval:
    """pair_mean(mat) - pair_mean(minus) with a jackknife-over-seeds variance and a t quantile.
    The two matrices are paired by seed index: leaving seed i out leaves it out of both."""

    def theta(idx: Sequence[int]) -> float:
        return pair_mean(mat, idx) - (0.0 if minus is None else pair_mean(minus, idx))

    return jackknife(theta, mat.shape[0])


def _jackknife_variance(loo: np.ndarray) -> float:
    n = len(loo)
    return float((n - 1) / n * ((loo - loo.mean()) ** 2).sum())


def _t(df: int) -> float:
    return float(stats.t.ppf(0.5 + LEVEL / 2, df))


def jackknife(theta: Callable[[Sequence[int]], float], n: int) -> Interval:
    """theta over all n seeds, with the jackknife-over-seeds variance and a t quantile on n - 1
    degrees of freedom; no interval below MIN_SEEDS_FOR_CI seeds or for a non-finite value."""
    value = theta(range(n))
    if n < MIN_SEEDS_FOR_CI or not np.isfinite(value):
        return Interval(value, None, None, n)
    loo = np.array([theta([j for j in range(n) if j != i]) for i in range(n)])
    if not np.all(np.isfinite(loo)):
        return Interval(value, None, None, n)
    half = _t(n - 1) * np.sqrt(_jackknife_variance(loo))
    return Interval(value, value - half, value + half, n)


def seed_mean_interval(values: Sequence[float]) -> Interval:
    """The mean of per-seed values (seeds are the independent units) with a t-interval."""
    v = np.asarray(values, dtype=float)
    n = len(v)
    if n < MIN_SEEDS_FOR_CI:
        return Interval(float(v.mean()) if n else float("nan"), None, None, n)
    half = float(_t(n - 1) * v.std(ddof=1) / np.sqrt(n))
    return Interval(float(v.mean()), float(v.mean()) - half, float(v.mean()) + half, n)


CrossTheta = Callable[[Sequence[int], Sequence[int]], float]


def cross_interval(theta: CrossTheta, n: int, m: int, extra_variance: float = 0.0) -> Interval:
    """theta(seeds, controls) over all n seeds and m controls with a two-way jackknife: the
    variance of leaving one seed out plus that of leaving one control out (plus
    `extra_variance`, a source neither side holds, such as one reference's), t quantile on
    min(n, m) - 1 degrees of freedom. `n_seeds` of the result is min(n, m)."""
    rows, cols = list(range(n)), list(range(m))
    value = theta(rows, cols)
    units = min(n, m)
    if units < MIN_SEEDS_FOR_CI or not np.isfinite(value):
        return Interval(value, None, None, units)
    by_seed = np.array([theta([r for r in rows if r != i], cols) for i in rows])
    by_control = np.array([theta(rows, [c for c in cols if c != j]) for j in cols])
    if not (np.all(np.isfinite(by_seed)) and np.all(np.isfinite(by_control))):
        return Interval(value, None, None, units)
    var = _jackknife_variance(by_seed) + _jackknife_variance(by_control) + extra_variance
    half = _t(units - 1) * np.sqrt(var)
    return Interval(value, value - half, value + half, units)


def cross_mean(table: np.ndarray, rows: Sequence[int], cols: Sequence[int]) -> float:
    """Mean of the finite cells of table[rows][:, cols] (NaN marks a pair left out, such as a
    seed and the control that shares its initialisation); NaN with none."""
    sub = table[np.ix_(list(rows), list(cols))]
    finite = sub[np.isfinite(sub)]
    return float(finite.mean()) if finite.size else float("nan")


def unit_effect_variance(mat: np.ndarray) -> float:
    """An upper estimate of the variance one SAE's own effect adds to a score against it,
    from a [m, m] pair matrix of SAEs of the same recipe: the jackknife variance of the pair
    mean is about 4 sigma_u^2 / m plus a within-pair term, so m / 4 times it bounds sigma_u^2
    from above. NaN below MIN_SEEDS_FOR_CI SAEs."""
    m = mat.shape[0]
    iv = pair_mean_interval(mat)
    if iv.lcb is None:
        return float("nan")
    se = (iv.value - iv.lcb) / _t(m - 1)
    return float(m * se**2 / 4)
