"""Cross-seed stability of SAE decoders, random baselines and seed-level bootstrap CIs.

For decoders A, B with unit rows and C = A B^T (docs/metrics.md, stability):
- mmcs = (mean_i max_j |C_ij| + mean_j max_i |C_ij|) / 2  (what the original called PWMCC);
- pw_mcc = mean cosine of a one-to-one Hungarian matching on C (signed);
- shared_frac_t = share of matched pairs with cosine >= t.
Each is averaged over all seed pairs. The bootstrap resamples *seeds* and recomputes the pair
mean (pairs share seeds, so they are not independent draws); a resample that draws one seed
twice skips that self-pair.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from husai import names

# One source of truth: the metric contract in names.py.
METRICS = tuple(k.removeprefix(names.STABILITY_PREFIX) for k in names.STABILITY_BASES)
THRESHOLDS = tuple(float(m.removeprefix("shared_frac_")) for m in METRICS if "frac" in m)
MIN_SEEDS_FOR_CI = 3  # with 2 seeds every resample is the point estimate or undefined


def unit_rows(w: torch.Tensor, d_in: int) -> np.ndarray:
    """Decoder [d_sae, d_in] with unit rows; any other layout is refused, never transposed."""
    if w.ndim != 2 or w.shape[1] != d_in:
        raise ValueError(
            f"decoder must be [d_sae, d_in] with d_in={d_in}, got {list(w.shape)}; "
            "pass W_dec rows as features (it is never transposed for you)"
        )
    a = w.detach().double().cpu().numpy()
    norms = np.linalg.norm(a, axis=1, keepdims=True)
    return a / np.where(norms == 0, 1.0, norms)


def pair_scores(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """All stability metrics of one decoder pair (unit rows)."""
    c = a @ b.T
    abs_c = np.abs(c)
    mmcs = (abs_c.max(axis=1).mean() + abs_c.max(axis=0).mean()) / 2
    rows, cols = linear_sum_assignment(c, maximize=True)
    matched = c[rows, cols]
    out = {"mmcs": float(mmcs), "pw_mcc": float(matched.mean())}
    for t in THRESHOLDS:
        out[f"shared_frac_{t}"] = float((matched >= t).mean())
    return out


def pairwise(decoders: Sequence[torch.Tensor], d_in: int) -> dict[str, np.ndarray]:
    """Symmetric [n, n] matrix per metric over all seed pairs (diagonal NaN)."""
    units = [unit_rows(w, d_in) for w in decoders]
    n = len(units)
    mats = {m: np.full((n, n), np.nan) for m in METRICS}
    for i, j in combinations(range(n), 2):
        for m, v in pair_scores(units[i], units[j]).items():
            mats[m][i, j] = mats[m][j, i] = v
    return mats


def pair_mean(mat: np.ndarray, idx: Sequence[int] | np.ndarray) -> float:
    """Mean of mat over pairs a < b of the drawn seeds, skipping a seed paired with itself."""
    vals = [mat[i, j] for i, j in combinations(idx, 2) if i != j]
    return float(np.mean(vals)) if vals else float("nan")


def bootstrap_pair_means(mat: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Pair means of `n_boot` seed-level resamples (seeds drawn with replacement)."""
    n = mat.shape[0]
    return np.array([pair_mean(mat, np.asarray(rng.integers(0, n, size=n))) for _ in range(n_boot)])


@dataclass
class MetricStability:
    value: float
    random: float
    gaussian: float
    step0: float
    delta: float
    delta_lcb: float | None  # None with fewer than MIN_SEEDS_FOR_CI seeds: no honest interval
    delta_ucb: float | None


@dataclass
class StabilityReport:
    metrics: dict[str, MetricStability]
    trained: dict[str, np.ndarray] = field(repr=False)  # pairwise matrices of the trained SAEs
    random: dict[str, np.ndarray] = field(repr=False)


def stability_report(
    trained: Sequence[torch.Tensor],
    random: Sequence[torch.Tensor],
    step0: Sequence[torch.Tensor],
    gaussian: Sequence[torch.Tensor],
    d_in: int,
    n_boot: int = 2000,
    seed: int = 0,
) -> StabilityReport:
    """Trained vs matched random decoders, with a seed-level bootstrap of the delta."""
    if len(trained) < 2 or len(random) < 2:
        raise ValueError("stability needs at least 2 trained and 2 random decoders")
    mats = {
        "trained": pairwise(trained, d_in),
        "random": pairwise(random, d_in),
        "step0": pairwise(step0, d_in),
        "gaussian": pairwise(gaussian, d_in),
    }
    has_ci = min(len(trained), len(random)) >= MIN_SEEDS_FOR_CI
    all_t = list(range(len(trained)))
    all_r = list(range(len(random)))
    out = {}
    for m in METRICS:
        rng = np.random.default_rng([seed, METRICS.index(m)])
        boot = bootstrap_pair_means(mats["trained"][m], n_boot, rng) - bootstrap_pair_means(
            mats["random"][m], n_boot, rng
        )
        boot = boot[np.isfinite(boot)]
        value = pair_mean(mats["trained"][m], all_t)
        rand = pair_mean(mats["random"][m], all_r)
        out[m] = MetricStability(
            value=value,
            random=rand,
            gaussian=pair_mean(mats["gaussian"][m], list(range(len(gaussian)))),
            step0=pair_mean(mats["step0"][m], list(range(len(step0)))),
            delta=value - rand,
            delta_lcb=float(np.percentile(boot, 2.5)) if has_ci else None,
            delta_ucb=float(np.percentile(boot, 97.5)) if has_ci else None,
        )
    return StabilityReport(metrics=out, trained=mats["trained"], random=mats["random"])


def stability_metrics(report: StabilityReport) -> dict[str, float | None]:
    """Every stability number by its MLflow key, e.g. stability/pw_mcc_delta_lcb (None: no
    honest value, such as a bound from fewer than MIN_SEEDS_FOR_CI seeds)."""
    out: dict[str, float | None] = {}
    for m, st in report.metrics.items():
        base = names.STABILITY_PREFIX + m
        for suffix, value in (
            ("", st.value),
            ("_random", st.random),
            ("_gaussian", st.gaussian),
            ("_step0", st.step0),
            ("_delta", st.delta),
            ("_delta_lcb", st.delta_lcb),
            ("_delta_ucb", st.delta_ucb),
        ):
            out[names.stability_key(base, suffix)] = value
    return out


def gaussian_decoders(n: int, d_sae: int, d_in: int, seed: int) -> list[torch.Tensor]:
    """A second control: i.i.d. Gaussian directions, one generator per decoder."""
    return [
        torch.randn(d_sae, d_in, generator=torch.Generator().manual_seed(seed + i))
        for i in range(n)
    ]


def representative(mat: np.ndarray) -> int:
    """Index of the medoid seed: highest mean similarity to the other seeds."""
    return int(np.nanargmax(np.nanmean(mat, axis=1)))


def seed_mean_ci(
    values: Sequence[float], n_boot: int, seed: int
) -> tuple[float | None, float | None]:
    """95% bootstrap interval of the mean of per-seed values (seeds are the independent units);
    (None, None) with fewer than MIN_SEEDS_FOR_CI seeds."""
    v = np.asarray(values, dtype=float)
    if len(v) < MIN_SEEDS_FOR_CI:
        return None, None
    rng = np.random.default_rng([seed, 11])
    boot = v[rng.integers(0, len(v), size=(n_boot, len(v)))].mean(axis=1)
    return float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))
