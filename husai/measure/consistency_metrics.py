"""How a consistency trial's SAEs relate to the reference they were pulled toward, and to an
independent control reference (docs/design.md, "Consistency objective"): the measurements that
tell "more stable" apart from "copies the reference"."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from husai import names
from husai.measure.stability import Interval, pair_scores, seed_mean_interval, unit_rows


@dataclass(frozen=True)
class ConsistencyMetrics:
    """How a trial's SAEs relate to the reference they were pulled toward, and to a control."""

    alignment_to_ref: float  # mean over seeds of pw_mcc(seed, reference)
    alignment_to_control: float  # the same against an independent reference never used in training
    ref_control_pw_mcc: float  # pw_mcc(reference, control): what two plain SAEs share
    to_control: tuple[float, ...]  # per seed: pw_mcc(seed, control)
    # per seed pw_mcc(seed, control) - pw_mcc(reference, control), mean with a seed t-interval:
    # what the pull bought beyond copying the reference (0: it copied, > 0: the seeds moved
    # toward what an independent SAE also finds)
    independent_gain: Interval
    ev_drop: float | None = None  # ev(lambda = 0 recipe) - ev(this recipe); filled by the caller

    def keyed(self) -> dict[str, float | None]:
        """By MLflow key (consistency/*)."""
        return {
            names.CONSISTENCY_ALIGNMENT: self.alignment_to_ref,
            names.CONSISTENCY_ALIGNMENT_CONTROL: self.alignment_to_control,
            names.CONSISTENCY_REF_CONTROL: self.ref_control_pw_mcc,
            names.CONSISTENCY_INDEPENDENT_GAIN: self.independent_gain.value,
            names.CONSISTENCY_INDEPENDENT_GAIN_LCB: self.independent_gain.lcb,
            names.CONSISTENCY_INDEPENDENT_GAIN_UCB: self.independent_gain.ucb,
            names.CONSISTENCY_EV_DROP: self.ev_drop,
        }


def consistency_metrics(
    decoders: list[torch.Tensor], reference: torch.Tensor, control: torch.Tensor, d_in: int
) -> ConsistencyMetrics:
    ref, ctl = unit_rows(reference, d_in), unit_rows(control, d_in)
    units = [unit_rows(w, d_in) for w in decoders]
    to_control = tuple(pair_scores(u, ctl)["pw_mcc"] for u in units)
    ref_control = pair_scores(ref, ctl)["pw_mcc"]
    return ConsistencyMetrics(
        alignment_to_ref=float(np.mean([pair_scores(u, ref)["pw_mcc"] for u in units])),
        alignment_to_control=float(np.mean(to_control)),
        ref_control_pw_mcc=ref_control,
        to_control=to_control,
        independent_gain=seed_mean_interval([c - ref_control for c in to_control]),
    )
