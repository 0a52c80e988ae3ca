"""Cross-seed stability of SAE decoders, measured against nulls, with honest small-sample
intervals (docs/metrics.md, "Stability").

For decoders A, B with unit rows and C = A B^T:
- mmcs = (mean_i max_j |C_ij| + mean_j max_i |C_ij|) / 2  (what the original called PWMCC);
- pw_mcc = mean cosine of a one-to-one Hungarian matching on C (signed);
- shared_frac_t = share of matched pairs with cosine >= t.
Each is a mean over all seed pairs: a U-statistic over seeds, with a jackknife-over-seeds
interval (`husai.measure.intervals`).

A trial's stability means something only against nulls that know what the data already
forces. The same code scores each null (as many decoders as seeds, paired with them by index),
and the `excess` over **each** null is recorded with its own interval, jackknifed jointly over
seed indices. Nothing picks a "strongest" null: a gate policy names the nulls it gates on and
passes only if the bound against every one of them clears (an intersection-union test). The
alive-only excess compares the trained SAEs' alive latents with the null's own alive latents
(a trained null has dead latents too; an untrained one counts all of its latents alive).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from husai import names
from husai.measure.intervals import (
    Interval,
    cross_interval,
    cross_mean,
    pair_mean,
    pair_mean_interval,
)
from husai.model.gaussian_twin import fit
from husai.model.rows import Rows

# One source of truth: the metric contract in husai/names/.
METRICS = tuple(k.removeprefix(names.STABILITY_PREFIX) for k in names.STABILITY_BASES)
THRESHOLDS = tuple(float(m.removeprefix("shared_frac_")) for m in METRICS if "frac" in m)
Mats = dict[str, np.ndarray]  # metric short name -> [n, n] pair matrix


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
    """All stability metrics of one decoder pair (unit rows); NaN if either has no row."""
    if len(a) == 0 or len(b) == 0:
        return {m: float("nan") for m in METRICS}
    c = a @ b.T
    abs_c = np.abs(c)
    mmcs = (abs_c.max(axis=1).mean() + abs_c.max(axis=0).mean()) / 2
    rows, cols = linear_sum_assignment(c, maximize=True)
    matched = c[rows, cols]
    out = {"mmcs": float(mmcs), "pw_mcc": float(matched.mean())}
    for t in THRESHOLDS:
        out[f"shared_frac_{t}"] = float((matched >= t).mean())
    return out


def pairwise(
    decoders: Sequence[torch.Tensor], d_in: int, alive: Sequence[torch.Tensor] | None = None
) -> Mats:
    """Symmetric [n, n] matrix per metric over all seed pairs (diagonal NaN). With `alive`
    (one bool mask [d_sae] per decoder), each pair is scored on the latents alive in each SAE."""
    units = [unit_rows(w, d_in) for w in decoders]
    if alive is not None:
        units = [
            u[m.detach().cpu().numpy().astype(bool)] for u, m in zip(units, alive, strict=True)
        ]
    n = len(units)
    mats = {m: np.full((n, n), np.nan) for m in METRICS}
    for i, j in combinations(range(n), 2):
        for m, v in pair_scores(units[i], units[j]).items():
            mats[m][i, j] = mats[m][j, i] = v
    return mats


@dataclass(frozen=True)
class NullDecoders:
    """One null's decoders, one per trial seed (index i paired with trial seed i), and, for a
    null trained like the trial, which of its latents fire on its own held-out rows (None: an
    untrained null, every latent counted alive)."""

    decoders: list[torch.Tensor]
    alive: list[torch.Tensor] | None = None


@dataclass(frozen=True)
class MetricStability:
    value: float  # the trained SAEs, mean over seed pairs
    random: float  # untrained sae-lens initialisations: the weak, isotropic null
    step0: float  # the trained SAEs' own initial decoders
    delta: Interval  # value - random
    alive: float  # over the latents alive (on held-out rows) in both SAEs of each pair; NaN
    nulls: dict[str, float]  # null name -> its value, for every null computed
    excess: dict[str, Interval]  # null name -> value - that null's, jackknifed jointly
    alive_excess: dict[str, Interval]  # null name -> alive value - the null's alive value


@dataclass
class StabilityReport:
    metrics: dict[str, MetricStability]
    n_seeds: int
    trained: Mats = field(repr=False)  # pairwise matrices of the trained SAEs
    random: Mats = field(repr=False)
    nulls: dict[str, Mats] = field(repr=False)


def stability_report(
    trained: Sequence[torch.Tensor],
    random: Sequence[torch.Tensor],
    step0: Sequence[torch.Tensor],
    nulls: Mapping[str, NullDecoders],
    d_in: int,
    alive: Sequence[torch.Tensor] | None = None,
) -> StabilityReport:
    """The trained decoders against the untrained ones and against each null, with jackknife-t
    intervals; `alive`: the trained SAEs' alive masks (None: no alive-only numbers)."""
    if len(trained) < 2 or len(random) < 2:
        raise ValueError("stability needs at least 2 trained and 2 random decoders")
    for name, null in nulls.items():
        if len(null.decoders) != len(trained):
            raise ValueError(f"null {name}: {len(null.decoders)} decoders for {len(trained)} seeds")
    t_mats, r_mats = pairwise(trained, d_in), pairwise(random, d_in)
    s_mats = pairwise(step0, d_in)
    a_mats = pairwise(trained, d_in, alive) if alive is not None else None
    n_mats = {name: pairwise(null.decoders, d_in) for name, null in nulls.items()}
    na_mats = {
        name: n_mats[name] if null.alive is None else pairwise(null.decoders, d_in, null.alive)
        for name, null in nulls.items()
    }
    out = {}
    for m in METRICS:
        out[m] = MetricStability(
            value=pair_mean(t_mats[m]),
            random=pair_mean(r_mats[m]),
            step0=pair_mean(s_mats[m]),
            delta=pair_mean_interval(t_mats[m], r_mats[m]),
            alive=float("nan") if a_mats is None else pair_mean(a_mats[m]),
            nulls={name: pair_mean(mats[m]) for name, mats in n_mats.items()},
            excess={name: pair_mean_interval(t_mats[m], mats[m]) for name, mats in n_mats.items()},
            alive_excess={}
            if a_mats is None
            else {name: pair_mean_interval(a_mats[m], mats[m]) for name, mats in na_mats.items()},
        )
    return StabilityReport(out, len(trained), t_mats, r_mats, n_mats)


def _bounds(iv: Interval | None) -> tuple[float | None, float | None, float | None]:
    return (None, None, None) if iv is None else (iv.value, iv.lcb, iv.ucb)


def stability_metrics(report: StabilityReport) -> dict[str, float | None]:
    """Every stability number by its MLflow key, e.g. stability/pw_mcc_excess_surrogate_lcb
    (None: no honest value, such as a bound from fewer than 3 seeds)."""
    out: dict[str, float | None] = {}
    for m, st in report.metrics.items():
        base = names.STABILITY_PREFIX + m
        values: dict[str, float | None] = {
            "": st.value,
            "_random": st.random,
            "_step0": st.step0,
            "_delta": st.delta.value,
            "_delta_lcb": st.delta.lcb,
            "_delta_ucb": st.delta.ucb,
            "_alive": st.alive,
        }
        values.update({names.null_suffix(k): v for k, v in st.nulls.items()})
        for alive, excess in ((False, st.excess), (True, st.alive_excess)):
            for null, iv in excess.items():
                for bound, v in zip(names.BOUNDS, _bounds(iv), strict=True):
                    values[names.excess_suffix(null, bound, alive)] = v
        out.update({names.stability_key(base, sfx): v for sfx, v in values.items()})
    return out


@dataclass(frozen=True)
class IndependentStability:
    value: float  # pw_mcc between SAEs that never saw each other
    excess: dict[str, Interval]  # null name -> value - that null's pw_mcc

    def keyed(self) -> dict[str, float | None]:
        """By MLflow key: stability/independent_pw_mcc and its excess over each null."""
        out: dict[str, float | None] = {names.INDEPENDENT_PW_MCC: self.value}
        for null, iv in self.excess.items():
            for bound, v in zip(names.BOUNDS, _bounds(iv), strict=True):
                out[names.independent_key(null, bound)] = v
        return out


def independent_stability(
    report: StabilityReport, to_controls: np.ndarray | None, reference_variance: float = 0.0
) -> IndependentStability:
    """pw_mcc measured only between SAEs that never saw each other, and its excess over each
    null (docs/metrics.md, "Independent stability").

    lambda = 0 (`to_controls` None): the seeds are independent; this is the seed-vs-seed pw_mcc.
    lambda > 0: seeds pulled toward one reference agree with each other partly by copying it, so
    each seed is scored against the lambda = 0 recipe's seeds instead (the controls, trained
    without the pull): `to_controls` [n seeds, m controls], NaN where a seed and a control share
    their initialisation. Copying the reference then scores what the reference shares with
    independent SAEs, no more. The excess subtracts the null's pair mean, with a two-way
    jackknife (leave a seed out of the table and of the null, leave a control out) plus
    `reference_variance`: seeds pulled toward one reference share its randomness, which no
    seed left out reveals (copies of it have none of their own), so the interval carries an
    estimate of one SAE's (`consistency_metrics`); copying cannot narrow it."""
    st = report.metrics["pw_mcc"]
    if to_controls is None:
        return IndependentStability(st.value, dict(st.excess))
    x = np.asarray(to_controls, dtype=float)
    if x.shape[0] != report.n_seeds:
        raise ValueError(f"{x.shape[0]} rows of control scores for {report.n_seeds} seeds")
    n, m = x.shape
    excess = {}
    for null, mats in report.nulls.items():
        pw = mats["pw_mcc"]

        def theta(rows: Sequence[int], cols: Sequence[int], pw: np.ndarray = pw) -> float:
            return cross_mean(x, rows, cols) - pair_mean(pw, rows)

        iv = cross_interval(theta, n, m, reference_variance)
        if not np.isfinite(reference_variance):  # the reference's share unknown: no bound
            iv = Interval(iv.value, None, None, iv.n_seeds)
        excess[null] = iv
    return IndependentStability(cross_mean(x, range(n), range(m)), excess)


def gaussian_decoders(d_sae: int, d_in: int, seeds: Sequence[int]) -> list[torch.Tensor]:
    """The isotropic null: i.i.d. Gaussian directions, one generator (and decoder) per seed."""
    return [torch.randn(d_sae, d_in, generator=torch.Generator().manual_seed(s)) for s in seeds]


def covariance_decoders(rows: Rows, d_sae: int, seeds: Sequence[int]) -> list[torch.Tensor]:
    """The covariance null: decoder rows drawn from N(0, Sigma), Sigma the covariance of `rows`
    (the SAE-train rows): dictionaries that know the data's geometry and nothing else. One
    decoder per seed."""
    g = fit(rows).centred()
    return [g.draw(d_sae, torch.Generator().manual_seed(s)) for s in seeds]


def representative(mat: np.ndarray) -> int:
    """Index of the medoid seed: highest mean similarity to the other seeds."""
    return int(np.nanargmax(np.nanmean(mat, axis=1)))
