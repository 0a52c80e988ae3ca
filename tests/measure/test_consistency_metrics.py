"""What tells "more stable" apart from "copies the reference": the independent gain and the
independent excess, scored against the lambda = 0 recipe's seeds (the controls), on
dictionaries whose relation to a known one is set by construction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from husai.measure.consistency_metrics import consistency_metrics
from husai.measure.stability import (
    NullDecoders,
    StabilityReport,
    gaussian_decoders,
    independent_stability,
    stability_report,
)

D_SAE, D_IN = 48, 12
SEEDS = (0, 1, 2, 3, 4)


def noisy(base: torch.Tensor, scale: float, seed: int) -> torch.Tensor:
    return base + scale * torch.randn(base.shape, generator=torch.Generator().manual_seed(seed))


TRUE = torch.randn(D_SAE, D_IN, generator=torch.Generator().manual_seed(0))
# The reference and the controls: plain SAEs, each the true dictionary plus its own error.
REF = noisy(TRUE, 0.6, 1)
CONTROLS = [(s, noisy(TRUE, 0.6, 100 + s)) for s in SEEDS]


def report(trained: list[torch.Tensor]) -> StabilityReport:
    n = len(trained)
    nulls = {"isotropic": NullDecoders(gaussian_decoders(D_SAE, D_IN, range(300, 300 + n)))}
    random = gaussian_decoders(D_SAE, D_IN, range(100, 100 + n))
    return stability_report(trained, random, trained, nulls, D_IN)


def test_copying_the_reference_gains_nothing_and_inflates_nothing() -> None:
    copies = [(s, noisy(REF, 0.02, 10 + s)) for s in SEEDS]  # seeds that copied the reference
    m = consistency_metrics(copies, REF, CONTROLS, D_IN)
    rep = report([w for _, w in copies])
    assert rep.metrics["pw_mcc"].value > 0.99  # seed vs seed: "perfectly stable"
    assert m.alignment_to_ref > 0.99 and m.n_controls == 5
    g = m.independent_gain
    assert g.lcb is not None and g.ucb is not None and g.lcb < 0.0 and abs(g.value) < 0.01
    # The interval carries the reference's own randomness: not a copy's near-zero width.
    assert g.ucb - g.lcb > 0.01
    # Scored against the controls instead, the copies are worth what the reference is worth.
    ind = independent_stability(rep, m.to_controls)
    assert ind.value == pytest.approx(m.ref_controls_pw_mcc, abs=0.01)
    iso = ind.excess["isotropic"]
    assert iso.value < rep.metrics["pw_mcc"].excess["isotropic"].value - 0.2
    assert iso.n_seeds == 5 and iso.lcb is not None


def test_moving_toward_what_independent_saes_find_is_a_gain() -> None:
    canonical = [(s, noisy(TRUE, 0.1, 20 + s)) for s in SEEDS]  # closer to the truth than REF
    m = consistency_metrics(canonical, REF, CONTROLS, D_IN)
    assert m.alignment_to_controls > m.ref_controls_pw_mcc
    assert m.independent_gain.lcb is not None and m.independent_gain.lcb > 0.05


def test_a_seed_is_never_scored_against_the_control_with_its_own_seed_number() -> None:
    """Seed s of the pulled recipe and seed s of the lambda = 0 recipe share an initialisation
    and data order: their pair is left out of the table (and of every mean over it)."""
    pulled = [(s, noisy(TRUE, 0.3, 40 + s)) for s in SEEDS]
    m = consistency_metrics(pulled, REF, CONTROLS, D_IN)
    assert m.to_controls.shape == (5, 5)
    assert np.isnan(np.diag(m.to_controls)).all() and np.isfinite(m.to_controls[0, 1:]).all()
    assert m.alignment_to_controls == pytest.approx(np.nanmean(m.to_controls))


def test_at_lambda_0_the_independent_excess_is_the_seed_vs_seed_excess() -> None:
    plain = [noisy(TRUE, 0.3, 30 + i) for i in range(4)]
    rep = report(plain)
    ind = independent_stability(rep, None)
    assert ind.value == rep.metrics["pw_mcc"].value and ind.excess == rep.metrics["pw_mcc"].excess


def test_control_scores_must_match_the_seeds_and_need_two_controls() -> None:
    rep = report([noisy(TRUE, 0.3, 40 + i) for i in range(3)])
    with pytest.raises(ValueError, match="2 rows of control scores for 3 seeds"):
        independent_stability(rep, np.zeros((2, 3)))
    with pytest.raises(ValueError, match="at least 2 controls"):
        consistency_metrics([(0, TRUE)], REF, CONTROLS[:1], D_IN)
