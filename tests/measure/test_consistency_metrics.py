"""What tells "more stable" apart from "copies the reference": independent gain and the
independent excess, on dictionaries whose relation to a known one is set by construction."""

from __future__ import annotations

import pytest
import torch

from husai.measure.consistency_metrics import consistency_metrics
from husai.measure.stability import gaussian_decoders, independent_stability, stability_report

D_SAE, D_IN = 48, 12


def noisy(base: torch.Tensor, scale: float, seed: int) -> torch.Tensor:
    return base + scale * torch.randn(base.shape, generator=torch.Generator().manual_seed(seed))


TRUE = torch.randn(D_SAE, D_IN, generator=torch.Generator().manual_seed(0))
# Reference and control: two plain SAEs, each the true dictionary plus its own error.
REF, CONTROL = noisy(TRUE, 0.6, 1), noisy(TRUE, 0.6, 2)


def report(trained: list[torch.Tensor]):  # noqa: ANN201 - a StabilityReport
    n = len(trained)
    nulls = {"isotropic": gaussian_decoders(n, D_SAE, D_IN, 300)}
    return stability_report(trained, gaussian_decoders(n, D_SAE, D_IN, 100), trained, nulls, D_IN)


def test_copying_the_reference_gains_nothing_and_inflates_nothing() -> None:
    copies = [noisy(REF, 0.02, 10 + i) for i in range(5)]  # seeds that copied the reference
    m = consistency_metrics(copies, REF, CONTROL, D_IN)
    rep = report(copies)
    assert rep.metrics["pw_mcc"].value > 0.99  # seed vs seed: "perfectly stable"
    assert m.alignment_to_ref > 0.99
    g = m.independent_gain
    assert g.lcb is not None and g.ucb is not None and g.lcb < 0.01 and abs(g.value) < 0.01
    # Scored against the control instead, the copies are worth what the reference is worth.
    ind = independent_stability(rep, m.to_control)
    assert ind.value == pytest.approx(m.ref_control_pw_mcc, abs=0.01)
    assert ind.excess is not None
    assert ind.excess.value < rep.metrics["pw_mcc"].excess.value - 0.2


def test_moving_toward_what_an_independent_sae_finds_is_a_gain() -> None:
    canonical = [noisy(TRUE, 0.1, 20 + i) for i in range(5)]  # closer to the truth than REF
    m = consistency_metrics(canonical, REF, CONTROL, D_IN)
    assert m.alignment_to_control > m.ref_control_pw_mcc
    assert m.independent_gain.lcb is not None and m.independent_gain.lcb > 0.05


def test_at_lambda_0_the_independent_excess_is_the_seed_vs_seed_excess() -> None:
    plain = [noisy(TRUE, 0.3, 30 + i) for i in range(4)]
    rep = report(plain)
    ind = independent_stability(rep, None)
    assert ind.value == rep.metrics["pw_mcc"].value and ind.excess == rep.metrics["pw_mcc"].excess


def test_control_scores_must_match_the_seeds() -> None:
    rep = report([noisy(TRUE, 0.3, 40 + i) for i in range(3)])
    with pytest.raises(ValueError, match="2 control scores for 3 seeds"):
        independent_stability(rep, [0.5, 0.5])
