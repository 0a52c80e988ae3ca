"""Per-SAE metrics: one definition of FVU/EV, loss recovered missing rather than invented."""

from __future__ import annotations

import pytest
import torch

from husai.measure.metrics import fvu, loss_recovered


def test_fvu_definition() -> None:
    x = torch.randn(200, 8, generator=torch.Generator().manual_seed(0)) * torch.arange(1, 9)
    assert fvu(x, x) == 0.0
    # Predicting the per-dimension mean explains nothing: FVU exactly 1.
    assert fvu(x, x.mean(0, keepdim=True).expand_as(x)) == pytest.approx(1.0)
    # The mean is per dimension, not a global scalar.
    noisy = x + 0.1 * torch.randn(200, 8, generator=torch.Generator().manual_seed(1))
    expected = ((x - noisy) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert fvu(x, noisy) == pytest.approx(expected.item(), rel=1e-6)


def test_loss_recovered() -> None:
    assert loss_recovered(ce_clean=1.0, ce_sae=1.0, ce_ablate=3.0) == 1.0
    assert loss_recovered(ce_clean=1.0, ce_sae=2.0, ce_ablate=3.0) == 0.5
    assert loss_recovered(ce_clean=1.0, ce_sae=3.0, ce_ablate=3.0) == 0.0
    # Ablation that costs nothing: undefined, so missing, never 0 or infinity.
    assert loss_recovered(ce_clean=2.0, ce_sae=2.5, ce_ablate=2.0) is None
    assert loss_recovered(ce_clean=float("nan"), ce_sae=2.5, ce_ablate=3.0) is None
