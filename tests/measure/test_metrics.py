"""Per-SAE metrics: one definition of FVU/EV, loss recovered missing rather than invented."""

from __future__ import annotations

import pytest
import torch

from husai.config.experiment import SAEConfig
from husai.measure.metrics import fvu, held_out, loss_recovered, recon_metrics, reconstruct
from husai.sae.build import build_sae


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


def test_held_out_rows_encoded_in_chunks_give_the_whole_set_metrics() -> None:
    """Chunks of 7 rows (not dividing 50) give the counts, alive latents and reconstruction of
    one whole pass, and the metrics computed from them."""
    sae = build_sae(SAEConfig(architecture="topk", d_sae=32, k=4), 16, 0)
    x = torch.randn(50, 16, generator=torch.Generator().manual_seed(2))
    latents, x_hat = reconstruct(sae, x)
    h = held_out(sae, x, chunk=7)
    assert torch.allclose(h.x_hat, x_hat, atol=1e-6)
    assert torch.equal(h.active_per_row, (latents != 0).sum(dim=1))
    assert torch.equal(h.alive, (latents != 0).any(dim=0))
    m = recon_metrics(sae, x, recon=h)
    assert m.fvu == pytest.approx(fvu(x, x_hat), rel=1e-9) and m.l0 == 4.0
    assert m.mse == pytest.approx(float(((x.double() - x_hat.double()) ** 2).mean()), rel=1e-9)
    assert m.dead_frac == pytest.approx(float((~h.alive).float().mean()))
