"""How a consistency trial's SAEs relate to the reference they were pulled toward, and to
controls that never saw it (docs/metrics.md, "Consistency objective"): the measurements that
tell "more stable" apart from "copies the reference".

The controls are the lambda = 0 recipe's own seeds (the trial's baseline, trained anyway): each
trial seed is scored against every control except the one with its own seed number (the two
share their initialisation and data order). Every interval here is two-way (leave a seed out,
leave a control out); the gain's also carries the reference's own randomness, estimated from
the controls (the reference is one plain SAE of the same recipe), because the gain subtracts
one reference's scores: without it, seeds that copy the reference would get an interval that
knows nothing of how the reference happened to fall.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from husai import names
from husai.measure.intervals import Interval, cross_interval, cross_mean, unit_effect_variance
from husai.measure.stability import pair_scores, pairwise, unit_rows


@dataclass(frozen=True)
class ConsistencyMetrics:
    """How a trial's SAEs relate to the reference they were pulled toward, and to controls."""

    alignment_to_ref: float  # mean over seeds of pw_mcc(seed, reference)
    alignment_to_controls: float  # mean of pw_mcc(seed, control) over the table
    ref_controls_pw_mcc: float  # mean over controls of pw_mcc(reference, control)
    controls_pw_mcc: float  # the controls among themselves: what two plain SAEs share
    n_controls: int
    # alignment_to_controls - ref_controls_pw_mcc: what the pull bought beyond copying the
    # reference (0: it copied; > 0: the seeds moved toward what independent SAEs also find)
    independent_gain: Interval
    # [n seeds, m controls] pw_mcc(seed, control); NaN where the two share an initialisation
    to_controls: np.ndarray = field(repr=False, compare=False)
    # An upper estimate of the variance one plain SAE (the reference) adds to a score against
    # it, from the controls' own pair matrix; NaN with fewer than 3 controls
    reference_variance: float = float("nan")
    ev_drop: float | None = None  # ev(lambda = 0 recipe) - ev(this recipe); filled by the caller

    def keyed(self) -> dict[str, float | None]:
        """By MLflow key (consistency/*)."""
        return {
            names.CONSISTENCY_ALIGNMENT: self.alignment_to_ref,
            names.CONSISTENCY_ALIGNMENT_CONTROLS: self.alignment_to_controls,
            names.CONSISTENCY_REF_CONTROLS: self.ref_controls_pw_mcc,
            names.CONSISTENCY_CONTROLS_PW_MCC: self.controls_pw_mcc,
            names.CONSISTENCY_N_CONTROLS: float(self.n_controls),
            names.CONSISTENCY_INDEPENDENT_GAIN: self.independent_gain.value,
            names.CONSISTENCY_INDEPENDENT_GAIN_LCB: self.independent_gain.lcb,
            names.CONSISTENCY_INDEPENDENT_GAIN_UCB: self.independent_gain.ucb,
            names.CONSISTENCY_EV_DROP: self.ev_drop,
        }


def consistency_metrics(
    decoders: Sequence[tuple[int, torch.Tensor]],
    reference: torch.Tensor,
    controls: Sequence[tuple[int, torch.Tensor]],
    d_in: int,
) -> ConsistencyMetrics:
    """`decoders`: (seed, decoder) of the trial; `controls`: (seed, decoder) of the lambda = 0
    recipe, never pulled toward the reference."""
    if len(controls) < 2:
        raise ValueError(f"independent stability needs at least 2 controls, got {len(controls)}")
    ref = unit_rows(reference, d_in)
    units = [(s, unit_rows(w, d_in)) for s, w in decoders]
    ctl = [(s, unit_rows(w, d_in)) for s, w in controls]
    x = np.full((len(units), len(ctl)), np.nan)
    for i, (seed, u) in enumerate(units):
        for j, (c_seed, c) in enumerate(ctl):
            if seed != c_seed:  # same seed: same initialisation and data order, not independent
                x[i, j] = pair_scores(u, c)["pw_mcc"]
    y = np.array([pair_scores(ref, c)["pw_mcc"] for _, c in ctl])
    c_mat = pairwise([w for _, w in controls], d_in)["pw_mcc"]
    n, m = x.shape
    off = ~np.eye(m, dtype=bool)
    ref_var = unit_effect_variance(c_mat)
    return ConsistencyMetrics(
        alignment_to_ref=float(np.mean([pair_scores(u, ref)["pw_mcc"] for _, u in units])),
        alignment_to_controls=cross_mean(x, range(n), range(m)),
        ref_controls_pw_mcc=float(y.mean()),
        controls_pw_mcc=float(c_mat[off].mean()),
        n_controls=m,
        independent_gain=gain_interval(x, y, c_mat),
        to_controls=x,
        reference_variance=ref_var,
    )


def gain_interval(x: np.ndarray, y: np.ndarray, controls: np.ndarray) -> Interval:
    """mean x[i, j] - mean y[j] (x: seeds vs controls, NaN for pairs left out; y: the reference
    vs each control; `controls`: the controls' own [m, m] pair matrix) with a two-way interval
    plus the reference's own variance, estimated from the controls (`unit_effect_variance`).
    Without enough controls to estimate it there is no bound."""
    n, m = x.shape

    def gain(rows: Sequence[int], cols: Sequence[int]) -> float:
        return cross_mean(x, rows, cols) - float(y[list(cols)].mean())

    ref_var = unit_effect_variance(controls)
    if not np.isfinite(ref_var):  # the reference's share unknown: no honest bound
        return Interval(gain(range(n), range(m)), None, None, min(n, m))
    return cross_interval(gain, n, m, extra_variance=ref_var)
